"""Vision Transformer (Dosovitskiy et al. 2020, arXiv 2010.11929), tensor-parallel.

The image is cut into non-overlapping ``patch_size`` x ``patch_size`` patches, each
flattened and linearly projected to ``width`` (the paper's "patch embedding"), plus
learned 1-D position embeddings; then ``depth`` pre-LayerNorm encoder blocks
(multi-head self-attention and a GELU MLP, each residual), a final LayerNorm, mean
pooling over tokens and a zero-initialised linear head. Mean pooling instead of a class
token follows "Better plain ViT baselines" (Beyer et al. 2022, arXiv 2205.01580): as
accurate and one fewer special case.

Logical axes make it the model to exercise Megatron-LM tensor parallelism (Shoeybi et
al. 2019, arXiv 1909.08053): the fused Q/K/V kernel is column-parallel over ``heads``
(``(embed, None, heads, kv)``) and the attention output kernel row-parallel
(``(heads, kv, embed)``); the MLP's first kernel is column-parallel over ``mlp``
(``(embed, mlp)``) and its second row-parallel (``(mlp, embed)``). With the rules
``("heads", "model"), ("mlp", "model")`` each block then needs one all-reduce of the
residual stream in attention and one in the MLP, forward and backward. ``("embed",
"fsdp")`` shards every kernel over ``fsdp`` as well (ZeRO-3 / FSDP, Rajbhandari et al.
2019, arXiv 1910.02054). Activations are constrained to ``(batch, length, embed)``,
``(batch, length, heads, kv)`` and ``(batch, length, mlp)``: rules are applied in
order, so with ``batch`` first the residual stream never shards ``embed`` over an
axis the batch already uses.

Precision: matmuls in ``dtype``; LayerNorm statistics, the attention softmax, the
pooled features and the head in float32, so the logits are float32 and bfloat16
only rounds the matmul inputs (Micikevicius et al. 2017, arXiv 1710.03740).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxtrain import precision
from jaxtrain.models import activations, drop_path
from jaxtrain.models.registry import (
    BATCH, CLASSES, EMBED, MLP_HIDDEN, NORM, register)

# Logical names only a Transformer has (the rest come from the registry).
HEADS, KV, LENGTH = "heads", "kv", "length"

# Xavier-uniform kernels, near-zero MLP biases, zero head: the paper's (and
# big_vision's) initialisation.
_kernel_init = nn.initializers.xavier_uniform()


def _param(init: Any, names: tuple[str | None, ...]) -> Any:
  return nn.with_logical_partitioning(init, names)


def _constrain(x: jax.Array, *names: str) -> jax.Array:
  """Names every axis of an activation; a no-op unless rules and a mesh are active."""
  return nn.with_logical_constraint(x, names)


def _layer_norm(dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
      scale_init=_param(nn.initializers.ones, NORM),
      bias_init=_param(nn.initializers.zeros, NORM), name=name)


class _Projection(nn.Module):
  """``einsum(equation, x, kernel) + bias`` with really-shaped, named parameters.

  `nn.DenseGeneral` initialises a multi-axis kernel flat and reshapes it, and that
  flat value fails the kernel's 3-axis logical constraint when rules and a mesh are
  active; here the kernel is created in its shape. Xavier fans are taken over
  `fan_in` / `fan_out` kernel axes (the others are independent projections).
  """
  equation: str
  kernel_shape: tuple[int, ...]
  kernel_names: tuple[str | None, ...]
  bias_names: tuple[str | None, ...]  # the kernel's trailing (output) axes
  fan_in: tuple[int, ...]
  fan_out: tuple[int, ...]
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch_axes = tuple(set(range(len(self.kernel_shape)))
                       - set(self.fan_in) - set(self.fan_out))
    init = nn.initializers.xavier_uniform(in_axis=self.fan_in, out_axis=self.fan_out,
                                          batch_axis=batch_axes)
    kernel = self.param("kernel", _param(init, self.kernel_names), self.kernel_shape,
                        self.param_dtype)
    bias_shape = self.kernel_shape[len(self.kernel_shape) - len(self.bias_names):]
    bias = self.param("bias", _param(nn.initializers.zeros, self.bias_names),
                      bias_shape, self.param_dtype)
    # Kernel and bias meet the activations in float32 (`jaxtrain.precision`).
    y = precision.einsum(self.equation, x, kernel, self.dtype)
    return (y + bias).astype(self.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention, softmax(QK^T / sqrt(d)) V with float32 logits.

  As Megatron-LM's attention: one fused Q/K/V kernel ``(embed, None, heads, kv)``
  (column-parallel; the unnamed axis of size 3 picks q, k or v) and an output kernel
  ``(heads, kv, embed)`` (row-parallel). Fused, the backward pass sums the three
  partial input gradients before its one all-reduce over ``model``; three separate
  projections cost three all-reduces where XLA does not reassociate them (XLA:CPU).
  """
  num_heads: int
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads "
                       f"{self.num_heads}")
    head_dim = width // self.num_heads
    qkv = _Projection("ble,ekhd->blkhd", (width, 3, self.num_heads, head_dim),
                      (EMBED, None, HEADS, KV), (None, HEADS, KV), (0,), (2, 3),
                      self.dtype, self.param_dtype, name="qkv")(x)
    q, k, v = (_constrain(qkv[:, :, i], BATCH, LENGTH, HEADS, KV) for i in range(3))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32) / jnp.sqrt(head_dim)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    y = _constrain(y, BATCH, LENGTH, HEADS, KV)
    return _Projection("blhd,hde->ble", (self.num_heads, head_dim, width),
                       (HEADS, KV, EMBED), (EMBED,), (0, 1), (2,), self.dtype,
                       self.param_dtype, name="out")(y)


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> act (GELU) -> dropout -> Dense(width): column-, row-parallel."""
  mlp_dim: int
  dropout_rate: float
  dtype: Any
  param_dtype: Any
  activation: str = "gelu_tanh"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    width = x.shape[-1]
    bias_init = nn.initializers.normal(1e-6)
    y = precision.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=_param(_kernel_init, (EMBED, MLP_HIDDEN)),
                        bias_init=_param(bias_init, (MLP_HIDDEN,)), name="fc1")(x)
    y = activations.apply(self.activation, y, "act", axis_names=(MLP_HIDDEN,),
                          param_dtype=self.param_dtype)
    y = _constrain(y, BATCH, LENGTH, MLP_HIDDEN)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return precision.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=_param(_kernel_init, (MLP_HIDDEN, EMBED)),
                           bias_init=_param(bias_init, (EMBED,)), name="fc2")(y)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)), dropout on each branch.

  Stochastic depth (``drop_path_rate``) drops each residual branch per example,
  after its dropout. ``deterministic`` is a field rather than a call argument so
  that `nn.remat` of the block needs no static arguments.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float
  deterministic: bool
  dtype: Any
  param_dtype: Any
  activation: str = "gelu_tanh"
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dropout = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)
    drop_branch = drop_path.DropPath(self.drop_path_rate, self.deterministic)
    drop = lambda y: drop_branch(dropout(y))  # noqa: E731
    y = _layer_norm(self.dtype, self.param_dtype, "ln_attn")(x)
    y = SelfAttention(self.num_heads, self.dtype, self.param_dtype, name="attn")(y)
    x = _constrain(x + drop(y), BATCH, LENGTH, EMBED)
    y = _layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                 self.activation, name="mlp")(y, self.deterministic)
    return _constrain(x + drop(y), BATCH, LENGTH, EMBED)


@register("vit")
class ViT(nn.Module):
  """ViT classifier: patches -> encoder blocks -> mean pool -> float32 logits.

  Attributes:
    num_classes: size of the logits.
    patch_size: side of the square patches; must divide the image height and width.
    width: token dimension (the paper's D).
    depth: number of encoder blocks.
    num_heads: attention heads; must divide `width`.
    mlp_dim: hidden units of each block's MLP (the paper uses 4 x width).
    dropout_rate: dropout on the embeddings, the MLP hidden units and both residual
      branches (train only; apply with ``rngs={"dropout": key}``).
    remat: recompute each block's activations in the backward pass (`nn.remat`)
      instead of storing them: less memory, same numbers, ~1/3 more compute.
    dtype: compute dtype of the matmuls; the logits are float32 whatever it is.
    param_dtype: parameter dtype.
    activation: the MLP's activation (`jaxtrain.models.activations`); default
      the tanh approximation of GELU, as Flax's and big_vision's ``nn.gelu``.
    drop_path_rate: stochastic depth rate of the last block, rate * l / depth for
      block l (`jaxtrain.models.drop_path`; DeiT, Touvron et al. 2020).
  """
  num_classes: int
  patch_size: int = 2
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  activation: str = "gelu_tanh"
  drop_path_rate: float = 0.0

  def __post_init__(self) -> None:
    activations.check(self.activation)
    drop_path.check_rate(self.dropout_rate, "model.dropout_rate")
    drop_path.check_rate(self.drop_path_rate, "model.drop_path_rate")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps a (B, H, W, C) batch to (B, num_classes) float32 logits."""
    x = self._embed(jnp.asarray(x, self.dtype))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    rates = drop_path.drop_path_rates(self.drop_path_rate, self.depth)
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_dim, self.dropout_rate, not train,
                    self.dtype, self.param_dtype, self.activation, rates[i],
                    name=f"block{i}")(x)
    x = _layer_norm(self.dtype, self.param_dtype, "ln_final")(x)
    # Pool and classify in float32: the logits are never rounded to bfloat16.
    pooled = _constrain(jnp.mean(x.astype(jnp.float32), axis=1), BATCH, EMBED)
    return precision.Dense(
        self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
        kernel_init=_param(nn.initializers.zeros, (EMBED, CLASSES)),
        bias_init=_param(nn.initializers.zeros, (CLASSES,)), name="head")(pooled)

  def _embed(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, N, width) patch embeddings plus position embeddings."""
    b, h, w, c = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"patch_size {p} must divide the image size {h}x{w}")
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = _constrain(patches.reshape(b, (h // p) * (w // p), p * p * c),
                         BATCH, LENGTH, None)
    # The flattened patch pixels (p*p*C) are too few to be worth sharding.
    x = precision.Dense(
        self.width, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=_param(nn.initializers.lecun_normal(), (None, EMBED)),
        bias_init=_param(nn.initializers.zeros, (EMBED,)),
        name="patch_embed")(patches)
    pos = self.param("pos_embed", _param(nn.initializers.normal(0.02),
                                         (None, None, EMBED)),
                     (1, x.shape[1], self.width), self.param_dtype)
    return _constrain((x + pos).astype(self.dtype), BATCH, LENGTH, EMBED)
