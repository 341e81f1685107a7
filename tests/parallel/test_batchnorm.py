"""DistributedBatchNorm against a numpy reference written from the formula.

Reference (TPU ResNet / MLPerf grouped BN): per-replica first and second moments ->
average within groups of `group_size` consecutive replicas -> biased variance
E[x^2] - E[x]^2 -> normalize each replica with its group's stats; running stats move
towards the average over groups.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxtrain import step as step_lib
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import DistributedBatchNorm
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding
from jaxtrain.state import create_train_state

MOMENTUM, EPS = 0.9, 1e-5
MESH_SHAPES = [(8, 1, 1), (4, 2, 1)]
GROUP_SIZES = [1, 2, 4, 8, None]


def make_mesh(shape, axis_type=AxisType.Auto):
  return jax.make_mesh(shape, ("data", "fsdp", "model"),
                       axis_types=(axis_type,) * 3)


def numpy_group_bn(x, replicas, group_size, scale, bias, ra_mean, ra_var):
  """Returns (y, new_ra_mean, new_ra_var) in float64, per replica as in the paper."""
  group_size = replicas if group_size is None else group_size
  x = np.asarray(x, np.float64)
  channels = x.shape[-1]
  per_replica = x.reshape(replicas, -1, channels)
  m1 = per_replica.mean(axis=1)                    # (R, C) first moments
  m2 = (per_replica ** 2).mean(axis=1)             # (R, C) second moments
  groups = replicas // group_size
  group_m1 = m1.reshape(groups, group_size, channels).mean(axis=1)
  group_m2 = m2.reshape(groups, group_size, channels).mean(axis=1)
  group_var = group_m2 - group_m1 ** 2
  y = np.empty_like(per_replica)
  for r in range(replicas):
    g = r // group_size
    y[r] = (per_replica[r] - group_m1[g]) / np.sqrt(group_var[g] + EPS)
    y[r] = y[r] * scale + bias
  new_mean = MOMENTUM * ra_mean + (1 - MOMENTUM) * group_m1.mean(axis=0)
  new_var = MOMENTUM * ra_var + (1 - MOMENTUM) * group_var.mean(axis=0)
  return y.reshape(x.shape), new_mean, new_var


def random_variables(rng, channels):
  return {
      "params": {"scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
                 "bias": rng.normal(size=channels).astype(np.float32)},
      "batch_stats": {"mean": rng.normal(size=channels).astype(np.float32),
                      "var": rng.uniform(0.5, 2.0, channels).astype(np.float32)},
  }


def train_apply(bn, variables, x):
  return bn.apply(variables, x, use_running_average=False,
                  mutable=["batch_stats"])


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_jitted_sharded_matches_numpy_reference(mesh_shape, group_size):
  rng = np.random.RandomState(0)
  # Different offsets per replica make group statistics differ between groups.
  x = (rng.normal(size=(16, 3, 3, 5)) * 2
       + np.arange(16)[:, None, None, None] // 2).astype(np.float32)
  variables = random_variables(rng, 5)
  bn = DistributedBatchNorm(momentum=MOMENTUM, epsilon=EPS, group_size=group_size)
  mesh = make_mesh(mesh_shape)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    y, updates = jax.jit(train_apply, static_argnums=0)(bn, variables, xs)
  ref_y, ref_mean, ref_var = numpy_group_bn(
      x, 8, group_size, variables["params"]["scale"], variables["params"]["bias"],
      variables["batch_stats"]["mean"], variables["batch_stats"]["var"])
  np.testing.assert_allclose(y, ref_y, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], ref_mean, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], ref_var, atol=1e-5)


@pytest.mark.parametrize("group_size", [2, 4])
def test_grouped_reduction_only_all_reduces_statistics(group_size):
  # The batch must stay sharded: no all-gather of activations, only small all-reduces.
  mesh = make_mesh((4, 2, 1))
  bn = DistributedBatchNorm(group_size=group_size)
  x = np.ones((16, 4, 4, 8), np.float32)
  variables = random_variables(np.random.RandomState(0), 8)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    step = jax.jit(train_apply, static_argnums=0)
    hlo = step.lower(bn, variables, xs).compile().as_text()
    y, _ = step(bn, variables, xs)
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  assert "all-reduce" in hlo
  assert y.sharding.spec[0] == ("data", "fsdp")


@pytest.mark.parametrize("group_size", [1, 2, 4, None])
def test_gradient_matches_flax_batchnorm_per_group(group_size):
  """Grouped BN == flax.linen.BatchNorm applied separately to each group's slice."""
  rng = np.random.RandomState(1)
  x = (rng.normal(size=(16, 2, 2, 3)) + np.arange(16)[:, None, None, None] % 3
       ).astype(np.float32)
  w = rng.normal(size=x.shape).astype(np.float32)
  variables = random_variables(rng, 3)
  groups = 1 if group_size is None else 8 // group_size

  def loss(params, x, module, per_group):
    def one(xg):
      return module.apply({"params": params,
                           "batch_stats": variables["batch_stats"]},
                          xg, use_running_average=False,
                          mutable=["batch_stats"])[0]
    y = (jnp.concatenate([one(xg) for xg in jnp.split(x, groups)]) if per_group
         else one(x))
    return jnp.sum(y * w)

  mesh = make_mesh((4, 2, 1))
  grad = jax.grad(loss, argnums=(0, 1))
  bn = DistributedBatchNorm(group_size=group_size)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    got = jax.jit(grad, static_argnums=(2, 3))(variables["params"], xs, bn, False)
  want = grad(variables["params"], x, nn.BatchNorm(momentum=MOMENTUM), True)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


