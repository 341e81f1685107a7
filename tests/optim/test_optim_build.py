"""optim.build: every optimizer and schedule from config, masks by regex, and
ConfigError for bad fields (raised before anything compiles)."""
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain import optim
from jaxtrain.errors import ConfigError


def cfg(**fields):
  schedule = fields.pop("schedule", {"name": "constant"})
  return ml_collections.ConfigDict(dict(fields, schedule=schedule))


def make_params():
  return {"Conv_0": {"kernel": jnp.full((3, 3, 2, 4), 0.5), "bias": jnp.ones(4)},
          "Dense_0": {"kernel": jnp.full((4, 3), -0.5), "bias": jnp.ones(3)}}


def grads_like(params, value=0.1):
  return jax.tree.map(lambda p: jnp.full_like(p, value), params)


def run(config, num_steps=1, total_steps=10, grads=None):
  tx, schedule = optim.build(config, total_steps)
  params = make_params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(num_steps):
    g = grads_like(params) if grads is None else grads
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state, schedule


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_builds_and_takes_a_step(name):
  params, _, _ = run(cfg(name=name, learning_rate=0.1))
  before = make_params()
  kernel = params["Conv_0"]["kernel"]
  assert jnp.isfinite(kernel).all()
  # A positive gradient must move the weight down (descent).
  assert float(kernel.mean()) < float(before["Conv_0"]["kernel"].mean())


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_every_schedule_builds(name):
  schedule_cfg = {"name": name}
  if name == "piecewise":
    schedule_cfg.update(boundaries=(50,), scales=(0.1,))
  if name == "sgdr":
    schedule_cfg["decay_steps"] = 30
  if name not in ("one_cycle", "linear_one_cycle"):
    schedule_cfg["warmup_steps"] = 10
  _, schedule = optim.build(cfg(learning_rate=1.0, schedule=schedule_cfg), 100)
  lrs = np.asarray(jax.jit(jax.vmap(schedule))(jnp.array([0, 10, 50, 99, 150])))
  assert np.isfinite(lrs).all() and lrs[0] <= lrs[1]
  if name != "noisy_linear_cosine":  # TF's default noise variance is 1
    assert lrs.max() <= 1.001 + 1e-6  # linear_cosine peaks at lr * (1 + beta)


