"""The CIFAR residual networks of the lectures' tables: ResNet-6n+2 and WRN-d-k.

`CifarResNet` ("cifar_resnet") is the CIFAR-10 network of He et al. 2015 ("Deep
Residual Learning for Image Recognition", arXiv 1512.03385, section 4.2): a 3x3 conv
of 16 channels, three stages of n basic blocks with 16, 32 and 64 channels (stride 2
at the first block of stages 2 and 3), global average pooling and a dense head; depth
6n + 2 (20, 32, 44, 56, 110). Shortcuts are the paper's option A: identity, and where
the shape changes the input subsampled by 2 with its extra channels zero-padded, so
the network has no projection parameters (ResNet-20: 0.27M parameters).

`WideResNet` ("wide_resnet") is WRN-d-k of Zagoruyko & Komodakis 2016 ("Wide Residual
Networks", arXiv 1605.07146): pre-activation basic blocks (He et al. 2016, arXiv
1603.05027: BN -> ReLU -> 3x3 conv, twice, dropout between the convolutions) with
16k, 32k and 64k channels, (d - 4) / 6 blocks per stage, a 1x1 projection shortcut
taken from the pre-activated input where the shape changes (as the authors' code),
and a final BN -> ReLU before pooling. WRN-28-10 has 36.5M parameters.

Both initialise convolutions He-normal over fan-out (the authors' MSR init) and use
`DistributedBatchNorm` (momentum 0.9 = PyTorch's 0.1, epsilon 1e-5).
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxtrain.errors import ConfigError
from jaxtrain import precision
from jaxtrain.models.registry import (
    CLASSES, CONV_KERNEL, EMBED, NORM, constrain_batch, register)
from jaxtrain.parallel.batchnorm import DistributedBatchNorm

_he_fan_out = nn.with_logical_partitioning(
    nn.initializers.variance_scaling(2.0, "fan_out", "normal"), CONV_KERNEL)


def _conv(features: int, kernel: int, stride: int, dtype: Any, param_dtype: Any,
          name: str) -> nn.Conv:
  pad = kernel // 2
  return precision.Conv(features, (kernel, kernel), (stride, stride),
                        padding=((pad, pad), (pad, pad)), use_bias=False,
                        dtype=dtype, param_dtype=param_dtype,
                        kernel_init=_he_fan_out, name=name)


def _norm(train: bool, group_size: int | None, dtype: Any, param_dtype: Any):
  return functools.partial(
      DistributedBatchNorm, use_running_average=not train, momentum=0.9,
      epsilon=1e-5, group_size=group_size, dtype=dtype, param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, NORM),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, NORM))


def _head(x: jax.Array, num_classes: int, dtype: Any, param_dtype: Any) -> jax.Array:
  x = constrain_batch(jnp.mean(x, axis=(1, 2)))
  logits = precision.Dense(
      num_classes, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (EMBED, CLASSES)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (CLASSES,)),
      name="head")(x)
  return logits.astype(jnp.float32)


def _check_depth(model: str, depth: int, extra: int, examples: str) -> None:
  """Three stages of n blocks of two layers, plus `extra` layers: 6n + extra."""
  if (depth - extra) % 6 or depth < 6 + extra:
    raise ConfigError("model.depth", depth, f"{model} depth {depth} is not "
                      f"6n + {extra} (n >= 1); use e.g. {examples}")


def option_a_shortcut(x: jax.Array, features: int, stride: int) -> jax.Array:
  """He et al. 2015 option A: subsample by `stride`, zero-pad the new channels."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = features - x.shape[-1]
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


class _CifarNet(nn.Module):
  """What the CIFAR networks share: fields, the depth check, norm and conv layers."""
  num_classes: int
  depth: int
  bn_group_size: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  DEPTH_RULE: ClassVar[tuple[str, int, str]] = ("", 0, "")  # name, extra, examples

  def __post_init__(self) -> None:
    _check_depth(self.DEPTH_RULE[0], self.depth, *self.DEPTH_RULE[1:])
    super().__post_init__()

  def _layers(self, train: bool, x: jax.Array) -> tuple[Any, Any, jax.Array]:
    """(norm, conv, x as the compute dtype with its batch sharding)."""
    norm = _norm(train, self.bn_group_size, self.dtype, self.param_dtype)
    conv = functools.partial(_conv, dtype=self.dtype, param_dtype=self.param_dtype)
    return norm, conv, constrain_batch(jnp.asarray(x, self.dtype))


@register("cifar_resnet")
class CifarResNet(_CifarNet):
  """ResNet-(6n+2) for 32x32 images (He et al. 2015, section 4.2).

  Attributes:
    num_classes: size of the logits.
    depth: 6n + 2 for n basic blocks per stage: 20, 32, 44, 56, 110, ...
    bn_group_size: replicas sharing BN statistics (None = all replicas).
    dtype: compute dtype (logits are float32); param_dtype: parameter dtype.
  """
  depth: int = 20
  DEPTH_RULE: ClassVar[tuple[str, int, str]] = ("cifar_resnet", 2,
                                                "20, 32, 44, 56 or 110")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm, conv, x = self._layers(train, x)
    x = nn.relu(norm(name="stem_bn")(conv(16, 3, 1, name="stem_conv")(x)))
    for stage, features in enumerate((16, 32, 64)):
      for block in range((self.depth - 2) // 6):
        stride = 2 if stage > 0 and block == 0 else 1
        prefix = f"stage{stage + 1}_block{block}_"
        y = nn.relu(norm(name=prefix + "bn1")(
            conv(features, 3, stride, name=prefix + "conv1")(x)))
        y = norm(name=prefix + "bn2")(conv(features, 3, 1, name=prefix + "conv2")(y))
        x = nn.relu(y + option_a_shortcut(x, features, stride))
    return _head(x, self.num_classes, self.dtype, self.param_dtype)


@register("wide_resnet")
class WideResNet(_CifarNet):
  """WRN-depth-widen_factor (Zagoruyko & Komodakis 2016), pre-activation blocks.

  Attributes:
    num_classes: size of the logits.
    depth: 6n + 4 for n blocks per stage (28 -> 4 blocks).
    widen_factor: k; stage widths 16k, 32k, 64k.
    dropout_rate: dropout between a block's two convolutions (paper: 0.3 on CIFAR);
      train only, needs a "dropout" rng.
    bn_group_size: replicas sharing BN statistics (None = all replicas).
    dtype: compute dtype (logits are float32); param_dtype: parameter dtype.
  """
  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0
  DEPTH_RULE: ClassVar[tuple[str, int, str]] = ("wide_resnet", 4, "16, 22, 28 or 40")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm, conv, x = self._layers(train, x)
    x = conv(16, 3, 1, name="stem_conv")(x)
    for stage, base in enumerate((16, 32, 64)):
      features = base * self.widen_factor
      for block in range((self.depth - 4) // 6):
        stride = 2 if stage > 0 and block == 0 else 1
        prefix = f"stage{stage + 1}_block{block}_"
        pre = nn.relu(norm(name=prefix + "bn1")(x))
        y = conv(features, 3, stride, name=prefix + "conv1")(pre)
        y = nn.relu(norm(name=prefix + "bn2")(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = conv(features, 3, 1, name=prefix + "conv2")(y)
        if stride != 1 or x.shape[-1] != features:
          x = conv(features, 1, stride, name=prefix + "proj_conv")(pre)
        x = x + y
    x = nn.relu(norm(name="final_bn")(x))
    return _head(x, self.num_classes, self.dtype, self.param_dtype)
