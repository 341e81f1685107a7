"""Update statistics against norms computed with numpy, group by group."""
import jax
import numpy as np
import optax

from jaxtrain import update_stats

RNG = np.random.default_rng(0)


def _tree(scale):
  n = lambda *s: (RNG.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
  return {"stem_conv": {"kernel": n(3, 3, 1, 4)},
          "stage1_block0": {"conv1": {"kernel": n(3, 3, 4, 4)}, "bn1": {"scale": n(4)}},
          "stage1_block1": {"conv1": {"kernel": n(3, 3, 4, 4)}},
          "stage2_block0": {"conv1": {"kernel": n(3, 3, 4, 8)}},
          "head": {"kernel": n(8, 10), "bias": n(10)}}


def _norm(arrays):
  return np.sqrt(sum(float(np.sum(np.square(a.astype(np.float64)))) for a in arrays))


def test_global_and_group_norms_match_numpy():
  grads, params = _tree(1.0), _tree(0.5)
  updates = jax.tree.map(lambda g, w: -0.1 * g - 0.01 * w, grads, params)
  got = jax.jit(update_stats.update_stats)(grads, params, updates)
  leaves = lambda t: jax.tree.leaves(t)  # noqa: E731
  np.testing.assert_allclose(got["grad_norm"], _norm(leaves(grads)), rtol=1e-5)
  np.testing.assert_allclose(got["param_norm"], _norm(leaves(params)), rtol=1e-5)
  np.testing.assert_allclose(got["update_norm"], _norm(leaves(updates)), rtol=1e-5)
  np.testing.assert_allclose(got["update_ratio"], _norm(leaves(updates))
                             / _norm(leaves(params)), rtol=1e-5)
  groups = {"stem_conv": ["stem_conv"], "stage1": ["stage1_block0", "stage1_block1"],
            "stage2": ["stage2_block0"], "head": ["head"]}
  for group, keys in groups.items():
    pick = lambda t: [a for k in keys for a in leaves(t[k])]  # noqa: E731
    np.testing.assert_allclose(got[f"{group}/grad_norm"], _norm(pick(grads)),
                               rtol=1e-5)
    np.testing.assert_allclose(got[f"{group}/update_ratio"],
                               _norm(pick(updates)) / _norm(pick(params)), rtol=1e-5)
  assert not [k for k in got if k.startswith("stage1_block")]
  layers = [(u, w) for u, w in zip(leaves(updates), leaves(params)) if w.ndim > 1]
  ratios = [_norm([u]) / _norm([w]) for u, w in layers]
  for stat, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
    np.testing.assert_allclose(got[f"layer_update_ratio_{stat}"], fn(ratios),
                               rtol=1e-5)


def test_sgd_ratio_is_learning_rate_times_gradient_over_weight_norm():
  grads, params = _tree(1.0), _tree(0.5)
  tx = optax.sgd(0.05)
  updates, _ = tx.update(grads, tx.init(params), params)
  got = update_stats.update_stats(grads, params, updates)
  np.testing.assert_allclose(got["update_ratio"], 0.05 * _norm(jax.tree.leaves(grads))
                             / _norm(jax.tree.leaves(params)), rtol=1e-5)
