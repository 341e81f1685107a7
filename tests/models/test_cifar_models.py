"""CIFAR ResNet-(6n+2) (He et al. 2015, sec. 4.2) and WRN-d-k (Zagoruyko & Komodakis 2016)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import models
from jaxtrain.models.cifar import option_a_shortcut


def _param_count(name, **kwargs):
  model = models.get_model(name, num_classes=10, **kwargs)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))
  return sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes)["params"]))


def _bn(c):
  return 2 * c


def _cifar_resnet_count(depth, classes=10):
  # Section 4.2: 3x3 conv(16); 3 stages x n blocks of two 3x3 convs + BN; option A
  # shortcuts (no parameters); dense head.
  n, total, c_in = (depth - 2) // 6, 9 * 3 * 16 + _bn(16), 16
  for c in (16, 32, 64):
    for _ in range(n):
      total += 9 * c_in * c + _bn(c) + 9 * c * c + _bn(c)
      c_in = c
  return total + 64 * classes + classes


def _wrn_count(depth, k, classes=10):
  # WRN-d-k: conv(16); per block BN(in), 3x3 conv, BN, 3x3 conv, 1x1 projection when
  # the width changes; final BN; dense head.
  n, total, c_in = (depth - 4) // 6, 9 * 3 * 16, 16
  for c in (16 * k, 32 * k, 64 * k):
    for _ in range(n):
      total += _bn(c_in) + 9 * c_in * c + _bn(c) + 9 * c * c
      total += c_in * c if c_in != c else 0
      c_in = c
  return total + _bn(c_in) + c_in * classes + classes


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_resnet_parameter_count_follows_the_paper(depth):
  assert _param_count("cifar_resnet", depth=depth) == _cifar_resnet_count(depth)


def test_resnet20_has_the_cited_0_27m_and_wrn_28_10_the_cited_36_5m_parameters():
  assert round(_param_count("cifar_resnet", depth=20) / 1e6, 2) == 0.27
  assert _param_count("wide_resnet", depth=28, widen_factor=10) == _wrn_count(28, 10)
  assert round(_wrn_count(28, 10) / 1e6, 1) == 36.5


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
  y = np.asarray(option_a_shortcut(jnp.asarray(x), 32, 2))
  assert y.shape == (2, 4, 4, 32)
  np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
  assert not y[..., :8].any() and not y[..., 24:].any()


def test_wide_resnet_dropout_acts_in_training_only():
  model = models.get_model("wide_resnet", num_classes=10, depth=10, widen_factor=1,
                           dropout_rate=0.5)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  evals = [model.apply(variables, x, train=False) for _ in range(2)]
  np.testing.assert_array_equal(evals[0], evals[1])
  train = [model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(s)})[0] for s in (1, 2)]
  assert not np.allclose(train[0], train[1])


@pytest.mark.parametrize("name,depth", [("cifar_resnet", 21), ("wide_resnet", 27)])
def test_depth_that_is_not_a_whole_number_of_blocks_is_refused(name, depth):
  with pytest.raises(ValueError, match=f"depth {depth}"):
    models.get_model(name, num_classes=10, depth=depth)
