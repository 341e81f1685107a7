"""Early stopping on an eval metric, the best checkpoint, and EMA evaluation."""
import json
import os

import jax
import numpy as np
import pytest

from jaxtrain import runner
from jaxtrain.config import base_config
from jaxtrain.early_stopping import Tracker
from jaxtrain.errors import ConfigError

EVERY, PATIENCE = 5, 2


def test_tracker_follows_keras_min_delta_and_patience():
  t = Tracker("eval/loss", mode="min", patience=2, min_delta=0.1)
  # 1.0 best; 0.95 is not 0.1 better; 0.85 is; then two evals without improvement.
  decisions = [t.update(s, v) for s, v in
               [(1, 1.0), (2, 0.95), (3, 0.85), (4, 0.8), (5, float("nan"))]]
  assert decisions == [True, False, True, False, False]
  assert (t.best, t.best_step, t.wait, t.should_stop) == (0.85, 3, 2, True)
  never = Tracker("eval/accuracy", mode="max", patience=0)
  for s, v in enumerate([0.5, 0.4, 0.3, 0.2]):
    never.update(s, v)
  assert never.best_step == 0 and not never.should_stop


def _config():
  """An LR that grows 10% a step (a range test): eval loss falls, then climbs."""
  c = base_config()
  c.model.name = "mlp"
  c.model.hidden_sizes = (64,)
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.02
  c.optimizer.schedule.name = "exponential"
  c.optimizer.schedule.decay_steps = 1
  c.optimizer.schedule.decay_rate = 1.1
  c.train.batch_size = 32
  c.train.num_steps = 80
  c.train.log_every = EVERY
  c.train.eval_every = EVERY
  c.train.ema_decay = 0.9
  c.train.early_stopping.metric = "eval/loss"
  c.train.early_stopping.mode = "min"
  c.train.early_stopping.patience = PATIENCE
  c.checkpoint.every = EVERY
  c.checkpoint.keep = 2
  return c


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_run_stops_after_patience_evals_and_ends_with_the_best_state(tmp_path):
  devices = jax.devices()[:2]
  result = runner.train(_config(), str(tmp_path / "run"), devices=devices)
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    log = [json.loads(line) for line in f]
  evals = {r["step"]: r["eval/loss"] for r in log if "eval/loss" in r}
  best = min(evals, key=evals.get)
  assert 0 < best < max(evals)  # the metric peaked inside the run
  # Stopped `patience` evaluations after the best, long before num_steps.
  assert log[-1]["step"] == best + PATIENCE * EVERY < 80
  assert result.metrics["early_stopping/best_step"] == best
  assert result.metrics["eval/loss"] == evals[best]
  assert int(result.state.step) == best
  # EMA weights were evaluated beside the raw ones at every evaluation.
  assert all("eval_ema/loss" in r for r in log if "eval/loss" in r)
  # keep=2 deleted the regular checkpoint of the best step, not the best one.
  kept = sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints")
                if d.isdigit())
  assert best not in kept and os.listdir(tmp_path / "run" / "best") == [str(best)]
  # The state the run ended with is the one a run stopped at the best step has.
  at_best = runner.train(_config(), str(tmp_path / "ref"), devices=devices,
                         stop_at=best)
  for x, y in zip(_leaves(result.state), _leaves(at_best.state)):
    np.testing.assert_array_equal(x, y)
  # Re-run: already stopped; trains no more and reports the same best.
  again = runner.train(_config(), str(tmp_path / "run"), devices=devices)
  assert again.metrics["early_stopping/best_step"] == best
  for x, y in zip(_leaves(result.state), _leaves(again.state)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("field, value, fragment", [
    ("metric", "eval/f1", "not a metric the evaluation reports"),
    ("metric", "train/loss", "name an eval metric"),
    ("mode", "lowest", "not a known choice"),
])
def test_bad_early_stopping_fields_are_config_errors(field, value, fragment):
  c = _config()
  c.train.early_stopping[field] = value
  with pytest.raises(ConfigError, match=fragment) as e:
    runner.build(c, jax.devices()[:1])
  assert e.value.field == f"train.early_stopping.{field}"


def test_patience_without_periodic_evals_is_a_config_error():
  c = _config()
  c.train.eval_every = 0
  with pytest.raises(ConfigError) as e:
    runner.build(c, jax.devices()[:1])
  assert e.value.field == "train.early_stopping.patience"
