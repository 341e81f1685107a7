"""`train.diagnostics`: what the train step measures about its update, in the step,
against numpy; a digits run's metrics; the step without it unchanged."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxtrain import noise_scale, runner, step as step_lib, step_diagnostics
from jaxtrain.config import base_config
from jaxtrain.errors import ConfigError
from jaxtrain.optim.lars import exclude_ndim_le_1, lars as lars_tx
from jaxtrain.parallel import sharding
from jaxtrain.parallel.mesh import batch_sharding, make_mesh
from jaxtrain.state import TrainState

CLASSES, FEATURES = 10, 12


class _Linear(nn.Module):
  """Softmax regression: logits = x W + b (per-example gradients in closed form)."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(CLASSES)(x.reshape((x.shape[0], -1)))


def _settings(**optimizer):
  c = base_config()
  c.train.diagnostics = True
  c.optimizer.name = "sgd"
  for k, v in optimizer.items():
    c.optimizer[k] = v
  return step_diagnostics.Settings.from_config(c)


def _state(model, tx, noise=False, seed=0):
  params = model.init(jax.random.key(seed), jnp.zeros((1, FEATURES)))["params"]
  params = jax.tree.map(lambda w: w + 0.1, params)  # nonzero bias: a real ratio
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                    opt_state=tx.init(params), rng=jax.random.PRNGKey(1),
                    noise_scale=noise_scale.init() if noise else None)


def _batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, FEATURES)).astype(np.float32),
          "label": rng.integers(0, CLASSES, size=n).astype(np.int32)}


def _per_example_grads(params, batch):
  """float64 numpy gradients of softmax cross-entropy of x W + b, one per row."""
  w = np.asarray(params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(params["Dense_0"]["bias"], np.float64)
  x = batch["image"].astype(np.float64)
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  delta = p - np.eye(CLASSES)[batch["label"]]
  return np.concatenate([(x[:, :, None] * delta[:, None, :]).reshape(len(x), -1),
                         delta], axis=1)  # [example, kernel then bias]


def test_in_step_noise_scale_on_8_devices_matches_numpy_per_example_gradients():
  mesh = make_mesh(base_config().mesh)
  assert step_diagnostics.noise_scale_note(mesh.abstract_mesh, {}) is None  # 8 replicas
  model, tx, n = _Linear(), optax.sgd(0.1), 64
  state, batch = _state(model, tx, noise=True), _batch(n)
  step = step_lib.make_train_step(model, tx, diagnostics=_settings())
  with sharding.activate(mesh, base_config().sharding.rules):
    new, metrics = jax.jit(step)(state, jax.device_put(batch, batch_sharding(mesh)))
  per_example = _per_example_grads(state.params, batch)
  per_replica = per_example.reshape(8, n // 8, -1).mean(1)
  small = np.mean(np.sum(per_replica ** 2, axis=1))
  big = np.sum(per_example.mean(0) ** 2)
  b_small = n // 8
  g2 = (n * big - b_small * small) / (n - b_small)
  trace = (small - big) / (1 / b_small - 1 / n)
  got = noise_scale.averages(new.noise_scale, step_diagnostics.NOISE_SCALE_DECAY)
  np.testing.assert_allclose([float(v) for v in got], [g2, trace], rtol=1e-4)
  np.testing.assert_allclose(float(metrics["diagnostics"]["gradient_noise_scale"]),
                             trace / g2, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["diagnostics"]["true_grad_sq_norm"]), g2,
                             rtol=1e-4)
  np.testing.assert_allclose(float(metrics["diagnostics"]["grad_covariance_trace"]),
                             trace, rtol=1e-4)
  assert small > big  # the per-replica and all-reduced norms differ
  # The per-replica gradients' mean is the plain gradient: the same update.
  want = jax.tree.map(lambda w, g: w - 0.1 * g, state.params,
                      {"Dense_0": {"kernel": per_example.mean(0)[:-CLASSES]
                                   .reshape(FEATURES, CLASSES),
                                   "bias": per_example.mean(0)[-CLASSES:]}})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               new.params, want)


