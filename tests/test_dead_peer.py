"""A process of a 2-process run killed (SIGKILL) while a checkpoint is being written:
the survivor names it in one line, exits 1 at once (not after JAX's 100 s heartbeat
timeout, and without its C++ stack trace) and the last complete checkpoint stays.

When the killed process is process 0, the coordination service dies with it and
JAX's client in the survivor sees its connection close at the same moment as
jaxtrain's watcher: it may log its own error lines (or, rarely, abort the process)
before jaxtrain's line ends it, and its C++ threads (the preemption-notice poller)
may still log after that line, up to the exit. That case is held to: a non-zero
exit, jaxtrain's line the last jaxtrain says when it got there first, and the
checkpoint kept."""
import os
import subprocess
import sys

import pytest

import processes

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
FAULTY = os.path.join(os.path.dirname(__file__), "faulty_jaxtrain.py")
OVERRIDES = ["train.num_steps=24", "train.num_epochs=0", "train.batch_size=32",
             "train.log_every=3", "train.eval_every=0", "checkpoint.every=6",
             "model.name=mlp", "optimizer.schedule.warmup_steps=2"]
# Well under JAX's heartbeat timeout (100 s), after which it would end the survivor.
PROMPT_S = 90


@pytest.mark.parametrize("killed", [1, 0])
def test_a_peer_killed_mid_save_is_named_and_the_last_checkpoint_kept(tmp_path,
                                                                      killed):
  port = processes.free_port()
  procs = [subprocess.Popen(
      [sys.executable, FAULTY, "--at_step=12", f"--fault=sigkill:{killed}", "--",
       "train", f"--config={EXPERIMENT}", f"--workdir={tmp_path}",
       *(f"--config.{o}" for o in OVERRIDES), *processes.multihost_flags(port, 2, i)],
      env=processes.cpu_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=PROMPT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  survivor = 1 - killed
  assert procs[killed].returncode == -9
  out, err = outs[survivor]
  who = "process 0 (the coordinator)" if killed == 0 else "process 1"
  line = (f"jaxtrain: training stopped: {who} of 2 stopped (its connection closed "
          "without finishing the run: it exited or was killed); the checkpoint at "
          f"step 6 in {tmp_path}/checkpoints is intact. Restart every process with "
          "the same command to resume.")
  lines = [l for l in err.splitlines() if not l.startswith("[Gloo]")]
  assert "Traceback" not in err
  if killed == 1:
    assert procs[survivor].returncode == 1, out + err
    assert lines == [line], err
    assert "Check failure stack trace" not in err
  else:
    assert procs[survivor].returncode != 0, out + err
    if procs[survivor].returncode == 1:
      ours = [l for l in lines if l.startswith("jaxtrain:")]
      assert ours[-1] == line, err
  # Step 12 was cut short: never committed, nothing else removed.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12.orbax-checkpoint-tmp",
                                                          "6"]
