"""Resuming with a changed config: refused, or allowed and said, never silent.

A run is really stopped (`stop_at`, which checkpoints and returns as a preempted run
does) and re-run from a copy of its workdir with changed settings.
"""
import hashlib
import math
import os
import shutil

import pytest

from jaxtrain import cli, runner
from jaxtrain import resume_config
from jaxtrain.config import base_config
from jaxtrain.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "digits_cnn.py")
PEAK, WARMUP, STEPS, STOP = 0.05, 2, 16, 8
BASE = ["model.name=mlp", "model.hidden_sizes=(32,)", f"train.num_steps={STEPS}",
        "train.num_epochs=0", "train.batch_size=32", "train.log_every=4",
        "train.eval_every=0", "checkpoint.every=4",
        f"optimizer.learning_rate={PEAK}", f"optimizer.schedule.warmup_steps={WARMUP}"]


def _digest(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      with open(os.path.join(root, f), "rb") as fh:
        out[os.path.relpath(os.path.join(root, f), directory)] = hashlib.sha256(
            fh.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """The digits experiment (MLP) stopped at step 8 of 16, with a checkpoint."""
  workdir = tmp_path_factory.mktemp("stopped")
  result = runner.train(cli.load_config(DIGITS, BASE), str(workdir), stop_at=STOP)
  assert int(result.state.step) == STOP
  return workdir


@pytest.fixture
def copy(stopped, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(stopped, workdir)
  return workdir


def _train(workdir, *overrides, allow=""):
  return cli.main(["train", f"--config={DIGITS}", f"--workdir={workdir}",
                   *(f"--config.{o}" for o in (*BASE, *overrides)),
                   *([f"--allow_config_change={allow}"] if allow else [])])


def _no_compile(monkeypatch):
  def compiled(*args, **kwargs):
    raise AssertionError("the train state was built: the refusal came too late")
  monkeypatch.setattr(runner, "initial_state", compiled)


def test_changed_hyperparameters_are_refused_listing_each_field(copy, capsys,
                                                               monkeypatch):
  before = _digest(copy / "checkpoints")
  _no_compile(monkeypatch)
  code = _train(copy, "optimizer.learning_rate=0.5", "train.batch_size=16")
  err = capsys.readouterr().err
  assert code == 2, err
  assert len(err.strip().splitlines()) == 1, err
  assert f"the checkpoint at step {STOP} in {copy}/checkpoints" in err
  assert "optimizer.learning_rate 0.05 -> 0.5" in err
  assert "train.batch_size 32 -> 16" in err
  for way_out in ("new --workdir", "--config.checkpoint.restore=never",
                  "--allow_config_change=optimizer.learning_rate,train.batch_size"):
    assert way_out in err, err
  assert "Traceback" not in err
  assert _digest(copy / "checkpoints") == before


@pytest.mark.parametrize("override,field", [
    ("seed=3", "seed"), ("model.hidden_sizes=(64,)", "model.hidden_sizes"),
    ("optimizer.schedule.name=constant", "optimizer.schedule.name"),
    ("data.train_transforms=flip", "data.train_transforms"),
    ("loss.label_smoothing=0.1", "loss.label_smoothing"),
    ("precision.compute_dtype=bfloat16", "precision.compute_dtype"),
])
def test_each_result_changing_section_is_compared(override, field, copy, capsys):
  assert _train(copy, override) == 2
  err = capsys.readouterr().err
  assert f"{field} " in err and "->" in err, err


def test_changes_that_leave_the_result_alone_resume_bit_for_bit(copy, tmp_path,
                                                               capsys):
  straight = runner.train(cli.load_config(DIGITS, BASE), str(tmp_path / "straight"))
  free = ["train.log_every=2", "checkpoint.every=3", "data.prefetch=1",
          "train.steps_per_dispatch=2"]
  assert _train(copy, *free) == 0
  out = capsys.readouterr().out
  assert "Config changes that leave the result alone: " in out
  assert "train.log_every 4 -> 2" in out and "checkpoint.every 4 -> 3" in out
  resumed = runner.train(cli.load_config(DIGITS, [*BASE, *free]), str(copy))
  assert int(resumed.state.step) == STEPS
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for x, y in zip(jax.tree.leaves(jax.device_get(straight.state.params)),
                  jax.tree.leaves(jax.device_get(resumed.state.params))):
    np.testing.assert_array_equal(x, y)


def _warmup_cosine(step, total):
  """optax's warmup + cosine decay to 0 (Loshchilov & Hutter 2016), by hand."""
  if step < WARMUP:
    return PEAK * step / WARMUP
  t = min(step - WARMUP, total - WARMUP) / (total - WARMUP)
  return PEAK * 0.5 * (1 + math.cos(math.pi * t))


def test_training_longer_needs_allowing_and_says_how_the_lr_jumps(copy, capsys):
  assert _train(copy, "train.num_steps=32") == 2
  err = capsys.readouterr().err
  assert f"train.num_steps {STEPS} -> 32" in err
  assert "--allow_config_change=train.num_steps" in err
  assert _train(copy, "train.num_steps=32", allow="train.num_steps") == 0
  out = capsys.readouterr().out
  old, new = _warmup_cosine(STOP, STEPS), _warmup_cosine(STOP, 32)
  assert (f"at step {STOP} the learning rate jumps from {old:.4g} to {new:.4g}"
          in out), out
  assert "Continuing with config changes allowed by --allow_config_change: " \
         f"train.num_steps {STEPS} -> 32" in out


def test_a_changed_optimizer_is_named_as_the_cause(copy, capsys):
  assert _train(copy, "optimizer.name=adam") == 2
  err = capsys.readouterr().err
  assert "optimizer.name 'momentum' -> 'adam'" in err
  # Allowed, the state still cannot carry over: the message says why.
  assert _train(copy, "optimizer.name=adam", allow="optimizer.name") == 2
  err = capsys.readouterr().err
  assert "holds the state of another optimizer" in err, err
  assert "a different model" not in err
  assert "changed since then: optimizer.name 'momentum' -> 'adam'" in err


def test_an_unknown_field_to_allow_is_refused(copy, capsys, monkeypatch):
  _no_compile(monkeypatch)
  assert _train(copy, allow="train.num_stepz") == 2
  err = capsys.readouterr().err
  assert "--allow_config_change='train.num_stepz'" in err


def test_restore_never_starts_over_with_the_new_config(copy):
  result = runner.train(cli.load_config(DIGITS, [*BASE, "optimizer.learning_rate=0.5",
                                                 "checkpoint.restore=never"]),
                        str(copy), stop_at=2)
  assert int(result.state.step) == 2


def test_a_config_saved_before_a_field_existed_compares_equal():
  saved = base_config().to_dict()
  del saved["train"]["ema_decay"]  # an older jaxtrain had no such field
  saved["train"]["stages"] = []    # JSON has lists where the config has tuples
  saved["model"]["hidden"] = 128   # the cnn's default, set explicitly
  assert resume_config.changes(saved, base_config()) == []
  saved["train"]["batch_size"] = 64
  assert resume_config.changes(saved, base_config()) == [
      ("train.batch_size", 64, 128)]


def test_library_callers_get_the_same_refusal(copy):
  with pytest.raises(ConfigError) as e:
    runner.train(cli.load_config(DIGITS, [*BASE, "seed=1"]), str(copy))
  assert "seed 0 -> 1" in str(e.value)