def test_statistics_are_float32_for_bfloat16_input():
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.normal(size=(16, 4, 4, 3)) * 3 + 100, jnp.bfloat16)
  variables = random_variables(rng, 3)
  bn = DistributedBatchNorm(group_size=2, dtype=jnp.bfloat16)
  mesh = make_mesh((8, 1, 1))
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    y, updates = jax.jit(train_apply, static_argnums=0)(bn, variables, xs)
  _, ref_mean, ref_var = numpy_group_bn(
      np.asarray(x, np.float64), 8, 2, 1.0, 0.0,
      variables["batch_stats"]["mean"], variables["batch_stats"]["var"])
  assert y.dtype == jnp.bfloat16
  stats = updates["batch_stats"]
  assert stats["mean"].dtype == stats["var"].dtype == jnp.float32
  # bfloat16 accumulation would be off by ~0.4 at a mean of 100 (8-bit mantissa).
  np.testing.assert_allclose(stats["mean"], ref_mean, atol=1e-4)
  np.testing.assert_allclose(stats["var"], ref_var, rtol=1e-3)


def test_variables_have_flax_batchnorm_structure():
  x = jnp.ones((4, 3, 3, 6), jnp.bfloat16)
  ours = DistributedBatchNorm(use_running_average=False).init(jax.random.key(0), x)
  theirs = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  spec = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert spec(ours) == spec(theirs)


def test_use_running_average_normalizes_with_running_stats():
  rng = np.random.RandomState(3)
  x = rng.normal(size=(8, 2, 2, 4)).astype(np.float32)
  variables = random_variables(rng, 4)
  bn = DistributedBatchNorm(group_size=2)
  mesh = make_mesh((8, 1, 1))
  with jax.set_mesh(mesh):
    y = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=True))(variables, x)
  params, stats = variables["params"], variables["batch_stats"]
  want = ((x - stats["mean"]) / np.sqrt(stats["var"] + EPS) * params["scale"]
          + params["bias"])
  np.testing.assert_allclose(y, want, atol=1e-5)


def test_without_mesh_is_ordinary_batchnorm_whatever_the_group_size():
  rng = np.random.RandomState(4)
  x = rng.normal(size=(6, 3, 3, 2)).astype(np.float32)
  variables = random_variables(rng, 2)
  y, updates = train_apply(DistributedBatchNorm(group_size=4), variables, x)
  ref_y, ref_mean, ref_var = numpy_group_bn(
      x, 1, 1, variables["params"]["scale"], variables["params"]["bias"],
      variables["batch_stats"]["mean"], variables["batch_stats"]["var"])
  np.testing.assert_allclose(y, ref_y, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], ref_var, atol=1e-5)


