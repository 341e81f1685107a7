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

`precision.weight_grad_dtype=compute` gives PyTorch autocast's formulation instead:
weight gradients in the compute dtype, then cast (and summed across replicas in
it). On one H200 (`benchmarks/gpu_check.py`, 2026-12-04) that made the ResNet-50
step 1.33x faster, because XLA:GPU runs the float32-result weight-gradient
convolutions in float32. Float32-result *dots* are as fast as bfloat16 ones there
when their operands stay bfloat16 (the ViT-B/16 step: 1.26x faster than with
widened operands), so off the CPU the weight gradient of a dot is built that way
(`_narrow_operand_weight_grad`); XLA:CPU cannot run a bfloat16 x bfloat16 ->
float32 dot and keeps the widened form.

Op formulation (`impl`): the same model math written two ways, with the same
variables. ``reference`` is the textbook form (`nn.Conv` everywhere, batch norm
differentiated by autodiff); ``fused`` is the form XLA:CPU runs fast (1x1 convolutions
as matmuls, batch norm with one-pass moments and a hand-written two-pass gradient;
`jaxtrain.models.cpu_ops`, `jaxtrain.parallel.batchnorm`). ``auto`` picks ``fused``
on CPU and ``reference`` elsewhere. Models resolve it at trace time, so it never
reaches checkpoints.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes as flax_dtypes

from jaxtrain.config import WEIGHT_GRAD_DTYPES
from jaxtrain.errors import ConfigError

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
IMPLS = ("auto", "reference", "fused")
# How `Dense`/`Conv`/`einsum` weight gradients are traced; set by `weight_grads`
# around the train step's gradient (a trace-time choice, like the mesh).
_WEIGHT_GRADS = contextvars.ContextVar("jaxtrain_weight_grads", default="float32")


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


@contextlib.contextmanager
def weight_grads(dtype: str) -> Iterator[None]:
  """Traces weight gradients in ``float32`` (default) or the ``compute`` dtype.

  Args:
    dtype: ``float32``: float32 results, summed across replicas in float32 (module
      docstring); ``compute``: autocast's formulation, the weight gradient in the
      compute dtype, then cast to the parameter's dtype.

  Yields:
    Nothing; the layers traced inside use `dtype`.

  Raises:
    ConfigError: `dtype` is not one of `WEIGHT_GRAD_DTYPES`.
  """
  if dtype not in WEIGHT_GRAD_DTYPES:
    raise ConfigError("precision.weight_grad_dtype", dtype, "not a known weight-"
                      "gradient dtype", choices=WEIGHT_GRAD_DTYPES)
  token = _WEIGHT_GRADS.set(dtype)
  try:
    yield
  finally:
    _WEIGHT_GRADS.reset(token)


def _narrow_operand_weight_grad(op: Callable[[jax.Array, jax.Array], jax.Array],
                                x: jax.Array, w: jax.Array, g: jax.Array
                                ) -> jax.Array | None:
  """The weight gradient of a dot `op(x, w)` from compute-dtype operands, or None.

  JAX's own transpose rule of the dot, with ``preferred_element_type`` set to w's
  dtype: the operands stay in the compute dtype and the result is float32, the
  form XLA:TPU reaches by folding converts and XLA:GPU runs at the bfloat16 rate.
  None when `op` is not one `dot_general` of (x, w) (a convolution, an einsum
  that also transposes): the caller widens the operands instead.
  """
  from jax._src.interpreters import ad  # pylint: disable=g-import-not-at-top
  narrow = w.astype(x.dtype)
  jaxpr = jax.make_jaxpr(op)(x, narrow).jaxpr
  if len(jaxpr.eqns) != 1:
    return None
  eqn = jaxpr.eqns[0]
  if eqn.primitive.name != "dot_general" or list(eqn.invars) != list(jaxpr.invars):
    return None
  rule = ad.get_primitive_transpose(eqn.primitive)
  params = dict(eqn.params, preferred_element_type=w.dtype)
  return rule(g, x, ad.UndefinedPrimal(jax.typeof(w)), **params)[1]


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
    dw = None
    if active_platform() != "cpu":
      dw = _narrow_operand_weight_grad(op, x, w, g)
    if dw is None:
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
    if _WEIGHT_GRADS.get() == "compute":  # autocast: the cast's gradient widens
      return bound(lhs, rhs.astype(lhs.dtype))
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
