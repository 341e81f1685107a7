"""ResNet v1.5 (He et al. 2015, arXiv:1512.03385) with grouped batch norm.

v1.5 is the variant of the NVIDIA DeepLearningExamples and MLPerf reference
implementations: in a downsampling bottleneck the stride sits on the 3x3 convolution,
not on the first 1x1 (v1), which is about 0.5% more accurate on ImageNet. Basic-block
networks (18, 34) are the same in both versions. Parameter counts equal torchvision's.

Details follow the MLPerf/TPU reference: He-normal convolution kernels (He et al.
2015, arXiv:1502.01852, fan-out as torchvision), symmetric padding on strided
convolutions, projection shortcuts (1x1 conv + BN) where shape changes, N(0, 0.01)
head, batch norm with momentum 0.9 and epsilon 1e-5 over groups of replicas
(`DistributedBatchNorm`), optionally zero-initialised last BN scale of each block
(Goyal et al. 2017, arXiv:1706.02677). ``small_inputs=True`` swaps the ImageNet stem
(7x7/2 conv + 3x3/2 max-pool) for a 3x3/1 conv, for 32x32 CIFAR-style images.

Options beyond the reference (defaults give exactly the variables above):
``activation`` (`jaxtrain.models.activations`), ``normalization`` (batch, layer,
group, instance: `jaxtrain.models.norms`; the layers keep the names ``bn1``,
``stem_bn``, ... whatever their kind, so parameter paths do not depend on it),
``kernel_init`` of the convolutions (`jaxtrain.models.initializers`), dropout before
the head, and stochastic depth on the residual branches with a rate linear in depth
(`jaxtrain.models.drop_path`).

``impl`` picks how the same math is written (`jaxtrain.precision`): ``fused`` (the
``auto`` choice on CPU) computes 1x1 convolutions as channel matmuls
(`jaxtrain.models.cpu_ops.PointwiseConv`), differentiates the stem's max-pool
without a scatter (`cpu_ops.max_pool`) and uses the fused batch norm; the
variables are the same as with ``reference`` (`nn.Conv` everywhere).
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxtrain import precision
from jaxtrain.errors import ConfigError
from jaxtrain.models import activations, cpu_ops, drop_path, initializers, norms
from jaxtrain.models.registry import (
    CLASSES, CONV_KERNEL, EMBED, NORM, constrain_batch, register)

DEFAULT_KERNEL_INIT = "he_normal_fan_out"  # MLPerf / torchvision


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any,
          param_dtype: Any, impl: str = "reference",
          kernel_init: str = DEFAULT_KERNEL_INIT) -> nn.Module:
  """Bias-free conv with torchvision/MLPerf symmetric padding (kernel // 2).

  With ``impl="fused"`` a 1x1 conv is a `PointwiseConv` (same kernel variable).
  Larger kernels stay `nn.Conv`: XLA:CPU's convolutions beat im2col + matmul there.
  """
  init = nn.with_logical_partitioning(initializers.get(kernel_init), CONV_KERNEL)
  if kernel == 1 and impl == "fused":
    return cpu_ops.PointwiseConv(features, stride, dtype=dtype,
                                 param_dtype=param_dtype, kernel_init=init,
                                 name=name)
  pad = kernel // 2
  return precision.Conv(features, (kernel, kernel), (stride, stride),
                        padding=((pad, pad), (pad, pad)), use_bias=False,
                        dtype=dtype, param_dtype=param_dtype, kernel_init=init,
                        name=name)


class _Block(nn.Module):
  """Shared fields of the residual blocks; `norm` builds their normalization layers.

  The residual branch passes through `DropPath(drop_path_rate)` before the sum.
  """
  filters: int
  stride: int
  norm: Any
  zero_init_last_bn: bool
  dtype: Any
  param_dtype: Any
  impl: str = "reference"  # resolved: "reference" | "fused"
  activation: str = "relu"
  kernel_init: str = DEFAULT_KERNEL_INIT
  drop_path_rate: float = 0.0
  deterministic: bool = True

  def conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Module:
    return _conv(features, kernel, stride, name, self.dtype, self.param_dtype,
                 self.impl, self.kernel_init)

  def act(self, x: jax.Array, name: str) -> jax.Array:
    return activations.apply(self.activation, x, name,
                             param_dtype=self.param_dtype)

  def merge(self, branch: jax.Array, shortcut: jax.Array) -> jax.Array:
    """act(shortcut + DropPath(branch)): the block's output."""
    if self.drop_path_rate:
      branch = drop_path.DropPath(self.drop_path_rate, self.deterministic,
                                  name="drop_path")(branch)
    return self.act(branch + shortcut, "act_out")

  def last_norm(self, name: str) -> nn.Module:
    scale = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    return self.norm(
        scale_init=nn.with_logical_partitioning(scale, NORM), name=name)

  def shortcut(self, x: jax.Array, out_features: int) -> jax.Array:
    """Identity, or 1x1 conv (stride) + BN when the shape changes."""
    if self.stride == 1 and x.shape[-1] == out_features:
      return x
    x = self.conv(out_features, 1, self.stride, "proj_conv")(x)
    return self.norm(name="proj_bn")(x)


class BasicBlock(_Block):
  """3x3 (stride) -> norm -> act -> 3x3 -> norm, + shortcut, act; ResNet-18/34."""
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.norm(name="bn1")(self.conv(self.filters, 3, self.stride,
                                                 "conv1")(x)), "act1")
    y = self.last_norm("bn2")(self.conv(self.filters, 3, 1, "conv2")(y))
    return self.merge(y, self.shortcut(x, self.filters))