def test_explicit_axis_mesh_gives_same_numbers():
  rng = np.random.RandomState(5)
  x = (rng.normal(size=(16, 2, 2, 3)) + np.arange(16)[:, None, None, None]
       ).astype(np.float32)
  variables = random_variables(rng, 3)
  bn = DistributedBatchNorm(group_size=4)  # 2 groups of 4 on data=4 x fsdp=2.
  mesh = make_mesh((4, 2, 1), AxisType.Explicit)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    y, updates = jax.jit(train_apply, static_argnums=0)(bn, variables, xs)
  ref_y, ref_mean, _ = numpy_group_bn(
      x, 8, 4, variables["params"]["scale"], variables["params"]["bias"],
      variables["batch_stats"]["mean"], variables["batch_stats"]["var"])
  np.testing.assert_allclose(y, ref_y, atol=2e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], ref_mean, atol=1e-5)


def test_group_size_not_dividing_replicas_fails_at_trace_time():
  variables = random_variables(np.random.RandomState(0), 3)
  x = jax.ShapeDtypeStruct((24, 3), jnp.float32)
  with jax.set_mesh(make_mesh((4, 2, 1))):
    with pytest.raises(ConfigError, match="bn_group_size") as err:
      jax.eval_shape(lambda x: train_apply(DistributedBatchNorm(group_size=3),
                                           variables, x), x)
  assert err.value.field == "model.bn_group_size"


def test_batch_not_divisible_by_replicas_fails_at_trace_time():
  variables = random_variables(np.random.RandomState(0), 3)
  x = jax.ShapeDtypeStruct((12, 3), jnp.float32)
  with jax.set_mesh(make_mesh((8, 1, 1))):
    with pytest.raises(ConfigError) as err:
      jax.eval_shape(lambda x: train_apply(DistributedBatchNorm(group_size=2),
                                           variables, x), x)
  assert err.value.field == "train.batch_size"


def test_init_under_mesh_accepts_any_dummy_batch():
  with jax.set_mesh(make_mesh((8, 1, 1))):
    variables = DistributedBatchNorm(group_size=2, use_running_average=False).init(
        jax.random.key(0), jnp.ones((1, 5)))
  np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(5))


class _NormalizedLogits(nn.Module):
  """Logits = grouped batch norm of the inputs (scale 1, bias 0 at init)."""
  group_size: int | None

  @nn.compact
  def __call__(self, x, train: bool = False):
    return DistributedBatchNorm(use_running_average=not train, momentum=MOMENTUM,
                                epsilon=EPS, group_size=self.group_size)(x)


@pytest.mark.parametrize("group_size", [1, 2, 4, 8])
def test_inside_the_jitted_train_step_loss_and_running_stats_match_numpy(group_size):
  """The train step of `jaxtrain.step` on (4, 2, 1) devices: its loss sum is the
  cross-entropy of the numpy group-normalized batch, its new batch_stats the numpy
  running statistics."""
  rng = np.random.RandomState(3)
  classes = 6
  x = (rng.normal(size=(16, classes)) * 2
       + np.arange(16)[:, None] // 2 * 0.5).astype(np.float32)
  labels = rng.randint(0, classes, size=16).astype(np.int32)
  mesh = make_mesh((4, 2, 1))
  rules = sharding.DEFAULT_RULES
  model = _NormalizedLogits(group_size)
  state, _ = create_train_state(model, optax.sgd(0.1), (classes,), 0, mesh, rules)
  batch = jax.device_put({"image": x, "label": labels}, mesh_lib.batch_sharding(mesh))
  with sharding.activate(mesh, rules):
    new_state, metrics = jax.jit(step_lib.make_train_step(model, optax.sgd(0.1)))(
        state, batch)
  y, ref_mean, ref_var = numpy_group_bn(x, 8, group_size, np.ones(classes),
                                        np.zeros(classes), np.zeros(classes),
                                        np.ones(classes))
  log_softmax = y - np.log(np.exp(y).sum(axis=1, keepdims=True))
  ref_loss = -log_softmax[np.arange(16), labels].sum()
  # float32 E[x^2] - E[x]^2 over 2-example replicas (group size 1) costs digits.
  np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-4)
  stats = new_state.model_state["batch_stats"]["DistributedBatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], ref_mean, atol=1e-6)
  np.testing.assert_allclose(stats["var"], ref_var, atol=1e-5)