def test_warmup_cosine_schedule_values():
  config = cfg(learning_rate=2.0, schedule={"name": "warmup_cosine",
                                            "warmup_steps": 10, "end_value": 0.2})
  _, schedule = optim.build(config, 110)
  want = [2.0 * k / 10 if k < 10 else
          0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * min(k - 10, 100) / 100))
          for k in (0, 5, 10, 60, 110, 200)]
  got = [float(schedule(k)) for k in (0, 5, 10, 60, 110, 200)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_warmup_fraction_and_piecewise_boundaries_in_train_steps():
  config = cfg(learning_rate=1.0, schedule={
      "name": "piecewise", "warmup_fraction": 0.1, "boundaries": (50, 80),
      "scales": (0.1, 0.5)})
  _, schedule = optim.build(config, 100)
  got = [float(schedule(k)) for k in (5, 10, 49, 50, 79, 80)]
  np.testing.assert_allclose(got, [0.5, 1.0, 1.0, 0.1, 0.1, 0.05], rtol=1e-6)


def test_gradual_warmup_starts_at_a_fraction_of_the_peak():
  # Goyal et al. 2017, sec. 2.2: from the small-batch LR eta to k*eta (k = 32 here:
  # 0.1 -> 3.2) linearly over the warmup, then the decay (drop x0.1 at step 30).
  config = cfg(learning_rate=3.2, schedule={
      "name": "piecewise", "warmup_steps": 10, "warmup_init_fraction": 1 / 32,
      "boundaries": (30,), "scales": (0.1,)})
  _, schedule = optim.build(config, 40)
  want = [0.1 + (3.2 - 0.1) * k / 10 for k in (0, 5)] + [3.2, 3.2, 0.32]
  got = [float(schedule(k)) for k in (0, 5, 10, 29, 30)]
  np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 schedule arithmetic


def test_step_schedule_decays_every_decay_steps():
  config = cfg(learning_rate=1.0, schedule={"name": "step", "decay_steps": 30,
                                            "decay_rate": 0.1})
  _, schedule = optim.build(config, 90)
  got = [float(schedule(k)) for k in (0, 29, 30, 61)]
  np.testing.assert_allclose(got, [1.0, 1.0, 0.1, 0.01], rtol=1e-5)


def test_lr_scaling_uses_batch_size():
  config = cfg(learning_rate=0.1, lr_scaling="linear", base_batch_size=256)
  _, schedule = optim.build(config, 10, batch_size=1024)
  assert float(schedule(0)) == pytest.approx(0.4)


@pytest.mark.parametrize("fields,field", [
    ({"name": "adamz"}, "optimizer.name"),
    ({"learning_rate": -0.1}, "optimizer.learning_rate"),
    ({"learning_rate": float("nan")}, "optimizer.learning_rate"),
    ({"learning_rate": "fast"}, "optimizer.learning_rate"),
    ({"momentum": 1.0}, "optimizer.momentum"),
    ({"typo_field": 1}, "optimizer.typo_field"),
    ({"schedule": {"name": "cosnie"}}, "optimizer.schedule.name"),
    ({"schedule": {"name": "cosine", "warmup_steps": 11}},
     "optimizer.schedule.warmup_steps"),
    ({"schedule": {"name": "cosine", "warmup_fraction": 1.5}},
     "optimizer.schedule.warmup_fraction"),
    ({"schedule": {"name": "cosine", "warmup_init_fraction": 2.0}},
     "optimizer.schedule.warmup_init_fraction"),
    ({"schedule": {"name": "piecewise", "boundaries": (5,), "scales": ()}},
     "optimizer.schedule.scales"),
    ({"weight_decay_mask": "Conv_(["}, "optimizer.weight_decay_mask"),
    ({"freeze": ("ok", "bad(")}, "optimizer.freeze[1]"),
    ({"lr_multipliers": (("*bad", 2.0),)}, "optimizer.lr_multipliers[0]"),
    ({"lr_multipliers": (("head", -1.0),)}, "optimizer.lr_multipliers[0]"),
    ({"sign_decay": "quadratic"}, "optimizer.sign_decay"),
    ({"accumulate_steps": 0}, "optimizer.accumulate_steps"),
    ({"grad_clip_norm": -1.0}, "optimizer.grad_clip_norm"),
    ({"lr_scaling": "sqrt"}, "optimizer.lr_scaling"),
])
def test_bad_field_raises_config_error_naming_it(fields, field):
  with pytest.raises(ConfigError) as info:
    optim.build(cfg(**fields), total_steps=10)
  assert info.value.field == field
  assert f"config.{field}" in str(info.value)


def test_unknown_name_lists_the_choices():
  with pytest.raises(ConfigError, match="valid choices: .*addsign.*powersign"):
    optim.build(cfg(name="adamz"), 10)


def test_default_config_builds_with_every_feature_off():
  tx, _ = optim.build(optim.default_config(), 10)
  state = tx.init(make_params())
  assert optim.ema_params(state) is None


def test_weight_decay_default_mask_is_ndim_above_1():
  zero = grads_like(make_params(), 0.0)
  params, _, _ = run(cfg(name="sgd", learning_rate=1.0, weight_decay=0.1),
                     grads=zero)
  np.testing.assert_allclose(params["Conv_0"]["kernel"], 0.5 * 0.9)
  np.testing.assert_allclose(params["Dense_0"]["bias"], 1.0)


def test_weight_decay_regex_mask_selects_paths():
  zero = grads_like(make_params(), 0.0)
  params, _, _ = run(cfg(name="sgd", learning_rate=1.0, weight_decay=0.1,
                         weight_decay_mask="^Dense_0/"), grads=zero)
  np.testing.assert_allclose(params["Conv_0"]["kernel"], 0.5)
  np.testing.assert_allclose(params["Dense_0"]["kernel"], -0.5 * 0.9)
  np.testing.assert_allclose(params["Dense_0"]["bias"], 0.9)


def test_freeze_by_regex_keeps_params_and_their_state_at_zero():
  config = cfg(name="momentum", learning_rate=0.1, weight_decay=0.1,
               freeze=("^Conv_0/",))
  params, state, _ = run(config, num_steps=2)
  np.testing.assert_array_equal(params["Conv_0"]["kernel"], 0.5)
  np.testing.assert_array_equal(params["Conv_0"]["bias"], 1.0)
  assert not np.allclose(params["Dense_0"]["kernel"], -0.5)
  traces = [t for t in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, optax.TraceState))
            if isinstance(t, optax.TraceState)]
  np.testing.assert_array_equal(traces[0].trace["Conv_0"]["kernel"], 0.0)


