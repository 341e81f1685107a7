"""The gradient noise scale estimator (McCandlish et al. 2018, arXiv 1812.06162,
appendix A) against closed forms and against numpy per-example gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from jaxtrain import noise_scale as ns

D, SIGMA = 10, 1.0


def linear_regression_b_simple(delta, sigma):
  """B_simple for least squares on Gaussian data, in closed form.

  Model y = x . w* + eps, x ~ N(0, I_d), eps ~ N(0, sigma^2); per-example loss
  l = (x . w - y)^2 / 2 at parameters w = w* + delta. The per-example gradient is
  g = x (x . delta - eps). Then
    G = E[g] = E[x x^T] delta = delta,                  so |G|^2 = |delta|^2;
    E[g g^T] = E[x x^T (x . delta)^2] + sigma^2 E[x x^T]
             = |delta|^2 I + 2 delta delta^T + sigma^2 I  (Isserlis' theorem),
    Sigma = E[g g^T] - G G^T = (|delta|^2 + sigma^2) I + delta delta^T,
    tr(Sigma) = d (|delta|^2 + sigma^2) + |delta|^2.
  B_simple = tr(Sigma) / |G|^2.
  """
  d2 = float(np.sum(delta ** 2))
  return (len(delta) * (d2 + sigma ** 2) + d2) / d2


def test_recovers_b_simple_on_linear_regression_within_10_percent():
  rng = np.random.default_rng(0)
  delta = rng.normal(size=D).astype(np.float32)
  delta /= np.linalg.norm(delta)  # |G|^2 = 1, B_simple = 10 * 2 + 1 = 21
  want = linear_regression_b_simple(delta, SIGMA)
  n_replicas, b_small, steps, decay = 8, 4, 4000, 0.999

  def step(state, key):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (n_replicas, b_small, D))
    eps = SIGMA * jax.random.normal(ke, (n_replicas, b_small))
    per_example = x * (x @ delta - eps)[..., None]       # [replica, example, D]
    small, big = ns.stacked_sq_norms(per_example.mean(axis=1))
    return ns.update(state, small, big, b_small, n_replicas * b_small, decay), None

  keys = jax.random.split(jax.random.key(1), steps)
  state, _ = jax.jit(lambda s: jax.lax.scan(step, s, keys))(ns.init())
  got = float(ns.simple_noise_scale(state))
  assert got == pytest.approx(want, rel=0.10)
  g2, trace = ns.averages(state, decay)
  assert float(g2) == pytest.approx(1.0, rel=0.15)
  assert float(trace) == pytest.approx(want, rel=0.15)


def test_one_step_estimates_are_exact_on_the_expected_norms():
  # Plug in E|G_B|^2 = |G|^2 + tr / B for both sizes: the estimators return
  # |G|^2 and tr exactly (unbiasedness, appendix A).
  g2, trace, b_small, b_big = 2.5, 40.0, 16, 128
  got = ns.estimates(g2 + trace / b_small, g2 + trace / b_big, b_small, b_big)
  np.testing.assert_allclose(got, (g2, trace), rtol=1e-6)


def test_bias_correction_and_ratio():
  state = ns.update(ns.init(), 3.0, 2.0, 1, 2, decay=0.9)  # |G|^2 = 1, tr = 2
  np.testing.assert_allclose(ns.averages(state, 0.9), (1.0, 2.0), rtol=1e-6)
  assert float(ns.simple_noise_scale(state)) == pytest.approx(2.0)


@pytest.mark.parametrize("b_small,b_big", [(8, 8), (0, 8), (16, 8)])
def test_needs_two_distinct_batch_sizes(b_small, b_big):
  with pytest.raises(ValueError, match="0 < b_small < b_big"):
    ns.estimates(1.0, 1.0, b_small, b_big)


def numpy_estimates(x, y, w, b, n_replicas):
  """Per-example gradients of (x . w + b - y)^2 / 2 in float64, then appendix A."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  residual = x @ np.asarray(w, np.float64) + float(b) - y
  per_example = np.concatenate([x * residual[:, None], residual[:, None]], axis=1)
  per_replica = per_example.reshape(n_replicas, -1, per_example.shape[1]).mean(1)
  small = np.mean(np.sum(per_replica ** 2, axis=1))
  big = np.sum(per_example.mean(0) ** 2)
  b_small = len(x) // n_replicas
  g2 = (len(x) * big - b_small * small) / (len(x) - b_small)
  trace = (small - big) / (1 / b_small - 1 / len(x))
  return small, big, g2, trace


def test_data_parallel_estimate_on_8_devices_matches_numpy_per_example_gradients():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py sets 8 simulated CPU devices"
  mesh = Mesh(np.array(devices), ("data",))
  rng = np.random.default_rng(3)
  n, b_small = 64, 8
  x = rng.normal(size=(n, D)).astype(np.float32)
  y = (x @ rng.normal(size=D) + 0.5 * rng.normal(size=n)).astype(np.float32)
  params = {"w": jnp.asarray(rng.normal(size=D), jnp.float32),
            "b": jnp.asarray(0.3, jnp.float32)}

  def loss(p, xb, yb):
    return 0.5 * jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                     out_specs=P())
  def dp_step(p, xb, yb):
    # pcast: this replica's own mean gradient, not shard_map's summed one.
    grads = jax.grad(loss)(jax.lax.pcast(p, "data", to="varying"), xb, yb)
    small, big = ns.data_parallel_sq_norms(grads, "data")
    return (small, big) + ns.estimates(small, big, b_small, n)

  got = [float(v) for v in dp_step(params, x, y)]
  want = numpy_estimates(x, y, params["w"], params["b"], 8)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  assert want[1] < want[0]  # the two norms differ: a real test of the split

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                     out_specs=P())
  def already_reduced(p, xb, yb):
    return ns.data_parallel_sq_norms(jax.grad(loss)(p, xb, yb), "data")

  with pytest.raises(ValueError, match=r"pcast\(params, 'data'"):
    already_reduced(params, x, y)

  # Without vma checking, grad of the replicated params is per-replica as is.
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                     out_specs=P(), check_vma=False)
  def unchecked(p, xb, yb):
    small, big = ns.data_parallel_sq_norms(jax.grad(loss)(p, xb, yb), "data")
    return (small, big) + ns.estimates(small, big, b_small, n)

  np.testing.assert_allclose([float(v) for v in unchecked(params, x, y)], want,
                             rtol=1e-4)
