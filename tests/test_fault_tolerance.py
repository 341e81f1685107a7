"""Kills, preemptions, corrupt checkpoints, non-finite steps and full disks.

The reference for every recovery is an uninterrupted run of the same config: a
recovered run must end with the same bits (parameters, optimizer state) and the same
non-timing `metrics.jsonl`.
"""
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import processes

from jaxtrain import runner
from jaxtrain.config import base_config
from jaxtrain.metrics import TIMING_KEYS

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
# A short run with frequent checkpoints, so kills land in saves as well as steps.
FLAGS = ["--config.train.num_steps=240", "--config.train.num_epochs=0",
         "--config.train.batch_size=32", "--config.train.log_every=5",
         "--config.train.eval_every=40", "--config.checkpoint.every=5",
         "--config.model.name=mlp"]


def _cmd(workdir):
  return processes.jaxtrain_cmd("train", f"--config={EXPERIMENT}",
                                f"--workdir={workdir}", *FLAGS)


def _env():
  return processes.cpu_env(1)


def _final_state(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  restored = ocp.StandardCheckpointer().restore(os.path.join(ckpt, str(step), "state"))
  return step, restored["train"]


def _log(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _assert_same_run(a, b):
  step_a, state_a = _final_state(a)
  step_b, state_b = _final_state(b)
  assert step_a == step_b == 240
  flat_a = _flatten(state_a)
  flat_b = _flatten(state_b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)
  assert _log(a) == _log(b)


def _flatten(tree):
  import jax  # pylint: disable=g-import-not-at-top
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  subprocess.run(_cmd(workdir), env=_env(), check=True, timeout=300,
                 capture_output=True)
  return workdir


def _start(workdir):
  """Starts a run; returns the process, its output lines and a 'training' event."""
  proc = subprocess.Popen(_cmd(workdir), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines, training = [], threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("step "):
        training.set()
    training.set()  # ended

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  return proc, lines, training, reader


def _run_until_done(workdir, kill, rng, kills=10, timeout=900):
  """Interrupts the run `kills` times at seeded random moments, then lets it finish.

  Two in three interruptions come at a random moment after the run has started
  training (in a step or an async save), the rest at a random moment of start-up.
  """
  deadline = time.time() + timeout
  for i in range(kills):
    proc, lines, training, reader = _start(workdir)
    if i % 3 != 2:
      training.wait(timeout=300)
      time.sleep(rng.uniform(0.0, 1.5))
    else:
      time.sleep(rng.uniform(0.5, 3.0))
    in_training = any(line.startswith("step ") for line in lines)
    if proc.poll() is None:
      proc.send_signal(kill)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    yield proc.returncode, "".join(lines), in_training
    assert time.time() < deadline
  done = subprocess.run(_cmd(workdir), env=_env(), timeout=300, capture_output=True,
                        text=True)
  assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_sigkill_at_ten_random_moments_changes_no_bit(reference, tmp_path):
  rng = np.random.default_rng(7)
  in_training = [t for _, _, t in _run_until_done(tmp_path, signal.SIGKILL, rng)]
  assert sum(in_training) >= 5, in_training  # not just kills during start-up
  _assert_same_run(reference, tmp_path)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_changes_no_bit(reference, tmp_path):
  # SIGTERM is a request the run answers the same way wherever it lands (finish
  # the step, save, exit 128 + 15 = 143; 0 only if the run had finished anyway):
  # 6 interruptions, 4 of them in training, cover it.
  rng = np.random.default_rng(11)
  stopped = 0
  for code, out, _ in _run_until_done(tmp_path, signal.SIGTERM, rng, kills=6):
    assert code == (143 if "Stopped by SIGTERM" in out else 0), out
    if "Stopped by SIGTERM" in out:
      stopped += 1
      step = int(out.split("Stopped by SIGTERM after step ")[1].split(";")[0])
      saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")
                     if d.isdigit())
      assert saved[-1] == step  # the checkpoint of the stop is complete
  assert stopped >= 3
  _assert_same_run(reference, tmp_path)


def _small_config(**overrides):
  c = base_config()
  c.model.name = "mlp"
  c.train.batch_size = 32
  c.train.num_steps = 30
  c.train.log_every = 5
  c.train.eval_every = 0
  c.checkpoint.every = 10
  c.checkpoint.keep = 5
  for k, v in overrides.items():
    section, field = k.split("__")
    c[section][field] = v
  return c


def _state_leaves(state):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def _truncate_largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def _garble_metadata(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      if "metadata" in f or f == "manifest.ocdbt":
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"\x00garbage\xff" * 7)


def _remove_state_item(step_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("corrupt", [_remove_state_item, _truncate_largest_file,
                                     _garble_metadata])
def test_corrupt_newest_checkpoint_resumes_from_the_one_before(corrupt, tmp_path,
                                                               capsys):
  straight = runner.train(_small_config(), str(tmp_path / "straight"))
  workdir = tmp_path / "run"
  runner.train(_small_config(), str(workdir), stop_at=20)
  corrupt(workdir / "checkpoints" / "20")
  capsys.readouterr()
  resumed = runner.train(_small_config(), str(workdir))
  out = capsys.readouterr().out
  assert "Checkpoint at step 20 is incomplete or corrupt" in out
  assert "Resumed from the checkpoint at step 10" in out
  assert os.path.isdir(workdir / "checkpoints" / "20.corrupt")  # kept, not deleted
  for x, y in zip(_state_leaves(straight.state), _state_leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MiB tmpfs: a real filesystem that really fills up (needs root)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if made.returncode:
    pytest.skip(f"cannot mount a test filesystem here: {made.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(small_disk, tmp_path,
                                                              monkeypatch):
  from jaxtrain import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  straight = runner.train(_small_config(), str(tmp_path / "straight"))
  workdir = small_disk / "run"
  runner.train(_small_config(), str(workdir), stop_at=10)
  filler = small_disk / "filler"
  original = checkpoint_lib.Checkpointer.save

  def save_on_a_full_disk(self, step, *args, **kwargs):
    if step == 20:  # the disk fills up while the run is going
      free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
      filler.write_bytes(b"\0" * max(free - 4096, 0))
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", save_on_a_full_disk)
  with pytest.raises(checkpoint_lib.CheckpointWriteError,
                     match="step 20.*the checkpoint at step 10 is intact"):
    runner.train(_small_config(), str(workdir))
  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", original)
  filler.unlink()
  resumed = runner.train(_small_config(), str(workdir))
  assert int(resumed.state.step) == 30
  for x, y in zip(_state_leaves(straight.state), _state_leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)


def _with_nan_example(monkeypatch, index):
  """Makes train example `index` NaN (a corrupt record), wherever it is read."""
  _with_nan_examples(monkeypatch, {index})


def _with_nan_examples(monkeypatch, indices):
  """Makes the train examples in `indices` NaN (corrupt records), wherever read."""
  from jaxtrain.data import sources  # pylint: disable=g-import-not-at-top
  original = sources.get_source
  bad = np.asarray(sorted(indices))

  def get_source(data, split):
    source = original(data, split)
    if split != data.train_split:
      return source
    load = source.load_batch

    def load_batch(indices, **kwargs):
      batch = load(indices, **kwargs)
      batch["image"] = np.where(
          np.isin(np.asarray(indices), bad)[:, None, None, None], np.nan,
          batch["image"])
      return batch

    monkeypatch.setattr(source, "load_batch", load_batch)
    return source

  monkeypatch.setattr(sources, "get_source", get_source)


def _examples_read(config, first, last):
  """The train example indices read by steps `first`..`last` (1-based)."""
  from jaxtrain.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  it = pipeline.train_iterator(sources.get_source(config.data, "train"),
                               config.train.batch_size, config.seed)
  read = set()
  for step in range(1, last + 1):
    batch = next(it)
    if step >= first:
      read.update(int(i) for i in batch["index"])
  return read


def _step_reading(index, config):
  """The 1-based step whose batch holds train example `index` (first epoch)."""
  from jaxtrain.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  it = pipeline.train_iterator(sources.get_source(config.data, "train"),
                               config.train.batch_size, config.seed)
  for step in range(1, config.train.num_steps + 1):
    if index in next(it)["index"]:
      return step
  raise AssertionError("not read")


def test_nan_batch_is_skipped_once_and_only_that_update_is_dropped(tmp_path,
                                                                   monkeypatch):
  config = _small_config(train__on_nonfinite="skip")
  bad = _step_reading(5, config)
  _with_nan_example(monkeypatch, 5)
  before = runner.train(config, str(tmp_path), stop_at=bad - 1)
  at = runner.train(config, str(tmp_path), stop_at=bad)
  assert int(at.state.step) == bad
  for x, y in zip(_state_leaves(before.state.params),
                  _state_leaves(at.state.params)):
    np.testing.assert_array_equal(x, y)  # the NaN batch's update was dropped
  for x, y in zip(_state_leaves(before.state.opt_state),
                  _state_leaves(at.state.opt_state)):
    np.testing.assert_array_equal(x, y)
  done = runner.train(config, str(tmp_path))
  assert int(done.state.step) == 30
  assert all(np.isfinite(x).all() for x in _state_leaves(done.state.params))
  with open(tmp_path / "metrics.jsonl") as f:
    skipped = sum(json.loads(line).get("train/skipped", 0) for line in f)
  assert skipped == 1


def test_nan_batch_halts_naming_the_step(tmp_path, monkeypatch):
  config = _small_config(train__on_nonfinite="halt")
  bad = _step_reading(5, config)
  _with_nan_example(monkeypatch, 5)
  with pytest.raises(runner.TrainingHalted, match=f"step {bad} had non-finite"):
    runner.train(config, str(tmp_path))
  saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert all(s < bad for s in saved)  # nothing after the bad step was saved


@pytest.mark.parametrize("steps_per_dispatch", [1, 2])
def test_too_many_skips_in_a_row_halt_at_the_step_reaching_the_limit(
    tmp_path, monkeypatch, steps_per_dispatch):
  # Every batch from step 7 on is non-finite; 3 skips in a row are the limit, so
  # the run halts at step 9, long before the next log (20) or checkpoint (30).
  config = _small_config(train__on_nonfinite="skip", train__max_consecutive_skips=3,
                         train__log_every=20, checkpoint__every=0,
                         train__steps_per_dispatch=steps_per_dispatch)
  _with_nan_examples(monkeypatch, _examples_read(config, 7, 30))
  with pytest.raises(runner.TrainingHalted,
                     match=r"^steps 7 to 9 were skipped .*max_consecutive_skips=3"
                     r".*Halted at step 9"):
    runner.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "30")
  assert not os.path.exists(tmp_path / "metrics.jsonl") or not _log(tmp_path)


def test_fewer_skips_in_a_row_than_the_limit_go_on(tmp_path, monkeypatch):
  config = _small_config(train__on_nonfinite="skip", train__max_consecutive_skips=3)
  _with_nan_examples(monkeypatch, _examples_read(config, 7, 8))
  done = runner.train(config, str(tmp_path))
  assert int(done.state.step) == 30
  assert sum(row.get("train/skipped", 0) for row in _log(tmp_path)) == 2