def test_frozen_params_do_not_count_in_the_clip_norm():
  big = grads_like(make_params(), 10.0)
  params, _, _ = run(cfg(name="sgd", learning_rate=1.0, grad_clip_norm=1.0,
                         freeze=("^Conv_0/",)), grads=big)
  n = 4 * 3 + 3
  np.testing.assert_allclose(params["Dense_0"]["bias"], 1.0 - 1 / math.sqrt(n),
                             rtol=1e-5)


def test_state_maps_onto_params_for_sharding_with_every_feature_on():
  # The runner shards the optimizer state with optax.tree_map_params.
  config = cfg(name="adamw", weight_decay=0.1, l2=0.1, ema_decay=0.9,
               accumulate_steps=2, freeze=("bias",), grad_noise_eta=0.1,
               lr_multipliers=(("Dense", 2.0),), grad_clip_norm=1.0)
  tx, _ = optim.build(config, 10)
  params = make_params()
  state = jax.eval_shape(tx.init, params)
  mapped = optax.tree_map_params(tx, lambda p, _: ("param", p.shape), state,
                                 params, transform_non_params=lambda _: None)
  tags = [x for x in jax.tree.leaves(mapped, is_leaf=lambda x: isinstance(
      x, tuple) and x[:1] == ("param",)) if x is not None]
  # adam mu + nu, the EMA and the MultiSteps accumulator: 4 param-shaped trees.
  assert len(tags) == 4 * len(jax.tree.leaves(params))


def test_lr_multipliers_first_match_wins():
  params, _, _ = run(cfg(name="sgd", learning_rate=1.0,
                         lr_multipliers=(("Dense_0/bias", 3.0), ("bias", 0.0))))
  np.testing.assert_allclose(params["Dense_0"]["bias"], 1.0 - 0.3, rtol=1e-6)
  np.testing.assert_allclose(params["Conv_0"]["bias"], 1.0)
  np.testing.assert_allclose(params["Conv_0"]["kernel"], 0.4, rtol=1e-6)


def test_l1_l2_penalties_are_added_to_masked_gradients():
  zero = grads_like(make_params(), 0.0)
  params, _, _ = run(cfg(name="sgd", learning_rate=1.0, l1=0.01, l2=0.1),
                     grads=zero)
  # kernel 0.5: g = 0.01 * sign(0.5) + 0.1 * 0.5; Dense kernel -0.5 mirrored.
  np.testing.assert_allclose(params["Conv_0"]["kernel"], 0.5 - 0.06, rtol=1e-6)
  np.testing.assert_allclose(params["Dense_0"]["kernel"], -0.5 + 0.06, rtol=1e-6)
  np.testing.assert_allclose(params["Conv_0"]["bias"], 1.0)


def test_grad_clip_norm_and_value():
  big = grads_like(make_params(), 10.0)
  n = sum(x.size for x in jax.tree.leaves(big))
  params, _, _ = run(cfg(name="sgd", learning_rate=1.0, grad_clip_norm=1.0),
                     grads=big)
  np.testing.assert_allclose(params["Dense_0"]["bias"], 1.0 - 1 / math.sqrt(n),
                             rtol=1e-5)
  params, _, _ = run(cfg(name="sgd", learning_rate=1.0, grad_clip_value=0.25),
                     grads=big)
  np.testing.assert_allclose(params["Dense_0"]["bias"], 0.75, rtol=1e-6)