def test_diagnostics_off_leaves_the_step_bit_identical():
  model, tx = _Linear(), optax.adam(0.01)
  state, batch = _state(model, tx), _batch(32)
  plain = jax.jit(step_lib.make_train_step(model, tx))
  measured = jax.jit(step_lib.make_train_step(model, tx, diagnostics=_settings()))
  off_state, off = plain(state, batch)
  on_state, on = measured(state, batch)
  assert step_diagnostics.KEY not in off
  assert set(on) - set(off) and {k for k in on if k in off} == set(off)
  for a, b in zip(jax.tree.leaves((off_state, off)),
                  jax.tree.leaves((on_state, {k: on[k] for k in off}))):
    np.testing.assert_array_equal(a, b)


def test_lars_trust_ratio_and_update_stats_in_the_step_match_numpy():
  model = _Linear()
  tx = lars_tx(0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.01,
                 exclude=exclude_ndim_le_1)
  state, batch = _state(model, tx), _batch(32)
  settings = _settings(name="lars", weight_decay=1e-3, trust_coefficient=0.01)
  new, m = jax.jit(step_lib.make_train_step(model, tx, diagnostics=settings))(
      state, batch)
  g = _per_example_grads(state.params, batch).mean(0)
  gk = g[:-CLASSES]
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64).ravel()
  wn, gn = np.linalg.norm(w), np.linalg.norm(gk)
  ratio = 0.01 * wn / (gn + 1e-3 * wn)  # the kernel; the bias is excluded
  for stat in ("min", "median", "max"):
    np.testing.assert_allclose(float(m["diagnostics"][f"trust_ratio_{stat}"]), ratio,
                               rtol=1e-5)
  np.testing.assert_allclose(float(m["diagnostics"]["Dense_0/trust_ratio"]), ratio,
                             rtol=1e-5)
  np.testing.assert_allclose(float(m["diagnostics"]["grad_norm"]), np.linalg.norm(g),
                             rtol=1e-5)
  u = np.concatenate([np.ravel(new.params["Dense_0"][k] - state.params["Dense_0"][k])
                      for k in ("kernel", "bias")])
  np.testing.assert_allclose(float(m["diagnostics"]["update_norm"]), np.linalg.norm(u),
                             rtol=1e-4)
  assert float(m["diagnostics"]["steps"]) == 1.0


