"""Storage faults seen from the command line: read-only checkpoints, a full disk,
no readable checkpoint at all.

Each fault is injected the way it happens (a read-only bind mount, a tmpfs that
fills up, damaged files) into real `jaxtrain train` processes, and the test asserts
what the user sees (one clear line, no traceback, an exit within seconds rather
than the 300 s Orbax waits) and that nothing was lost or deleted.
"""
import json
import os
import subprocess
import sys

import pytest

import processes

from jaxtrain import cli, runner
from jaxtrain.metrics import TIMING_KEYS

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
FAULTY = os.path.join(os.path.dirname(__file__), "faulty_jaxtrain.py")
OVERRIDES = ["train.num_steps=30", "train.num_epochs=0", "train.batch_size=32",
             "train.log_every=5", "train.eval_every=0", "checkpoint.every=10",
             "model.name=mlp", "optimizer.schedule.warmup_steps=2"]
# A failed run must end well within this (Orbax's own wait is 300 s).
PROMPT_S = 150


def _args(workdir):
  return ["train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
          *(f"--config.{o}" for o in OVERRIDES)]


def _config():
  return cli.load_config(EXPERIMENT, OVERRIDES)


def _run(cmd):
  return subprocess.run(cmd, env=processes.cpu_env(8), capture_output=True, text=True,
                        timeout=PROMPT_S)


def _steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _read_only(directory):
  made = subprocess.run(["mount", "--bind", str(directory), str(directory)],
                        capture_output=True, text=True)
  if made.returncode:
    pytest.skip(f"cannot bind-mount here: {made.stderr.strip()}")
  subprocess.run(["mount", "-o", "remount,ro,bind", str(directory), str(directory)],
                 check=True)


def _unmount(directory):
  subprocess.run(["umount", str(directory)], capture_output=True, check=False)


@pytest.fixture
def mounts():
  """Directories the test (or the faulty process) mounts; unmounted after."""
  made = []
  yield made
  for d in made:
    _unmount(d)


def _no_traceback(proc):
  out = proc.stdout + proc.stderr
  assert "Traceback" not in out and "ERROR:" not in out, out[-3000:]


def test_checkpoints_turning_read_only_stop_the_run_with_one_line(tmp_path, mounts):
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  mounts.append(workdir / "checkpoints")
  proc = _run([sys.executable, FAULTY, "--at_step=20",
               f"--fault=read_only:{workdir / 'checkpoints'}", "--",
               *_args(workdir)])
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
  assert proc.stderr.startswith("jaxtrain: training stopped: could not write the "
                                "checkpoint of step 20 in ")
  assert "Read-only file system" in proc.stderr
  assert "the checkpoint at step 10 is intact" in proc.stderr
  _no_traceback(proc)
  _unmount(workdir / "checkpoints")
  assert _steps(workdir) == ["10"]


def _truncate_largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def test_read_only_checkpoints_with_an_unreadable_newest_step_use_the_one_before(
    tmp_path, mounts):
  workdir = tmp_path / "run"
  runner.train(_config(), str(workdir), stop_at=20)
  _truncate_largest_file(workdir / "checkpoints" / "20")
  _read_only(workdir / "checkpoints")
  mounts.append(workdir / "checkpoints")
  proc = _run(processes.jaxtrain_cmd(*_args(workdir)))
  out = proc.stdout
  assert "Checkpoint at step 20 is incomplete or corrupt" in out, out + proc.stderr
  assert "it cannot be moved aside (OSError: Read-only file system)" in out
  assert "Resumed from the checkpoint at step 10" in out
  # It trains on from step 10 and stops at the save of step 20, naming why.
  assert "step 15/30" in out
  assert proc.returncode == 1
  assert proc.stderr.startswith("jaxtrain: training stopped: could not write the "
                                "checkpoint of step 20")
  assert "is still there" in proc.stderr
  _no_traceback(proc)
  _unmount(workdir / "checkpoints")
  assert _steps(workdir) == ["10", "20"]  # nothing moved, nothing deleted


@pytest.fixture
def small_disk(tmp_path, mounts):
  """A 4 MiB tmpfs: a real filesystem that really fills up (needs root)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if made.returncode:
    pytest.skip(f"cannot mount a test filesystem here: {made.stderr.strip()}")
  mounts.append(mount)
  return mount


def test_full_disk_shows_one_line_and_no_library_traceback(small_disk):
  workdir = small_disk / "run"
  proc = _run([sys.executable, FAULTY, "--at_step=20",
               f"--fault=fill_disk:{small_disk}", "--", *_args(workdir)])
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
  assert proc.stderr.startswith("jaxtrain: training stopped: could not write the "
                                "checkpoint of step 20 in ")
  assert "the checkpoint at step 10 is intact" in proc.stderr
  _no_traceback(proc)
  assert [s for s in _steps(workdir) if s.isdigit()] == ["10"]


def _log_rows(path):
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_no_readable_checkpoint_says_so_and_keeps_the_old_log(tmp_path, capsys):
  straight = tmp_path / "straight"
  runner.train(_config(), str(straight))
  workdir = tmp_path / "run"
  runner.train(_config(), str(workdir), stop_at=20)
  with open(workdir / "metrics.jsonl") as f:
    before = f.read()
  for step in ("10", "20"):
    _truncate_largest_file(workdir / "checkpoints" / step)
  capsys.readouterr()
  runner.train(_config(), str(workdir))
  out = capsys.readouterr().out
  assert (f"No usable checkpoint in {workdir}/checkpoints (steps 20, 10 cannot be "
          "read); starting from scratch") in out
  kept = [f for f in os.listdir(workdir) if f.startswith("metrics.jsonl.")]
  assert len(kept) == 1 and kept[0].endswith(".old")
  assert f"The previous metrics.jsonl is kept as {workdir / kept[0]}" in out
  with open(workdir / kept[0]) as f:
    assert f.read() == before
  assert _log_rows(workdir / "metrics.jsonl") == _log_rows(straight / "metrics.jsonl")
  assert {"10.corrupt", "20.corrupt"} <= set(_steps(workdir))


def test_exit_promptly_ends_a_process_a_stuck_thread_would_keep_alive():
  code = ("import threading\n"
          "threading.Thread(target=threading.Event().wait).start()\n"
          "from jaxtrain import diagnostics\n"
          "raise SystemExit(diagnostics.exit_promptly(3, grace_s=0.5))\n")
  proc = subprocess.run([sys.executable, "-c", code], timeout=60)
  assert proc.returncode == 3
