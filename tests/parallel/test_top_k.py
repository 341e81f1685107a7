"""Top-k correctness of the step's metrics (`step.top_k_correct`) without a sort.

Reference: a stable numpy sort of each row by decreasing logit, so that equal logits
keep class order (lower index first), which is how `jax.lax.top_k` and `argmax` break
ties. Integer-valued logits make ties common.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain import step
from jaxtrain.parallel import collectives as coll

CLASSES = 16


def _tied_logits(rows: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  logits = rng.integers(-2, 3, size=(rows, CLASSES)).astype(np.float32)  # 5 values
  labels = rng.integers(0, CLASSES, size=rows).astype(np.int32)
  return logits, labels


def _reference(logits, labels, k):
  order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
  return (order == labels[:, None]).any(axis=1).astype(np.float32)


@pytest.mark.parametrize("k", [1, 2, 5, CLASSES - 1, CLASSES])
def test_matches_a_stable_sort_with_ties(k):
  logits, labels = _tied_logits(256)
  got = np.asarray(step.top_k_correct(jnp.asarray(logits), jnp.asarray(labels), k))
  want = _reference(logits, labels, k)
  assert 0 < want.sum() <= 256
  np.testing.assert_array_equal(got, want)


def test_ties_resolve_as_lax_top_k_and_argmax():
  logits, labels = _tied_logits(256, seed=1)
  x, y = jnp.asarray(logits), jnp.asarray(labels)
  for k in (1, 3, 5):
    in_top_k = jnp.any(jax.lax.top_k(x, k)[1] == y[:, None], axis=1)
    np.testing.assert_array_equal(step.top_k_correct(x, y, k), in_top_k)
  np.testing.assert_array_equal(step.top_k_correct(x, y, 1), jnp.argmax(x, 1) == y)


def test_hand_written_rows():
  logits = jnp.array([[1.0, 3.0, 3.0, 0.0],    # label 2 ties with class 1 (ranks 2nd)
                      [1.0, 3.0, 3.0, 0.0],    # label 1: first of the tie
                      [jnp.nan, 0.0, 1.0, 2.0],  # NaN elsewhere: ignored
                      [0.0, jnp.nan, 1.0, 2.0],  # NaN label logit: a miss
                      [-jnp.inf, 0.0, 0.0, 0.0]])  # -inf label: last
  labels = jnp.array([2, 1, 3, 1, 0])
  np.testing.assert_array_equal(step.top_k_correct(logits, labels, 1), [0, 1, 1, 0, 0])
  np.testing.assert_array_equal(step.top_k_correct(logits, labels, 2), [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(step.top_k_correct(logits, labels, 4), [1, 1, 1, 0, 1])


def test_logits_split_over_classes_need_no_all_gather():
  """Tensor parallelism splits the classes over devices: `lax.top_k` gathers each
  row whole; counting ranks reduces one number per row."""
  logits, labels = _tied_logits(32, seed=2)
  mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
  shardings = (NamedSharding(mesh, P(None, "model")), NamedSharding(mesh, P()))

  def ours(x, y):
    return jnp.sum(step.top_k_correct(x, y, 5))

  def with_top_k(x, y):
    return jnp.sum(jnp.any(jax.lax.top_k(x, 5)[1] == y[:, None], axis=1))

  args = (jax.device_put(logits, shardings[0]), jax.device_put(labels, shardings[1]))
  ops = {}
  for name, fn in (("ours", ours), ("top_k", with_top_k)):
    compiled = jax.jit(fn, in_shardings=shardings).lower(*args).compile()
    ops[name] = coll.summary(compiled.as_text())
  assert "all-gather" in ops["top_k"]
  assert "all-gather" not in ops["ours"] and "all-to-all" not in ops["ours"]
  # A (32,) count per row at most, not the (32, 16) logits.
  assert ops["ours"]["all-reduce"].bytes <= 32 * 4 * 2
  assert float(jax.jit(ours, in_shardings=shardings)(*args)) == _reference(
      logits, labels, 5).sum()