def test_lamb_trust_ratio_from_its_first_step_matches_numpy():
  model = _Linear()
  tx = optax.lamb(0.01, weight_decay=0.1,
                  mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  state, batch = _state(model, tx), _batch(32)
  settings = _settings(name="lamb", weight_decay=0.1)
  _, m = jax.jit(step_lib.make_train_step(model, tx, diagnostics=settings))(
      state, batch)
  g = _per_example_grads(state.params, batch).mean(0)
  ratios = []
  for key, grad, decay in (("kernel", g[:-CLASSES], 0.1), ("bias", g[-CLASSES:], 0)):
    w = np.asarray(state.params["Dense_0"][key], np.float64).ravel()
    # Step 1: m_hat = g, v_hat = g^2, so the Adam direction is g / (|g| + eps).
    d = grad / (np.abs(grad) + 1e-6) + decay * w
    ratios.append(np.linalg.norm(w) / np.linalg.norm(d))
  np.testing.assert_allclose(float(m["diagnostics"]["trust_ratio_min"]), min(ratios),
                             rtol=1e-4)
  np.testing.assert_allclose(float(m["diagnostics"]["trust_ratio_max"]), max(ratios),
                             rtol=1e-4)


def test_a_skipped_step_adds_nothing_to_the_diagnostics():
  model, tx = _Linear(), optax.sgd(0.1)
  state, batch = _state(model, tx, noise=True), _batch(32)
  batch["image"][0, 0] = np.nan
  mesh = make_mesh(base_config().mesh)
  step = step_lib.make_train_step(model, tx, diagnostics=_settings())
  with sharding.activate(mesh, base_config().sharding.rules):
    new, m = jax.jit(step)(state, jax.device_put(batch, batch_sharding(mesh)))
  assert float(m["skipped"]) == 1.0
  assert not np.any(np.asarray(m[step_diagnostics.KEY].array))
  assert int(new.noise_scale.count) == 0
  assert step_diagnostics.averages(jax.device_get(m)) == {}


def _digits_config(**overrides):
  c = base_config()
  c.model.name = "mlp"
  c.optimizer.name = "lars"
  c.optimizer.learning_rate = 1.0
  c.optimizer.weight_decay = 1e-4
  c.train.batch_size = 32
  c.train.num_steps = 12
  c.train.log_every = 6
  c.train.eval_every = 0
  c.train.diagnostics = True
  c.checkpoint.every = 6
  for k, v in overrides.items():
    c.train[k] = v
  return c


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_digits_run_logs_diagnostics_and_resumes_the_noise_scale_bit_for_bit(
    tmp_path, capsys):
  straight = runner.train(_digits_config(), str(tmp_path / "a"))
  rows = _rows(tmp_path / "a")
  for key in ("train/grad_norm", "train/param_norm", "train/update_norm",
              "train/update_ratio", "train/layer_update_ratio_median",
              "train/trust_ratio_min", "train/trust_ratio_max",
              "train/gradient_noise_scale", "train/true_grad_sq_norm",
              "train/grad_covariance_trace"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert all(r["train/grad_norm"] > 0 and r["train/param_norm"] > 0 for r in rows)
  assert any(k.endswith("/trust_ratio") and k.count("/") == 2 for k in rows[0])
  assert straight.state.noise_scale is not None
  assert int(straight.state.noise_scale.count) == 12
  runner.train(_digits_config(), str(tmp_path / "b"), stop_at=6)
  resumed = runner.train(_digits_config(), str(tmp_path / "b"))
  for a, b in zip(jax.tree.leaves(straight.state.noise_scale),
                  jax.tree.leaves(resumed.state.noise_scale)):
    np.testing.assert_array_equal(a, b)
  assert os.listdir(tmp_path / "a" / "tb")  # TensorBoard gets the same values
  capsys.readouterr()


def test_what_cannot_be_measured_is_said_and_not_logged(tmp_path, capsys):
  c = _digits_config(num_steps=6)
  c.optimizer.grad_clip_norm = 1.0
  runner.train(c, str(tmp_path / "clip"), devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert "train/trust_ratio_* not logged: optimizer.grad_clip_norm" in out
  assert "train/gradient_noise_scale not logged: it needs more than one" in out
  row = _rows(tmp_path / "clip")[-1]
  assert "train/grad_norm" in row
  assert not [k for k in row if "trust_ratio" in k or "noise" in k]


def test_batch_norm_model_logs_no_noise_scale_and_says_why(tmp_path, capsys):
  c = _digits_config(num_steps=6)
  c.model.name = "cnn"
  c.model.features = (4,)
  c.model.hidden = 8
  c.model.use_bn = True
  runner.train(c, str(tmp_path))
  assert "the model keeps batch statistics" in capsys.readouterr().out
  assert "train/gradient_noise_scale" not in _rows(tmp_path)[-1]


def test_diagnostics_must_be_a_bool():
  from jaxtrain import config as config_lib
  c = _digits_config()
  train = c.train.to_dict()
  train["diagnostics"] = 1  # e.g. an experiment file's own train section
  c.train = ml_collections.ConfigDict(train)
  with pytest.raises(ConfigError, match="train.diagnostics"):
    config_lib.validate(c)


def test_vectorized_sweep_trials_log_the_diagnostics_of_one_by_one_runs(tmp_path):
  from jaxtrain.data import pipeline
  from jaxtrain.study import vectorized
  configs = []
  for lr, seed in ((0.05, 0), (0.02, 1)):
    c = _digits_config(num_steps=6, log_every=6)
    c.data.source = "arrays"
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = lr
    c.seed = seed
    c.checkpoint.every = 0
    configs.append(c)
  group = vectorized.build_group(configs)
  its = [pipeline.train_iterator(group.exp.train_source, 32, s) for s in group.seeds]
  for _ in range(6):
    group.step([next(it) for it in its])
  got = group.train_metrics()[1]
  for it in its:
    it.close()
  runner.train(configs[1], str(tmp_path))
  want = _rows(tmp_path)[-1]
  for key in ("train/gradient_noise_scale", "train/grad_norm", "train/update_ratio"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)


def test_blocks_of_steps_log_the_same_diagnostics(tmp_path):
  # steps_per_dispatch > 1 runs the same step inside lax.scan + lax.cond.
  runner.train(_digits_config(num_steps=8, log_every=4), str(tmp_path / "k1"))
  runner.train(_digits_config(num_steps=8, log_every=4, steps_per_dispatch=4),
               str(tmp_path / "k4"))
  for a, b in zip(_rows(tmp_path / "k1"), _rows(tmp_path / "k4")):
    for key in ("train/gradient_noise_scale", "train/grad_norm",
                "train/trust_ratio_median"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)
