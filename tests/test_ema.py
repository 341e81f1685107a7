"""EMA weights: the runner's step keeps the average of the weight trajectory."""
import jax
import numpy as np
import pytest

from jaxtrain import ema, runner
from jaxtrain.program import compile_program
from jaxtrain.config import base_config
from jaxtrain.data import pipeline
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding

STEPS = 6


def _timm_v3_decay(t, decay, power, gamma=1.0):
  """timm ModelEmaV3.get_decay(step=t) with use_warmup (update_after_step=0)."""
  s = max(0, t - 1)
  if s <= 0:
    return 0.0
  return min(1 - (1 + s / gamma) ** -power, decay)


@pytest.mark.parametrize("t", [1, 2, 10, 31623, 10**6])
def test_warmup_decay_is_timm_model_ema_v3(t):
  c = ema.EmaConfig(decay=0.9999, warmup_power=2 / 3)
  np.testing.assert_allclose(float(ema.decay_at(t, c)),
                             _timm_v3_decay(t, 0.9999, 2 / 3), rtol=1e-6, atol=1e-7)


def _trajectory(decay, warmup_power):
  """Runs the runner's jitted step STEPS times; returns (weights after each, state)."""
  c = base_config()
  c.model.name = "cnn"
  c.model.update(features=(4,), hidden=8, use_bn=True, dropout_rate=0.0)
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.train.batch_size = 16
  c.train.ema_decay = decay
  c.train.ema_warmup_power = warmup_power
  exp = runner.build(c, jax.devices()[:1])
  program = compile_program(exp)
  state = program.state
  batches = pipeline.train_iterator(exp.train_source, 16, c.seed)
  weights = [jax.device_get((state.params, state.model_state))]
  with sharding.activate(exp.mesh, c.sharding.rules):
    train_fn, sums = program.train_fn, program.init_sums()
    for _ in range(STEPS):
      batch = pipeline.to_global(next(batches), mesh_lib.batch_sharding(exp.mesh))
      state, sums = train_fn(state, sums, batch)
      weights.append(jax.device_get((state.params, state.model_state)))
  return weights, jax.device_get(state)


@pytest.mark.parametrize("decay, warmup_power", [(0.7, 0.0), (0.99, 1.0)])
def test_ema_of_params_and_batch_stats_matches_numpy(decay, warmup_power):
  weights, state = _trajectory(decay, warmup_power)
  flat = [[np.asarray(x, np.float64) for x in jax.tree.leaves(w)] for w in weights]
  average = flat[0]  # timm ModelEmaV2: the average starts at the initial weights
  for t in range(1, STEPS + 1):
    d = decay if not warmup_power else _timm_v3_decay(t, decay, warmup_power)
    average = [d * a + (1 - d) * w for a, w in zip(average, flat[t])]
  got = jax.tree.leaves((state.ema["params"], state.ema["model_state"]))
  assert len(got) == len(average) and any("batch_stats" in str(p) for p in
                                          jax.tree_util.tree_flatten_with_path(
                                              state.ema["model_state"])[0])
  for g, a in zip(got, average):
    np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-6)
  if warmup_power == 1.0:
    # gamma = 1, power = 1 is the running mean of the updated weights.
    mean = [np.mean([w[i] for w in flat[1:]], axis=0) for i in range(len(got))]
    for g, m in zip(got, mean):
      np.testing.assert_allclose(g, m, rtol=1e-5, atol=1e-6)


def test_two_parameter_averages_are_a_config_error():
  c = base_config()
  c.train.ema_decay = 0.99
  c.optimizer.ema_decay = 0.99
  with pytest.raises(ConfigError) as e:
    runner.build(c, jax.devices()[:1])
  assert e.value.field == "train.ema_decay"
