"""LARS in the form used by the TPU ResNet-50 / MLPerf reference implementations.

References:
  You, Gitman & Ginsburg, Large Batch Training of Convolutional Networks, 2017,
  arXiv 1708.03888. Kumar et al., Scale MLPerf-0.6 models on Google TPU-v3 Pods,
  2019, arXiv 1909.09756 (the TPU form implemented here).

How `lars` differs from `optax.lars`: optax adds weight decay first and computes
the trust ratio on the decayed gradient, tr = c * ||w|| / (||g + wd * w|| + eps);
here the denominator is ||g|| + wd * ||w|| + eps (triangle-inequality form of the
TPU code). optax excludes nothing by default (masks default to True), here ndim <= 1
tensors are excluded from both. The learning-rate placement (-lr before the
momentum trace) is the same, so with weight_decay = 0 and nothing excluded the two
give the same trajectories.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain.optim import masks

_NO_PARAMS = "this transformation needs params: tx.update(updates, state, params)"

# True marks a tensor excluded from weight decay and the trust ratio.
ExcludeMask = Union[Any, Callable[[optax.Params], Any], None]


class LarsState(NamedTuple):
  """State of `lars`.

  Attributes:
    count: int32 scalar, the number of updates so far: the learning-rate step.
    momentum: the buffer v, a pytree like the params; it includes the learning
      rate (v <- momentum * v + lr * tr * g).
  """
  count: jax.Array
  momentum: optax.Updates


def exclude_ndim_le_1(params: optax.Params) -> Any:
  """The default LARS exclusion: biases and normalization scales/offsets.

  Args:
    params: the params pytree (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    A pytree of bools like params, True where the tensor has ndim <= 1.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) <= 1, params)


