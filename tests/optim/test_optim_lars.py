"""LARS (TPU/MLPerf form) against a numpy reference from You et al. 2017
(arXiv 1708.03888) as written in the TPU ResNet code, and against optax.lars where
the two coincide."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import optim

W0 = {"bias": np.array([0.1, -0.2, 0.3], np.float32),
      "kernel": np.array([[1.0, -2.0, 0.5], [0.3, 3.0, -0.25]], np.float32),
      "zero": np.zeros((2, 2), np.float32)}  # zero weights: trust ratio 1


def np_lars(w0, grads, lrs, momentum, wd, tc, eps, nesterov, excluded):
  w = {k: np.array(v, np.float64) for k, v in w0.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  out = []
  for g, lr in zip(grads, lrs):
    for name in w:
      gi = np.asarray(g[name], np.float64)
      if excluded[name]:
        tr = 1.0
      else:
        wn, gn = np.linalg.norm(w[name]), np.linalg.norm(gi)
        tr = tc * wn / (gn + wd * wn + eps) if wn > 0 and gn > 0 else 1.0
        gi = gi + wd * w[name]
      v[name] = momentum * v[name] + lr * tr * gi
      step = lr * tr * gi + momentum * v[name] if nesterov else v[name]
      w[name] = w[name] - step
    out.append({k: x.copy() for k, x in w.items()})
  return out


def gradient_sequence(num_steps=8, seed=1):
  rng = np.random.default_rng(seed)
  grads = []
  for k in range(num_steps):
    g = {n: rng.normal(size=x.shape).astype(np.float32) for n, x in W0.items()}
    if k % 2:
      g = {n: -x for n, x in g.items()}  # sign flips
    if k == 3:
      g["kernel"] = np.zeros_like(g["kernel"])  # zero gradient: trust ratio 1
    grads.append(g)
  return grads


def run(tx, grads, w0=W0):
  params = jax.tree.map(jnp.asarray, w0)
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    out.append(jax.tree.map(np.asarray, params))
  return out


def assert_close(got, want, rtol=2e-5, atol=1e-6):
  for step, (g, w) in enumerate(zip(got, want)):
    for name in w:
      np.testing.assert_allclose(g[name], w[name], rtol=rtol, atol=atol,
                                 err_msg=f"step {step} {name}")


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd,tc,eps", [(1e-4, 0.001, 0.0), (0.05, 0.02, 1e-3),
                                       (0.0, 1.0, 0.0)])
def test_lars_default_exclusion_matches_reference(nesterov, wd, tc, eps):
  grads = gradient_sequence()
  got = run(optim.lars(0.5, momentum=0.9, weight_decay=wd, trust_coefficient=tc,
                       eps=eps, nesterov=nesterov), grads)
  excluded = {"bias": True, "kernel": False, "zero": False}  # ndim <= 1
  want = np_lars(W0, grads, [0.5] * len(grads), 0.9, wd, tc, eps, nesterov,
                 excluded)
  assert_close(got, want)


def test_lars_schedule_is_inside_the_momentum_buffer():
  grads = gradient_sequence()
  schedule = optax.linear_schedule(1.0, 0.1, len(grads))
  got = run(optim.lars(schedule, momentum=0.9, weight_decay=1e-3,
                       trust_coefficient=0.01), grads)
  lrs = [float(schedule(k)) for k in range(len(grads))]
  want = np_lars(W0, grads, lrs, 0.9, 1e-3, 0.01, 0.0, False,
                 {"bias": True, "kernel": False, "zero": False})
  assert_close(got, want)


@pytest.mark.parametrize("exclude_kind", ["tree", "fn"])
def test_lars_explicit_exclusion(exclude_kind):
  excluded = {"bias": False, "kernel": True, "zero": False}
  exclude = (excluded if exclude_kind == "tree"
             else lambda params: jax.tree.map(lambda p: p.shape == (2, 3), params))
  grads = gradient_sequence()
  got = run(optim.lars(0.3, momentum=0.8, weight_decay=0.01, trust_coefficient=0.05,
                       exclude=exclude), grads)
  want = np_lars(W0, grads, [0.3] * len(grads), 0.8, 0.01, 0.05, 0.0, False,
                 excluded)
  assert_close(got, want)


def test_excluded_tensor_is_plain_momentum_with_lr_in_buffer():
  tx = optim.lars(0.1, momentum=0.5, weight_decay=0.1)
  params = {"bias": jnp.array([2.0, 4.0])}
  state = tx.init(params)
  g = {"bias": jnp.array([1.0, -1.0])}
  u1, state = tx.update(g, state, params)
  u2, state = tx.update(g, state, params)
  np.testing.assert_allclose(u1["bias"], [-0.1, 0.1], rtol=1e-6)
  np.testing.assert_allclose(u2["bias"], [-0.15, 0.15], rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_matches_optax_lars_without_weight_decay_and_exclusions(nesterov, eps):
  # optax.lars: tr = c ||w|| / (||g + wd w|| + eps), -lr before the trace; with
  # wd = 0 and every tensor trust-ratio scaled that is exactly our form.
  grads = gradient_sequence()
  schedule = optax.cosine_decay_schedule(0.8, len(grads))
  ours = optim.lars(schedule, momentum=0.9, weight_decay=0.0,
                    trust_coefficient=0.01, eps=eps, nesterov=nesterov,
                    exclude=lambda p: jax.tree.map(lambda _: False, p))
  theirs = optax.lars(schedule, weight_decay=0.0, trust_coefficient=0.01,
                      eps=eps, momentum=0.9, nesterov=nesterov)
  assert_close(run(ours, grads), run(theirs, grads), rtol=1e-5)


def test_differs_from_optax_lars_with_weight_decay():
  # Guards the documented difference: denominator ||g|| + wd ||w|| here.
  grads = gradient_sequence()
  none = lambda p: jax.tree.map(lambda _: False, p)
  ours = run(optim.lars(0.5, momentum=0.9, weight_decay=0.5, trust_coefficient=0.01,
                        exclude=none), grads)
  theirs = run(optax.lars(0.5, weight_decay=0.5, trust_coefficient=0.01), grads)
  assert not np.allclose(ours[-1]["kernel"], theirs[-1]["kernel"], rtol=1e-3)


def test_zero_weights_and_zero_gradients_use_trust_ratio_one():
  tx = optim.lars(1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001)
  params = {"w0": jnp.zeros((2, 2)), "g0": jnp.ones((2, 2))}
  g = {"w0": jnp.full((2, 2), 0.5), "g0": jnp.zeros((2, 2))}
  updates, _ = jax.jit(tx.update)(g, tx.init(params), params)
  np.testing.assert_allclose(updates["w0"], -0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(updates["g0"], np.zeros((2, 2)))
  assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))


def test_lars_requires_params():
  tx = optim.lars(0.1)
  with pytest.raises(ValueError):
    tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
