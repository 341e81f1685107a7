"""Signals sent for real to `jaxtrain` processes: the first is answered at once (even
mid-compile) and the run stops after the step with a checkpoint, exiting with 128 +
the signal number; a second Ctrl-C stops at once without saving; commands with
nothing to save stop at the first signal; only process 0 speaks. (SIGTERM and
SIGKILL at random moments, with bit-identical resumes: tests/test_fault_tolerance.py.)
"""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import processes

ROOT = os.path.join(os.path.dirname(__file__), "..")
DIGITS = os.path.join(ROOT, "experiments", "digits_cnn.py")
STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
LONG = ["--config.train.num_steps=5000", "--config.train.num_epochs=0",
        "--config.train.log_every=25", "--config.train.batch_size=32",
        "--config.checkpoint.every=1000"]


class Process:
  """A jaxtrain process whose output lines (stdout and stderr, in order) are read
  as they come."""

  def __init__(self, args, devices=1, env=None):
    self.proc = subprocess.Popen(
        processes.jaxtrain_cmd(*args), env={**processes.cpu_env(devices), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    self.lines: list[str] = []
    self._new = threading.Condition()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      with self._new:
        self.lines.append(line.rstrip("\n"))
        self._new.notify_all()
    with self._new:
      self.lines.append(None)  # end of output
      self._new.notify_all()

  def wait_for(self, pattern: str, timeout: float = 300) -> int:
    """Index of the first line matching `pattern` (regex), waiting for it."""
    deadline = time.monotonic() + timeout
    with self._new:
      while True:
        for i, line in enumerate(self.lines):
          if line is None:
            raise AssertionError(f"ended without {pattern!r}:\n" + self.text())
          if re.search(pattern, line):
            return i
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {timeout} s:\n" + self.text()
        self._new.wait(left)

  def finish(self, timeout: float = 120) -> int:
    code = self.proc.wait(timeout=timeout)
    with self._new:  # all its output read
      while not self.lines or self.lines[-1] is not None:
        self._new.wait(10)
    return code

  def text(self) -> str:
    return "\n".join(line for line in self.lines if line is not None)

  def kill(self, sig):
    self.proc.send_signal(sig)


def _steps(workdir) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(
      path) else []


@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C"),
                                           (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_in_training_is_answered_then_the_step_is_saved(tmp_path, sig, code,
                                                               name):
  p = Process(["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
               "--config.model.name=mlp", *LONG])
  p.wait_for(r"^step 50/5000 ")
  p.kill(sig)
  assert p.finish() == code, p.text()
  ack = p.lines[p.wait_for(rf"^jaxtrain: {name}: ")]
  step = int(re.search(r"finishing step (\d+) and saving a checkpoint; Ctrl-C again "
                       "to stop without saving$", ack).group(1))
  assert f"Stopped by {signal.Signals(sig).name} after step {step}; checkpoint " \
         "complete." in p.text()
  assert _steps(tmp_path) == [step]  # checkpoint.every=1000: only the stop's
  assert "Finished:" not in p.text()


def test_ctrl_c_mid_compile_is_answered_at_once_and_a_second_stops_unsaved(tmp_path):
  # The CNN on 8 devices takes a few seconds to compile: both Ctrl-Cs land in it.
  p = Process(["train", f"--config={DIGITS}", f"--workdir={tmp_path}", *LONG],
              devices=8)
  p.wait_for(r"^Compiling the train step\.\.\.$")
  p.kill(signal.SIGINT)
  first = p.wait_for(r"^jaxtrain: Ctrl-C: finishing step 1 and saving")
  p.kill(signal.SIGINT)
  assert p.finish() == 130, p.text()
  again = p.wait_for(r"^jaxtrain: Ctrl-C again: stopping now, without saving")
  assert first < again
  assert not any(line.startswith("Compiled in") for line in p.lines[:first])
  assert "Stopped by" not in p.text()
  assert _steps(tmp_path) == []  # nothing saved
  assert "Traceback" not in p.text()


def test_commands_with_nothing_to_save_stop_at_the_first_signal(tmp_path):
  p = Process(["compile", f"--config={DIGITS}", "--topology=cpu:8"], devices=1)
  time.sleep(1.0)  # any moment after start-up: the handlers come first
  p.kill(signal.SIGINT)
  code = p.finish()
  if code == 0:
    pytest.skip("compiled before the signal came")  # a very fast machine
  assert code == 130, p.text()
  assert p.lines[-2] == "jaxtrain: stopped by Ctrl-C"
  assert "Traceback" not in p.text()


def test_sweep_stopped_by_sigterm_keeps_finished_trials_and_exits_143(tmp_path):
  p = Process(["sweep", f"--config={STUDY}", f"--workdir={tmp_path}",
               "--config.study.batch_sizes=(16, 32)",
               "--config.study.optimizers=('sgd',)", "--config.study.lr_grid=(0.5, 1.0)",
               "--config.study.warmup_epochs=(0.0,)", "--config.study.max_steps=400",
               "--config.study.stop_at_target=False", "--config.study.vectorize=False"],
              devices=1)
  p.wait_for(r"^\[2/\d+\] ")  # the first group's trial is done
  p.kill(signal.SIGTERM)
  assert p.finish() == 143, p.text()
  assert p.wait_for(r"^jaxtrain: SIGTERM: stopping after the current step; the "
                    "finished trials are kept in ") >= 0
  assert "Stopped by a signal; finished trials are saved." in p.text()
  assert f"`jaxtrain report {tmp_path}` reports the finished trials." in p.text()
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert len(results["trials"]) >= 1
  assert not (tmp_path / "report.md").exists()


def test_ctrl_c_on_two_processes_stops_both_at_one_step_and_process_0_speaks(tmp_path):
  port = processes.free_port()
  procs = [Process(["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
                    "--config.model.name=mlp", *LONG,
                    *processes.multihost_flags(port, 2, i)], devices=1)
           for i in range(2)]
  procs[0].wait_for(r"^step 50/5000 ")  # process 1 prints no progress lines
  for p in procs:
    p.kill(signal.SIGINT)
  codes = [p.finish() for p in procs]
  assert codes == [130, 130], [p.text()[-3000:] for p in procs]
  assert any(line.startswith("jaxtrain: Ctrl-C: finishing the current step")
             for line in procs[0].lines if line)
  assert not any(line.startswith("jaxtrain: Ctrl-C") for line in procs[1].lines if line)
  step = int(re.search(r"Stopped by \w+ after step (\d+)", procs[0].text()).group(1))
  assert _steps(tmp_path) == [step]


def test_library_watcher_answers_then_raises_keyboard_interrupt_and_closes(capsys):
  # A library caller's watcher (runner.train outside the CLI): answered from the
  # handler; a second Ctrl-C raises KeyboardInterrupt; close() restores handlers.
  from jaxtrain import preemption  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGINT)
  watcher = preemption.PreemptionWatcher()
  try:
    watcher.describe_stop = lambda: "finishing step 7 and saving a checkpoint"
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.should_stop(7) and watcher.reason == "SIGINT"
    assert capsys.readouterr().err == (
        "jaxtrain: Ctrl-C: finishing step 7 and saving a checkpoint; Ctrl-C again "
        "to stop without saving\n")
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs at the next bytecode
  finally:
    watcher.close()
  assert signal.getsignal(signal.SIGINT) is before
  assert preemption.exit_code(signal.SIGTERM) == 143
  assert preemption.exit_code(signal.SIGINT) == 130