def lars(learning_rate: optax.ScalarOrSchedule, *,
         momentum: jax.typing.ArrayLike = 0.9,
         weight_decay: jax.typing.ArrayLike = 1e-4,
         trust_coefficient: jax.typing.ArrayLike = 0.001,
         eps: jax.typing.ArrayLike = 0.0,
         nesterov: bool = False,
         exclude: ExcludeMask = None,
         mu_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """LARS, TPU/MLPerf form: trust ratio on the raw gradient, LR inside momentum.

  For a tensor w with gradient g that is not excluded:

    tr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)
         (tr = 1 when ||w|| = 0 or ||g|| = 0)
    g  <- g + weight_decay * w
    v  <- momentum * v + lr * tr * g
    w  <- w - v          (Nesterov: w <- w - (lr * tr * g + momentum * v))

  Excluded tensors get plain momentum with the LR in the buffer: no weight decay,
  tr = 1.

  How this differs from `optax.lars`: see the module docstring.

  Args:
    learning_rate: a number or an `optax.Schedule` of the update count.
    momentum: momentum coefficient.
    weight_decay: L2 coefficient added to the gradient of non-excluded tensors.
    trust_coefficient: LARS coefficient eta.
    eps: added to the trust-ratio denominator.
    nesterov: use Nesterov momentum.
    exclude: what optax masks take (True = excluded): a bool for every tensor, a
      pytree of bools like params or a prefix of it, or a function params -> such
      a pytree; None excludes tensors with ndim <= 1. With
      `optax.inject_hyperparams`, name it in `static_args`.
    mu_dtype: dtype of the momentum buffer; None uses the parameters' dtype.

  Everything after `learning_rate` is keyword-only: `optax.lars`'s second
  positional argument is the weight decay, ours would be the momentum.

  Returns:
    A `GradientTransformationExtraArgs` (its `update` takes and ignores extra
    keyword arguments, as every optax transformation); apply its updates with
    `optax.apply_updates`.

  Example:
    >>> tx = lars(optax.warmup_cosine_decay_schedule(0., 9.0, 500, 10_000))

  References:
    You et al., Large Batch Training of Convolutional Networks, 2017,
    arXiv 1708.03888.
  """
  masks.refuse_scheduled_mask("exclude")
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  exclude = exclude_ndim_le_1 if exclude is None else exclude

  hyper = dict(learning_rate=learning_rate, momentum=momentum,
               weight_decay=weight_decay, trust_coefficient=trust_coefficient,
               eps=eps, nesterov=nesterov, exclude=exclude)
  return optax.GradientTransformationExtraArgs(
      functools.partial(_init, mu_dtype=mu_dtype), functools.partial(_update, hyper))


def _init(params: optax.Params, mu_dtype: Any) -> LarsState:
  return LarsState(count=jnp.zeros([], jnp.int32),
                   momentum=optax.tree.zeros_like(params, dtype=mu_dtype))


def _update(hyper: dict[str, Any], updates: optax.Updates, state: LarsState,
            params: optax.Params | None = None, **extra_args: Any
            ) -> tuple[optax.Updates, LarsState]:
  """`lars`'s update; `extra_args` are accepted and unused (optax's convention)."""
  del extra_args
  if params is None:
    raise ValueError(_NO_PARAMS)
  lr = hyper["learning_rate"]
  lr = jnp.asarray(lr(state.count) if callable(lr) else lr, jnp.float32)
  args = (lr, *(hyper[k] for k in ("momentum", "weight_decay", "trust_coefficient",
                                   "eps", "nesterov")))
  treedef = jax.tree.structure(updates)
  pairs = [_leaf_update(g, v, w, is_excluded, *args)
           for g, v, w, is_excluded in zip(
               treedef.flatten_up_to(updates), treedef.flatten_up_to(state.momentum),
               treedef.flatten_up_to(params), _excluded(hyper["exclude"], params))]
  return (treedef.unflatten([p[0] for p in pairs]),
          LarsState(count=optax.safe_increment(state.count),
                     momentum=treedef.unflatten([p[1] for p in pairs])))


def _excluded(exclude: ExcludeMask, params: optax.Params) -> list[bool]:
  """One Python bool per params leaf, from what optax masks accept."""
  mask = exclude(params) if callable(exclude) else exclude
  try:  # a prefix (a single bool included) covers whole subtrees
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params)
    leaves = jax.tree.structure(params).flatten_up_to(full)
  except (ValueError, TypeError) as e:
    raise ValueError(f"lars(exclude=...): {str(e).splitlines()[0]}; give a bool, a pytree of bools like "
                     "the params (or a prefix of it), or a function params -> "
                     "such a pytree") from None
  for m in leaves:
    if not isinstance(m, (bool, np.bool_)):
      raise TypeError(f"lars(exclude=...) must hold Python bools, got {m!r} "
                      "(a traced array): under optax.inject_hyperparams pass "
                      "static_args=('exclude',)")
  return [bool(m) for m in leaves]


def _leaf_update(g, v, w, is_excluded, lr, momentum, weight_decay,
                 trust_coefficient, eps, nesterov):
  """(update, new momentum) of one tensor (the docstring of `lars`)."""
  if jnp.iscomplexobj(g) or jnp.iscomplexobj(w):
    raise TypeError(f"lars: complex parameters ({jnp.result_type(w)}) are not "
                    "supported (their trust ratio would drop the imaginary part); "
                    "exclude them, or split them into real and imaginary parts")
  scaled = lr * _trust_ratio_grad(g, w, weight_decay, trust_coefficient, eps,
                                  is_excluded)
  v_new = momentum * v.astype(jnp.float32) + scaled
  step = scaled + momentum * v_new if nesterov else v_new
  return (-step).astype(g.dtype), v_new.astype(v.dtype)


def _trust_ratio_grad(g: jax.Array, w: jax.Array, weight_decay, trust_coefficient,
                      eps, is_excluded: bool) -> jax.Array:
  """tr * (g + wd * w) in float32, or g for an excluded tensor."""
  g = g.astype(jnp.float32)
  if is_excluded:
    return g
  w = w.astype(jnp.float32)
  w_norm = jnp.sqrt(jnp.sum(w * w))
  g_norm = jnp.sqrt(jnp.sum(g * g))
  ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
  ratio = jnp.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
  return ratio * (g + weight_decay * w)
