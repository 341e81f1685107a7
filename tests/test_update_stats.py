"""Update statistics against norms computed with numpy, group by group."""
import jax
import numpy as np
import optax
import pytest

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


def test_trust_ratio_stats_match_numpy_medians_for_odd_and_even_groups():
  sizes = {"head": 1, "stage1": 2, "stage2": 3, "stem": 4}
  pairs = [(g, float(RNG.uniform(0.01, 2.0))) for g, n in sizes.items()
           for _ in range(n)]
  RNG.shuffle(pairs)  # a group's tensors need not be adjacent
  got = jax.jit(lambda r: update_stats.trust_ratio_stats(
      [(g, x) for (g, _), x in zip(pairs, r)]))(np.array([x for _, x in pairs],
                                                           np.float32))
  values = np.array([x for _, x in pairs])
  for stat, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
    np.testing.assert_allclose(got[f"trust_ratio_{stat}"], fn(values), rtol=1e-6)
  for group in sizes:
    np.testing.assert_allclose(got[f"{group}/trust_ratio"],
                               np.median([x for g, x in pairs if g == group]),
                               rtol=1e-6)
  assert update_stats.trust_ratio_stats([]) is None


def test_named_values_add_by_name_and_refuse_other_names():
  a = update_stats.NamedValues.of({"x": 1.0, "y": 2.0})
  b = update_stats.NamedValues.of({"x": 10.0, "y": 20.0})
  total = a + b
  assert (float(total["x"]), float(total["y"])) == (11.0, 22.0)
  both = a | update_stats.NamedValues.of({"z": 3.0})
  assert {k: float(v) for k, v in both.items()} == {"x": 1, "y": 2, "z": 3}
  with pytest.raises(ValueError, match="cannot add"):
    _ = a + both
  stacked = jax.tree.map(lambda *v: np.stack(v), a, b)  # e.g. a sweep's trials
  np.testing.assert_array_equal(stacked["y"], [2.0, 20.0])