def test_gradient_noise_is_annealed_and_seeded():
  tx, _ = optim.build(cfg(name="sgd", learning_rate=1.0, grad_noise_eta=0.04), 10)
  params = make_params()
  zero = grads_like(params, 0.0)
  update = jax.jit(tx.update)
  first, state = update(zero, tx.init(params), params)
  again, _ = update(zero, tx.init(params), params)  # same seed, same noise
  second, _ = update(zero, state, params)
  noise1 = np.asarray(first["Conv_0"]["kernel"])
  np.testing.assert_array_equal(noise1, again["Conv_0"]["kernel"])
  # Variance eta / t**gamma with t = 1, 2 (optax.add_noise counts from 1).
  assert noise1.std() == pytest.approx(0.2, rel=0.35)
  noise2 = np.asarray(second["Conv_0"]["kernel"])
  assert noise2.std() == pytest.approx(math.sqrt(0.04 / 2 ** 0.55), rel=0.35)
  assert not np.allclose(noise1, noise2)


def test_accumulate_steps_applies_mean_every_k_and_logs_the_applied_lr():
  config = cfg(name="sgd", learning_rate=1.0, accumulate_steps=2,
               schedule={"name": "linear"})
  tx, schedule = optim.build(config, 8)
  params = make_params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  seen = []
  for k in range(4):
    updates, state = update(grads_like(params, float(k + 1)), state, params)
    seen.append(float(updates["Dense_0"]["bias"][0]))
  # Linear 1 -> 0 over 8 train steps; updates applied at k=1 (lr(0)=1, mean g
  # 1.5) and k=3 (lr(2)=0.75, mean g 3.5).
  np.testing.assert_allclose(seen, [0.0, -1.5, 0.0, -0.75 * 3.5], rtol=1e-6)
  np.testing.assert_allclose([float(schedule(k)) for k in range(4)],
                             [1.0, 1.0, 0.75, 0.75], rtol=1e-6)


def test_ema_params_track_the_updated_params():
  config = cfg(name="sgd", learning_rate=1.0, ema_decay=0.5)
  params, state, _ = run(config, num_steps=2)
  # bias: 1 -> 0.9 -> 0.8; ema: 1 -> 0.95 -> 0.875.
  ema = optim.ema_params(state)
  np.testing.assert_allclose(params["Dense_0"]["bias"], 0.8, rtol=1e-6)
  np.testing.assert_allclose(ema["Dense_0"]["bias"], 0.875, rtol=1e-6)


def test_ema_params_found_inside_multisteps():
  config = cfg(name="sgd", learning_rate=1.0, ema_decay=0.5, accumulate_steps=2)
  _, state, _ = run(config, num_steps=2)
  ema = optim.ema_params(state)
  np.testing.assert_allclose(ema["Dense_0"]["bias"], 0.95, rtol=1e-6)


def test_lars_from_config_excludes_what_weight_decay_mask_leaves_out():
  config = cfg(name="lars", learning_rate=1.0, momentum=0.0, weight_decay=0.0,
               trust_coefficient=0.01)
  params, _, _ = run(config)
  np.testing.assert_allclose(params["Conv_0"]["bias"], 0.9, rtol=1e-6)  # plain
  kernel_step = 0.5 - float(params["Conv_0"]["kernel"][0, 0, 0, 0])
  np.testing.assert_allclose(kernel_step, 0.01 * 0.5 / 0.1 * 0.1, rtol=1e-5)


def test_mask_summary_rows():
  config = cfg(name="lars", weight_decay=1e-4, freeze=("^Dense_0/bias$",),
               lr_multipliers=(("Conv_0", 2.0),))
  rows = {r[0]: r for r in optim.mask_summary(config, make_params())}
  assert rows["Conv_0/kernel"] == ("Conv_0/kernel", (3, 3, 2, 4), True, True,
                                   2.0, False)
  assert rows["Conv_0/bias"] == ("Conv_0/bias", (4,), False, False, 2.0, False)
  assert rows["Dense_0/bias"] == ("Dense_0/bias", (3,), False, False, 1.0, True)
  adam_rows = optim.mask_summary(cfg(name="adam"), make_params())
  assert not any(r[2] or r[3] for r in adam_rows)


def test_optim_imports_without_the_rest_of_jaxtrain():
  code = ("import sys, jaxtrain.optim; "
          "extra = sorted(m for m in sys.modules if m.startswith('jaxtrain.') and "
          "not m.startswith('jaxtrain.optim') and m != 'jaxtrain.errors'); "
          "assert not extra, extra")
  subprocess.run([sys.executable, "-c", code], check=True)
