"""Image-folder and Hugging Face sources across processes and interruptions: 2
processes x 4 devices read disjoint rows that together make each global batch, and
a run killed mid-training and resumed ends bit-identical to an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

import digits_files
import processes
from jaxtrain.data import pipeline, sources
from jaxtrain.metrics import TIMING_KEYS

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
SPLIT, BATCH, SEED, STEPS = "train[:96]", 16, 11, 12  # 2 epochs of 6 global batches

_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, root, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    import pathlib
    import digits_files
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxtrain.data import pipeline, sources
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices())
    results = {"devices": jax.device_count()}
    for name in digits_files.SOURCES:
      c = digits_files.data(name, pathlib.Path(root))
      it = pipeline.train_iterator(sources.get_source(c, %(split)r), %(batch)d,
                                   seed=%(seed)d)
      batches = [next(it) for _ in range(%(steps)d)]
      glob = pipeline.to_global(batches[0], NamedSharding(mesh, P("data")))
      results[name] = {
          "indices": [b["index"].tolist() for b in batches],
          "labels": [b["label"].tolist() for b in batches],
          "sum": int(jax.jit(lambda x: x.sum())(glob["index"]))}
    with open(out, "w") as f:
      json.dump(results, f)
    jax.distributed.shutdown()
""") % dict(split=SPLIT, batch=BATCH, seed=SEED, steps=STEPS)


@pytest.fixture(scope="module")
def two_processes(folders, tmp_path_factory):
  """What each of 2 processes (4 CPU devices each) read from both sources."""
  tmp = tmp_path_factory.mktemp("processes")
  script = tmp / "worker.py"
  script.write_text(_WORKER)
  port, outs = processes.free_port(), [tmp / f"out{i}.json" for i in range(2)]
  env = dict(processes.cpu_env(4),
             PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                         os.environ.get("PYTHONPATH", "")]))
  processes.run_together(
      [[sys.executable, str(script), str(port), str(i), str(folders), str(outs[i])]
       for i in range(2)], env, timeout=300)
  return [json.loads(o.read_text()) for o in outs]


@pytest.mark.parametrize("source", digits_files.SOURCES)
def test_two_processes_read_disjoint_rows_making_each_global_batch(
    two_processes, folders, source):
  assert [r["devices"] for r in two_processes] == [8, 8]
  local = [np.asarray(r[source]["indices"]) for r in two_processes]
  assert local[0].shape == local[1].shape == (STEPS, BATCH // 2)
  for epoch in range(2):
    rows = [x[6 * epoch:6 * epoch + 6].ravel() for x in local]
    assert not set(rows[0]) & set(rows[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(96))
  # The global batches one process reading alone gets (read here), rows and labels.
  alone_it = pipeline.train_iterator(
      sources.get_source(digits_files.data(source, folders), SPLIT), BATCH, SEED)
  alone = [next(alone_it) for _ in range(STEPS)]
  labels = [np.asarray(r[source]["labels"]) for r in two_processes]
  for k in range(STEPS):
    np.testing.assert_array_equal(np.concatenate([local[0][k], local[1][k]]),
                                  alone[k]["index"])
    np.testing.assert_array_equal(np.concatenate([labels[0][k], labels[1][k]]),
                                  alone[k]["label"])
  sums = {r[source]["sum"] for r in two_processes}
  assert sums == {int(alone[0]["index"].sum())}


# ----- killed and resumed --------------------------------------------------------

FLAGS = ["--config.model.name=mlp", "--config.train.num_epochs=0",
         "--config.train.num_steps=200", "--config.train.batch_size=32",
         "--config.train.log_every=5", "--config.train.eval_every=100",
         "--config.checkpoint.every=10",
         "--config.optimizer.schedule.warmup_steps=10",
         "--config.train.eval_batch_size=40"]


def _cmd(workdir, source, folders):
  return processes.jaxtrain_cmd(
      "train", f"--config={EXPERIMENT}", f"--workdir={workdir}", *FLAGS,
      f"--config.data.source={source}",
      f"--config.data.data_dir={digits_files.data_dir(source, folders)}",
      f"--config.data.train_transforms={digits_files.DECODE}",
      f"--config.data.eval_transforms={digits_files.DECODE}")


def _kill_after_a_checkpoint(cmd, workdir):
  """Starts `cmd`; SIGKILLs it at the first step it logs once a checkpoint is
  complete (a finalized WORKDIR/checkpoints/<step>); returns that logged step."""
  proc = subprocess.Popen(cmd, env=processes.cpu_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  ckpt, logged = os.path.join(workdir, "checkpoints"), 0
  for line in proc.stdout:
    if line.startswith("step ") and os.path.isdir(ckpt) and any(
        d.isdigit() for d in os.listdir(ckpt)):
      logged = int(line.split()[1].split("/")[0])
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=120)
  assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
  return logged


def _final(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  state = ocp.StandardCheckpointer().restore(os.path.join(ckpt, str(step), "state"))
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(state["train"])[0]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    log = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
           for line in f]
  return step, {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}, log


@pytest.mark.slow
@pytest.mark.parametrize("source", digits_files.SOURCES)
def test_a_killed_and_resumed_run_ends_bit_identical(folders, tmp_path, source):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_cmd(straight, source, folders), env=processes.cpu_env(1),
                 check=True, timeout=600, capture_output=True)
  assert _kill_after_a_checkpoint(_cmd(killed, source, folders), killed) < 200
  done = subprocess.run(_cmd(killed, source, folders), env=processes.cpu_env(1),
                        timeout=600, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "Resumed from the checkpoint at step" in done.stdout
  step_a, state_a, log_a = _final(straight)
  step_b, state_b, log_b = _final(killed)
  assert step_a == step_b == 200 and state_a.keys() == state_b.keys()
  for k in state_a:
    np.testing.assert_array_equal(state_a[k], state_b[k], err_msg=k)
  assert log_a == log_b and log_a[-1]["step"] == 200
