"""Dtype and op-formulation policy.

Dtypes: parameters float32, compute in `compute_dtype`, outputs float32. Mixed
precision as in Micikevicius et al. 2017 (arXiv 1710.03740) with bfloat16, which needs
no loss scaling (Kalamkar et al. 2019, arXiv 1905.12322): parameters, optimizer state,
logits, loss and batch-norm statistics stay float32.

Gradients are reduced across replicas in float32. Under `jit` the partitioner
inserts the cross-replica all-reduce (or reduce-scatter) right after the op that
contracts the batch, in that op's output dtype: with `flax.linen.Dense` /
`flax.linen.Conv` at `dtype=bfloat16` that is the bfloat16 weight-gradient dot or
convolution, before the cast's gradient turns it into float32, so the sum over
replicas runs in bfloat16 (jax-ml/jax#27496). Casting the parameters elsewhere does
not move it. `Dense` and `Conv` below (same variables as flax's) compute the weight
gradient with a float32 result instead, as in the TPU reference (TF
`bfloat16_scope` variables are float32 and `CrossShardOptimizer` sums their float32
gradients) and in Flax's `pmap` ImageNet example (`lax.pmean` of float32 gradients).
Why: summing 1024 replicas' gradients (signal/noise 0.03 to 1, numpy simulation)
rounded to bfloat16 after each addition is off by 0.3-0.5% (pairwise order) to
3-34% (sequential, ring order); in float32 by < 1e-6. The price is twice the bytes
(ResNet-50 on v4:8x8x16: 48.6 MiB of bfloat16 -> 98.1 MiB of float32 all-reduced per
step), not FLOPs: XLA:TPU folds the widening converts, so the weight-gradient
convolutions take bfloat16 operands and give float32 results. Biases are added in
float32 for the same reason, then the output is cast to the compute dtype. Other
parameters that meet bfloat16 activations should do the same: combine in float32,
then cast.

Op formulation (`impl`): the same model math written two ways, with the same
variables. ``reference`` is the textbook form (`nn.Conv` everywhere, batch norm
differentiated by autodiff); ``fused`` is the form XLA:CPU runs fast (1x1 convolutions
as matmuls, batch norm with one-pass moments and a hand-written two-pass gradient;
`jaxtrain.models.cpu_ops`, `jaxtrain.parallel.batchnorm`). ``auto`` picks ``fused``
on CPU and ``reference`` elsewhere. Models resolve it at trace time, so it never
reaches checkpoints.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as flax_dtypes

from jaxtrain.errors import ConfigError

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
IMPLS = ("auto", "reference", "fused")


@dataclasses.dataclass(frozen=True)
class Policy:
  """Dtypes of a run: float32 parameters and outputs, compute in `compute_dtype`.

  Attributes:
    param_dtype: dtype parameters and optimizer state are stored in.
    compute_dtype: dtype of activations and matmul/conv inputs.
    output_dtype: dtype of logits and loss (float32).
    impl: the resolved op formulation, ``reference`` or ``fused`` (CPU).
  """
  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: jnp.dtype = jnp.float32
  output_dtype: jnp.dtype = jnp.float32
  impl: str = "reference"  # resolved op formulation: "reference" | "fused"


def active_platform() -> str:
  """Platform of the active mesh's devices (`jax.set_mesh`), else the default backend.

  The mesh wins so that compiling ahead of time for another platform (a TPU topology
  from a CPU host) picks that platform's formulation.
  """
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  platform = getattr(device, "platform", None)
  return platform or jax.default_backend()


def resolve_impl(impl: str, platform: str | None = None, *,
                 field: str = "model.impl") -> str:
  """`auto` is `fused` on CPU and `reference` elsewhere; other values pass through.

  Raises:
    ConfigError: `impl` is not one of `IMPLS` (named as `field`).
  """
  if impl not in IMPLS:
    raise ConfigError(field, impl, "not a known op formulation", choices=IMPLS)
  if impl != "auto":
    return impl
  return "fused" if (platform or active_platform()) == "cpu" else "reference"


def make_policy(compute_dtype: str, platform: str | None = None,
                impl: str = "auto") -> Policy:
  """The policy for `compute_dtype` on `platform`.

  Args:
    compute_dtype: ``auto`` (bfloat16 on TPU/GPU, float32 on CPU, where bfloat16
      is slower), ``bfloat16`` or ``float32``.
    platform: ``cpu``, ``gpu`` or ``tpu`` (default: JAX's default backend).
    impl: op formulation, ``auto`` (``fused`` on CPU), ``reference`` or ``fused``.

  Returns:
    The `Policy`: float32 params and outputs, the compute dtype, the impl.
  """
  platform = platform or jax.default_backend()
  if compute_dtype == "auto":
    compute_dtype = "float32" if platform == "cpu" else "bfloat16"
  if compute_dtype not in _DTYPES:
    raise ConfigError("precision.compute_dtype", compute_dtype, "not a known dtype",
                      choices=("auto", *_DTYPES))
  return Policy(compute_dtype=_DTYPES[compute_dtype],
                impl=resolve_impl(impl, platform, field="precision.impl"))


def _float32_weight_grad(op: Callable[[jax.Array, jax.Array], jax.Array]
                         ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`op(x, w)` computed in x's dtype, differentiated with w's cotangent in w's dtype.

  `op` is linear in each argument (a dot or a convolution). Forward and input
  gradient are what autodiff gives for `op(x, w.astype(x.dtype))`. The weight
  gradient is the same contraction over the batch with operands widened to w's
  dtype, so its result, which the partitioner reduces across replicas, is float32;
  XLA folds the exact widening converts into the op (bfloat16 operands, float32
  accumulation and result: what the MXU computes anyway).
  """

  @jax.custom_vjp
  def apply(x, w):
    return op(x, w.astype(x.dtype))

  def fwd(x, w):
    return apply(x, w), (x, w)

  def bwd(res, g):
    x, w = res
    dx = jax.linear_transpose(lambda x_: op(x_, w.astype(x.dtype)), x)(g)[0]
    wide = x.astype(w.dtype)
    dw = jax.linear_transpose(lambda w_: op(wide, w_), w)(g.astype(w.dtype))[0]
    return dx, dw

  apply.defvjp(fwd, bwd)
  return apply


def _with_weight_grad_dtype(op: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`op(lhs, rhs, *args, **kwargs)` with `rhs` (the weight) kept in its dtype."""

  @functools.wraps(op)
  def wrapped(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    bound = lambda x, w: op(x, w, *args, **kwargs)  # noqa: E731
    if lhs.dtype == rhs.dtype:  # float32 compute: exactly the plain op
      return bound(lhs, rhs)
    return _float32_weight_grad(bound)(lhs, rhs)

  return wrapped


dot_general = _with_weight_grad_dtype(jax.lax.dot_general)
conv_general_dilated = _with_weight_grad_dtype(jax.lax.conv_general_dilated)


def einsum(equation: str, x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
  """``jnp.einsum(equation, x, kernel)`` in `dtype`, the kernel's gradient in its dtype.

  For layers that hold their own kernel: pass it uncast, as `Dense` does.
  """
  op = _with_weight_grad_dtype(functools.partial(jnp.einsum, equation))
  return op(jnp.asarray(x, dtype), kernel)


def promote_inputs(*args: Any, dtype: Any = None, inexact: bool = True) -> list[Any]:
  """flax's `promote_dtype` for `Dense`/`Conv`: casts the input, not the parameters.

  The kernel stays in its (float32) dtype for `dot_general` / `conv_general_dilated`
  to cast; the bias stays float32 and is added before the output cast.
  """
  if dtype is None:
    return flax_dtypes.promote_dtype(*args, dtype=None, inexact=inexact)
  inputs, *params = args
  return [jnp.asarray(inputs, dtype), *params]


class Dense(nn.Dense):
  """`flax.linen.Dense` whose kernel and bias gradients are float32 (module docstring).

  Same variables and, at float32, the same values; output in `dtype`.
  """
  promote_dtype: Any = promote_inputs
  dot_general: Any = dot_general

  def __call__(self, inputs: jax.Array) -> jax.Array:
    y = super().__call__(inputs)
    return y if self.dtype is None else y.astype(self.dtype)


class Conv(nn.Conv):
  """`flax.linen.Conv` whose kernel and bias gradients are float32 (module docstring).

  Same variables and, at float32, the same values; output in `dtype`.
  """
  promote_dtype: Any = promote_inputs
  conv_general_dilated: Any = conv_general_dilated

  def __call__(self, inputs: jax.Array) -> jax.Array:
    y = super().__call__(inputs)
    return y if self.dtype is None else y.astype(self.dtype)
