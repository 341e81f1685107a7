"""Model options: activations, normalizations, initializers, drop path, zero-init.

Activations and norms are checked against numpy formulas, initializers against the
fan-in/fan-out variance formulas, stochastic depth and zero-init by behaviour.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxtrain.errors import ConfigError
from jaxtrain.models import activations, get_model, initializers, norms
from jaxtrain.models.drop_path import DropPath, drop_path_rates
from jaxtrain.models.resnet import BasicBlock, BottleneckBlock, ResNet


def key(seed):
  # rbg keys: threefry draws take seconds each to compile on XLA:CPU.
  return jax.random.key(seed, impl="rbg")


class TinyBasic(ResNet):
  stage_sizes = (1, 1)
  block_cls = BasicBlock


class TinyBottleneck(ResNet):
  stage_sizes = (2, 1)
  block_cls = BottleneckBlock


X = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)


# --- activations ---------------------------------------------------------------

def np_sigmoid(x):
  return 1 / (1 + np.exp(-x))


NP_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "prelu": lambda x: np.where(x >= 0, x, 0.25 * x),      # He et al.'s initial a
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "gelu": lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(
        math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x * np_sigmoid(x),
    "swish": lambda x: x * np_sigmoid(x),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
}


class Act(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    return activations.apply(self.kind, x, "act")


def test_every_activation_has_a_reference():
  assert sorted(NP_ACTIVATIONS) == sorted(activations.ACTIVATIONS)


@pytest.mark.parametrize("kind", sorted(NP_ACTIVATIONS))
def test_activation_matches_its_formula(kind):
  x = np.linspace(-6, 6, 97, dtype=np.float32).reshape(-1, 1) * np.ones((1, 3))
  x = x.astype(np.float32)
  variables = Act(kind).init(key(0), x)
  got = Act(kind).apply(variables, x)
  np.testing.assert_allclose(got, NP_ACTIVATIONS[kind](x.astype(np.float64)),
                             rtol=1e-5, atol=1e-6)


def test_prelu_learns_one_slope_per_channel():
  x = np.array([[-2.0, -2.0, 3.0]], np.float32)
  variables = Act("prelu").init(key(0), x)
  slopes = variables["params"]["act"]["negative_slope"]
  assert nn.meta.unbox(slopes).shape == (3,)
  variables = {"params": {"act": {"negative_slope": jnp.array([0.1, 0.5, 0.9])}}}
  np.testing.assert_allclose(Act("prelu").apply(variables, x), [[-0.2, -1.0, 3.0]],
                             rtol=1e-6)


# --- normalizations ------------------------------------------------------------

def np_normalize(x, axes, eps, scale, bias, groups=None):
  x = x.astype(np.float64)
  if groups:  # (N, H, W, G, C/G): statistics per example and group
    n, h, w, c = x.shape
    xg = x.reshape(n, h, w, groups, c // groups)
    mean = xg.mean((1, 2, 4), keepdims=True)
    var = xg.var((1, 2, 4), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
  else:
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
  return y * scale + bias


@pytest.mark.parametrize("kind,axes,groups", [
    ("batch", (0, 1, 2), None), ("layer", (1, 2, 3), None), ("group", None, 2),
    ("instance", (1, 2), None)])
def test_normalization_matches_its_statistics(kind, axes, groups):
  rng = np.random.default_rng(1)
  x = (3 + 2 * rng.normal(size=(4, 5, 5, 8))).astype(np.float32)
  scale = rng.normal(size=8).astype(np.float32)
  bias = rng.normal(size=8).astype(np.float32)
  norm = norms.make(kind, train=True, epsilon=1e-5, dtype=jnp.float32,
                    param_dtype=jnp.float32, num_groups=2)(name="n")
  variables = nn.meta.unbox(norm.init(key(0), x))
  variables["params"] = {"scale": scale, "bias": bias}
  got, _ = norm.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(got, np_normalize(x, axes, 1e-5, scale, bias, groups),
                             rtol=1e-4, atol=1e-5)
  assert ("batch_stats" in variables) == (kind == "batch")


# --- initializers --------------------------------------------------------------

FANS = {"glorot": lambda i, o: (i + o) / 2, "he": lambda i, o: i,
        "lecun": lambda i, o: i}
SCALES = {"glorot": 1.0, "he": 2.0, "lecun": 1.0}


def expected_variance(name, shape):
  field = int(np.prod(shape[:-2]))
  fan_in, fan_out = field * shape[-2], field * shape[-1]
  family = name.split("_")[0]
  fan = fan_out if name.endswith("fan_out") else FANS[family](fan_in, fan_out)
  return SCALES[family] / fan


@pytest.mark.parametrize("shape", [(3, 3, 64, 128), (512, 256)])
@pytest.mark.parametrize("name", [n for n in initializers.INITIALIZERS
                                  if n != "orthogonal"])
def test_initializer_variance_follows_its_fan(name, shape):
  w = np.asarray(initializers.get(name)(key(0), shape, jnp.float32), np.float64)
  want = expected_variance(name, shape)
  assert abs(w.mean()) < 0.02 * math.sqrt(want)
  np.testing.assert_allclose(w.var(), want, rtol=0.03)
  if "uniform" in name:  # U(-limit, limit) with limit = sqrt(3 var)
    limit = math.sqrt(3 * want)
    assert limit * 0.99 < np.abs(w).max() <= limit


@pytest.mark.parametrize("shape", [(3, 3, 16, 64), (1, 1, 64, 16)])
def test_orthogonal_kernel_has_orthonormal_columns_or_rows(shape):
  w = np.asarray(initializers.get("orthogonal")(key(0), shape, jnp.float32))
  m = w.reshape(-1, shape[-1])
  gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
  np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5)


def test_kernel_init_reaches_every_convolution_including_fused_1x1():
  model = TinyBasic(num_classes=3, small_inputs=True, width=8,
                    kernel_init="orthogonal", impl="fused")
  params = nn.meta.unbox(jax.jit(model.init)(key(0), X[:2]))["params"]
  for path in [("stem_conv",), ("stage1_block0", "conv1"),
               ("stage2_block0", "proj_conv")]:  # proj_conv: a PointwiseConv
    w = params
    for p in path:
      w = w[p]
    m = np.asarray(w["kernel"]).reshape(-1, w["kernel"].shape[-1])
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5, err_msg=path)


# --- stochastic depth ----------------------------------------------------------

def test_drop_path_rates_are_linear_in_depth():
  # Huang et al. Eq. 4: p_l = 1 - l / L (1 - p_L); drop rate 1 - p_l.
  np.testing.assert_allclose(drop_path_rates(0.2, 4), [0.05, 0.1, 0.15, 0.2])


def test_drop_path_keeps_the_expectation_over_many_masks():
  x = np.random.default_rng(2).normal(size=(8, 3, 3, 2)).astype(np.float32)
  layer = DropPath(0.3, deterministic=False)
  draws = jax.jit(jax.vmap(lambda k: layer.apply({}, x, rngs={"dropout": k})))(
      jax.random.split(key(1), 4000))
  draws = np.asarray(draws)
  # Each example is either dropped whole or kept and scaled by 1 / 0.7.
  kept = np.all(np.isclose(draws, x / 0.7), axis=(2, 3, 4))
  dropped = np.all(draws == 0, axis=(2, 3, 4))
  assert np.all(kept | dropped)
  assert abs(dropped.mean() - 0.3) < 0.02
  np.testing.assert_allclose(draws.mean(0), x, atol=0.1 * np.abs(x).max())


def test_drop_path_is_the_identity_at_eval():
  x = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
  np.testing.assert_array_equal(DropPath(0.5, deterministic=True).apply({}, x), x)


@pytest.fixture(scope="module")
def drop_path_model():
  model = TinyBasic(num_classes=3, small_inputs=True, width=4, drop_path_rate=0.8)
  variables = jax.jit(model.init)(key(0), X[:2])
  return model, variables


def test_resnet_drops_each_block_at_its_depth_rate(drop_path_model):
  model, variables = drop_path_model
  x = np.random.default_rng(4).normal(size=(512, 4, 4, 3)).astype(np.float32)
  _, state = model.apply(variables, x, train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"],
                         rngs={"dropout": key(5)})
  for block, rate in [("stage1_block0", 0.4), ("stage2_block0", 0.8)]:
    branch = np.asarray(state["intermediates"][block]["drop_path"]["__call__"][0])
    dropped = np.all(branch == 0, axis=(1, 2, 3)).mean()
    assert abs(dropped - rate) < 0.08, (block, dropped)


def test_resnet_with_drop_path_evaluates_like_without(drop_path_model):
  model, variables = drop_path_model
  plain = TinyBasic(num_classes=3, small_inputs=True, width=4)
  np.testing.assert_array_equal(model.apply(variables, X, train=False),
                                plain.apply(variables, X, train=False))


# --- zero-initialised last norm scale (Goyal et al. 2017) ----------------------

def np_relu(x):
  return np.maximum(np.asarray(x), 0)


BLOCKS = {TinyBasic: ["stage1_block0", "stage2_block0"],
          TinyBottleneck: ["stage1_block0", "stage1_block1", "stage2_block0"]}


def _blocks_in_and_out(cls, **options):
  model = cls(num_classes=3, small_inputs=True, width=4, **options)
  # One program for init + apply: on XLA:CPU it compiles faster than op by op.
  _, state = jax.jit(lambda k, x: model.apply(
      model.init(k, x), x, train=True, capture_intermediates=True,
      mutable=["batch_stats", "intermediates"]))(key(0), X)
  inter = state["intermediates"]
  names = BLOCKS[cls]
  inputs = [inter["stem_bn"]["__call__"][0]] + [inter[n]["__call__"][0]
                                                 for n in names[:-1]]
  # A block's input is the previous output (before its activation for the stem).
  inputs[0] = np_relu(inputs[0])
  for name, x in zip(names, inputs):
    block = inter[name]
    shortcut = block["proj_bn"]["__call__"][0] if "proj_bn" in block else x
    yield name, np.asarray(block["__call__"][0]), np.asarray(shortcut)


@pytest.mark.parametrize("cls,normalization", [(TinyBottleneck, "batch"),
                                               (TinyBasic, "group")])
def test_zero_init_makes_every_residual_block_relu_of_its_shortcut(cls,
                                                                   normalization):
  seen = 0
  for name, out, shortcut in _blocks_in_and_out(
      cls, zero_init_last_bn=True, normalization=normalization, norm_groups=2):
    np.testing.assert_allclose(out, np_relu(shortcut), atol=1e-6, err_msg=name)
    seen += 1
  assert seen == len(BLOCKS[cls])


def test_without_zero_init_blocks_are_not_the_identity():
  for name, out, shortcut in _blocks_in_and_out(TinyBasic):
    assert np.abs(out - np_relu(shortcut)).max() > 1e-2, name


# --- options through the registry ----------------------------------------------

@pytest.mark.parametrize("option,value,field", [
    ("activation", "tanh", "model.activation"),
    ("normalization", "batchnorm", "model.normalization"),
    ("norm_groups", 3, "model.norm_groups"),
    ("kernel_init", "xavier", "model.kernel_init"),
    ("drop_path_rate", 1.0, "model.drop_path_rate"),
    ("dropout_rate", -0.1, "model.dropout_rate"),
])
def test_bad_resnet_option_is_a_config_error_naming_the_field(option, value, field):
  kwargs = {"normalization": "group", "norm_groups": 4, option: value}
  with pytest.raises(ConfigError) as e:
    get_model("resnet18", num_classes=3, width=8, **kwargs)
  assert e.value.field == field


@pytest.mark.parametrize("name,option,value", [
    ("cnn", "activation", "tanh"), ("cnn", "kernel_init", "he"),
    ("vit", "activation", "relu6"), ("vit", "drop_path_rate", 1.5)])
def test_cnn_and_vit_options_are_validated(name, option, value):
  with pytest.raises(ConfigError) as e:
    get_model(name, num_classes=3, **{option: value})
  assert e.value.field == f"model.{option}"


def test_vit_drop_path_and_activation_train_and_evaluate():
  options = dict(num_classes=3, patch_size=4, width=16, depth=2, num_heads=2,
                 mlp_dim=32, activation="prelu")
  model = get_model("vit", drop_path_rate=0.5, **options)
  plain = get_model("vit", **options)
  x = X[:, :, :, :1]

  @jax.jit
  def run(k):
    variables = nn.meta.unbox(model.init(k, x))
    # The head starts at zero (all logits 0): give it weights to see the blocks.
    variables["params"]["head"]["kernel"] = jax.random.normal(k, (16, 3))
    train = [model.apply(variables, x, train=True, rngs={"dropout": key(s)})
             for s in (1, 2)]
    return (variables["params"]["block0"]["mlp"], train,
            model.apply(variables, x), plain.apply(variables, x))

  mlp, (train1, train2), evaluated, without = run(key(0))
  assert mlp["act"]["negative_slope"].shape == (32,)
  assert not np.allclose(train1, train2)
  np.testing.assert_array_equal(evaluated, without)