class BottleneckBlock(_Block):
  """1x1 -> 3x3 (stride, v1.5) -> 1x1 (4x filters), each normed, + shortcut, act."""
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.norm(name="bn1")(self.conv(self.filters, 1, 1, "conv1")(x)),
                 "act1")
    y = self.act(self.norm(name="bn2")(self.conv(self.filters, 3, self.stride,
                                                 "conv2")(y)), "act2")
    out = self.filters * self.expansion
    y = self.last_norm("bn3")(self.conv(out, 1, 1, "conv3")(y))
    return self.merge(y, self.shortcut(x, out))


class ResNet(nn.Module):
  """ResNet v1.5 classifier; subclasses fix the depth (`ResNet50`, ...).

  Attributes:
    num_classes: size of the logits.
    small_inputs: 3x3/1 stem without max-pool (CIFAR-size images) instead of the
      ImageNet 7x7/2 conv + 3x3/2 max-pool.
    width: channels of the stem and of the first stage (doubling per stage).
    bn_group_size: replicas sharing BN statistics (None = all replicas).
    bn_momentum, bn_epsilon: batch-norm running-average decay and epsilon.
    zero_init_last_bn: start each residual branch at zero (last norm's scale 0),
      so every block starts as act(shortcut) (Goyal et al. 2017, Sec. 5.1).
    dtype: compute dtype; the logits are float32 whatever it is.
    param_dtype: parameter dtype.
    impl: op formulation, "auto" (fused on CPU), "reference" or "fused"; same
      variables either way (see the module docstring).
    activation: `activations.ACTIVATIONS` name, after every norm but the last of
      a block and after each residual sum.
    normalization: "batch" | "layer" | "group" | "instance" (`norms`); the bn_*
      options apply to batch norm only.
    norm_groups: channel groups of group norm (32 in Wu & He 2018); must divide
      `width`.
    kernel_init: `initializers.INITIALIZERS` name of the convolution kernels (the
      head keeps N(0, 0.01)).
    dropout_rate: dropout on the pooled features before the head (train only).
    drop_path_rate: stochastic depth rate of the last block; block l of L drops
      its residual branch at rate * l / L (train only, "dropout" rng).

  Apply with ``train=True, mutable=["batch_stats"]`` to train, ``train=False`` to
  evaluate with the running statistics.
  """
  stage_sizes: ClassVar[Sequence[int]] = ()
  block_cls: ClassVar[type[_Block]] = BottleneckBlock
  # Options read only when another one says so (jaxtrain.unread_fields).
  UNREAD_UNLESS: ClassVar[dict[str, tuple[str, tuple[Any, ...]]]] = {
      **{f: ("normalization", ("batch",))
         for f in ("bn_group_size", "bn_momentum", "bn_epsilon")},
      "norm_groups": ("normalization", ("group",))}

  num_classes: int
  small_inputs: bool = False
  width: int = 64
  bn_group_size: int | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  impl: str = "auto"
  activation: str = "relu"
  normalization: str = "batch"
  norm_groups: int = 32
  kernel_init: str = DEFAULT_KERNEL_INIT
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0

  def __post_init__(self) -> None:
    # Bad options fail at construction, before anything is traced or compiled.
    precision.resolve_impl(self.impl, "cpu")
    activations.check(self.activation)
    norms.check(self.normalization, self.norm_groups, self.width)
    initializers.check(self.kernel_init)
    drop_path.check_rate(self.dropout_rate, "model.dropout_rate")
    drop_path.check_rate(self.drop_path_rate, "model.drop_path_rate")
    if self.zero_init_last_bn not in (True, False):
      raise ConfigError("model.zero_init_last_bn", self.zero_init_last_bn,
                        "use true or false")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps a (B, H, W, C) batch to (B, num_classes) float32 logits."""
    if not self.stage_sizes:
      raise TypeError("ResNet is a base class; use ResNet18, ..., ResNet152")
    impl = precision.resolve_impl(self.impl)
    norm = norms.make(
        self.normalization, train=train, epsilon=self.bn_epsilon, dtype=self.dtype,
        param_dtype=self.param_dtype, bn_momentum=self.bn_momentum,
        bn_group_size=self.bn_group_size, num_groups=self.norm_groups, impl=impl)
    x = constrain_batch(jnp.asarray(x, self.dtype))
    x = self._stem(x, norm, impl)
    rates = iter(drop_path.drop_path_rates(self.drop_path_rate,
                                           sum(self.stage_sizes)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(
            self.width * 2**stage, stride, norm, self.zero_init_last_bn,
            self.dtype, self.param_dtype, impl, self.activation, self.kernel_init,
            next(rates), not train, name=f"stage{stage + 1}_block{block}")(x)
    x = constrain_batch(jnp.mean(x, axis=(1, 2)))
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = precision.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.01), (EMBED, CLASSES)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (CLASSES,)),
        name="head")(x)
    return logits.astype(jnp.float32)

  def _stem(self, x: jax.Array, norm: Any, impl: str) -> jax.Array:
    size, stride = (3, 1) if self.small_inputs else (7, 2)
    x = _conv(self.width, size, stride, "stem_conv", self.dtype, self.param_dtype,
              kernel_init=self.kernel_init)(x)
    x = activations.apply(self.activation, norm(name="stem_bn")(x), "stem_act",
                          param_dtype=self.param_dtype)
    if self.small_inputs:
      return x
    if impl == "fused":
      return cpu_ops.max_pool(x, 3, 2, 1)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@register("resnet18")
class ResNet18(ResNet):
  """ResNet-18: basic blocks (2, 2, 2, 2); 11,689,512 params at 1000 classes."""
  stage_sizes: ClassVar[Sequence[int]] = (2, 2, 2, 2)
  block_cls: ClassVar[type[_Block]] = BasicBlock


@register("resnet34")
class ResNet34(ResNet):
  """ResNet-34: basic blocks (3, 4, 6, 3); 21,797,672 params at 1000 classes."""
  stage_sizes: ClassVar[Sequence[int]] = (3, 4, 6, 3)
  block_cls: ClassVar[type[_Block]] = BasicBlock


@register("resnet50")
class ResNet50(ResNet):
  """ResNet-50 v1.5: bottlenecks (3, 4, 6, 3); 25,557,032 params at 1000 classes."""
  stage_sizes: ClassVar[Sequence[int]] = (3, 4, 6, 3)


@register("resnet101")
class ResNet101(ResNet):
  """ResNet-101 v1.5: bottlenecks (3, 4, 23, 3); 44,549,160 params at 1000 classes."""
  stage_sizes: ClassVar[Sequence[int]] = (3, 4, 23, 3)


@register("resnet152")
class ResNet152(ResNet):
  """ResNet-152 v1.5: bottlenecks (3, 8, 36, 3); 60,192,808 params at 1000 classes."""
  stage_sizes: ClassVar[Sequence[int]] = (3, 8, 36, 3)
