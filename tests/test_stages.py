"""Stage schedules on digits: progressive resizing with a growing batch, FixRes eval."""
import json
import logging
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import runner
from jaxtrain.config import base_config
from jaxtrain.errors import ConfigError
from jaxtrain.models.registry import register

PEAK, WARMUP, STEPS, SWITCH = 0.1, 4, 12, 6


@register("test_pooled_cnn")
class PooledCNN(nn.Module):
  """Conv -> global mean pool -> dense: takes any image size (as ResNets do)."""
  num_classes: int
  width: int = 16
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu(nn.Conv(self.width, (3, 3), dtype=self.dtype)(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def _config():
  c = base_config()
  c.model.name = "test_pooled_cnn"
  c.data.train_transforms = "resize(8)"
  # FixRes: evaluated at 10 pixels while trained at 6 then 8.
  c.data.eval_transforms = "center_crop(10, crop_ratio=1.0)"
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = PEAK
  c.optimizer.schedule.name = "warmup_cosine"
  c.optimizer.schedule.warmup_steps = WARMUP
  c.train.batch_size = 32
  c.train.stages = ((0, 6, 32), (SWITCH, 8, 64))
  c.train.num_steps = STEPS
  c.train.log_every = 1
  c.train.eval_every = SWITCH
  c.checkpoint.every = 4
  return c


def _lr(step):
  """Linear warmup to PEAK over WARMUP steps, then half-cosine to 0 (Loshchilov &
  Hutter 2017), at the step before the logged one (the LR the update used)."""
  t = step - 1
  if t < WARMUP:
    return PEAK * t / WARMUP
  return PEAK * 0.5 * (1 + math.cos(math.pi * (t - WARMUP) / (STEPS - WARMUP)))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_two_stage_run_switches_once_and_continues_lr_and_data(
    tmp_path, caplog, capsys):
  devices = jax.devices()[:2]
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      straight = runner.train(_config(), str(tmp_path / "a"), devices=devices)
  finally:
    jax.config.update("jax_log_compiles", False)
  compiles = [r for r in caplog.records
              if "Compiling jit(train_and_sum)" in r.getMessage()]
  assert len(compiles) == 2  # one per stage
  out = capsys.readouterr().out
  assert out.count("Stage 2/2 from step 6: batch 64, image size 8") == 1
  with open(tmp_path / "a" / "metrics.jsonl") as f:
    log = [json.loads(line) for line in f]
  assert [r["step"] for r in log] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r["train/learning_rate"] for r in log],
                             [_lr(r["step"]) for r in log], rtol=1e-5, atol=1e-7)
  assert "eval/accuracy" in log[SWITCH - 1] and "eval/accuracy" in log[-1]
  # Stopped mid-stage 2 and resumed: the same bits as the straight run.
  runner.train(_config(), str(tmp_path / "b"), devices=devices, stop_at=SWITCH + 3)
  resumed = runner.train(_config(), str(tmp_path / "b"), devices=devices)
  for x, y in zip(_leaves(straight.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("field, value, fragment", [
    ("train.stages", ((0, 6, 32), (0, 8, 64)), "from_steps increasing"),
    ("train.stages", ((2, 6, 32),), "from_steps increasing"),
    ("train.stages[1]", ((0, 6, 32), (6, 8, 60)), "multiple of 8"),
])
def test_bad_stages_are_config_errors(field, value, fragment):
  c = _config()
  c.train.stages = value
  with pytest.raises(ConfigError, match=fragment) as e:
    runner.build(c)
  assert e.value.field == field


def test_a_model_that_cannot_take_the_eval_resolution_is_a_config_error():
  c = _config()
  c.model.name = "mlp"  # flattens: built for 8x8 inputs only
  c.train.stages = ()
  with pytest.raises(ConfigError, match="does not accept") as e:
    runner.build(c, jax.devices()[:1])
  assert e.value.field == "data.eval_transforms"
