"""AddSign and PowerSign: gradient descent scaled by sign agreement with momentum.

Both keep m, an exponential moving average of the gradient (no bias correction),
and scale each gradient element up where its sign agrees with m's and down where
it does not. They differ only in the multiplier of the gradient, a function of
s = sign(g) sign(m) and the sign decay d: AddSign alpha + d s, PowerSign
base**(d s). Both match TF's `tf.contrib.opt.AddSignOptimizer` /
`PowerSignOptimizer` (kernels `ApplyAddSign` / `ApplyPowerSign`); the sign decays
live in `sign_decay.py`.

References:
  Bello et al., Neural Optimizer Search with Reinforcement Learning, 2017,
  arXiv 1709.07417.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

# A sign decay is a function of the update count, or a fixed number (for example the
# value `optax.inject_hyperparams` has already evaluated from a schedule).
SignDecay = Union[Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike],
                  float, jax.Array, None]

# The direction formula: d -> the multipliers of g where s = +1, -1 and 0.
Multipliers = Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


class ScaleBySignState(NamedTuple):
  """State of `scale_by_addsign` / `scale_by_powersign`.

  Attributes:
    count: int32 scalar, the number of updates so far: the sign-decay step k.
    mu: the moving average m of the gradient, a pytree like the params.
  """
  count: jax.Array
  mu: optax.Updates


def _addsign_multipliers(alpha: jax.typing.ArrayLike) -> Multipliers:
  """AddSign: alpha + d * s."""
  def multipliers(d):
    alpha_ = jnp.asarray(alpha, jnp.float32)
    return alpha_ + d, alpha_ - d, alpha_
  return multipliers


def _powersign_multipliers(base: jax.typing.ArrayLike) -> Multipliers:
  """PowerSign: base**(d * s) = exp(log(base) * d * s), as TF computes it."""
  def multipliers(d):
    log_base = jnp.log(jnp.asarray(base, jnp.float32))
    return jnp.exp(log_base * d), jnp.exp(-log_base * d), jnp.ones([], jnp.float32)
  return multipliers


def _same_sign_bit(x: jax.Array, y: jax.Array) -> jax.Array:
  """True where x and y have the same sign bit (one XOR when dtypes match)."""
  if x.dtype == y.dtype and x.dtype.itemsize in (2, 4, 8):
    bits = jnp.dtype(f"int{8 * x.dtype.itemsize}")
    both = jax.lax.bitcast_convert_type(x, bits) ^ jax.lax.bitcast_convert_type(
        y, bits)
    return both >= 0
  return jnp.signbit(x) == jnp.signbit(y)


def _decay_at(sign_decay_fn: SignDecay, count: jax.Array) -> jax.Array:
  if callable(sign_decay_fn):
    return jnp.asarray(sign_decay_fn(count), jnp.float32)
  return jnp.asarray(1.0 if sign_decay_fn is None else sign_decay_fn, jnp.float32)


def _scale_by_sign_agreement(multipliers: Multipliers,
                             beta: jax.typing.ArrayLike,
                             sign_decay_fn: SignDecay,
                             mu_dtype: Optional[Any]
                             ) -> optax.GradientTransformation:
  """The shared core: m <- beta m + (1 - beta) g, then direction mult(s) * g.

  s = sign(g) sign(m) takes only the values +1, -1 and 0, so the three multipliers
  are scalars computed once per update and selected per element: per element the
  work is one pass computing the new m and the direction together (compares and
  selects, measured faster on CPU than alpha + d*s or exp(log(base) d s)).

  The update is memory-bound. XLA:CPU gives every fusion one output, so the new m
  and the parameter update (in `optax.apply_updates`) are two passes, and the
  second reads g again: 7 array passes per element against momentum SGD's 6, a
  floor no rewrite of this function moves. XLA:TPU fuses both into one
  multi-output pass, as for SGD (`benchmarks/optim_update.py --topology`).
  """
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params: optax.Params) -> ScaleBySignState:
    return ScaleBySignState(count=jnp.zeros([], jnp.int32),
                            mu=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    agree, disagree, zero = multipliers(_decay_at(sign_decay_fn, state.count))

    def leaf(g, m):
      m_new = (beta * m + (1.0 - beta) * g.astype(m.dtype)).astype(m.dtype)
      # s from sign bits: fewer ops per element than two jnp.sign and a product.
      # Where g == 0 the multiplier is irrelevant (it multiplies g); where
      # m == 0, s = 0.
      mult = jnp.where(m_new == 0, zero,
                       jnp.where(_same_sign_bit(g, m_new), agree, disagree))
      return mult.astype(g.dtype) * g, m_new

    treedef = jax.tree.structure(updates)
    pairs = treedef.flatten_up_to(jax.tree.map(leaf, updates, state.mu))
    new_updates = treedef.unflatten([p[0] for p in pairs])
    new_mu = treedef.unflatten([p[1] for p in pairs])
    return new_updates, ScaleBySignState(count=optax.safe_increment(state.count),
                                         mu=new_mu)

  return optax.GradientTransformation(init_fn, update_fn)


def _descend(direction: optax.GradientTransformation,
             learning_rate: optax.ScalarOrSchedule
             ) -> optax.GradientTransformation:
  return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))


def scale_by_addsign(alpha: jax.typing.ArrayLike = 1.0,
                     beta: jax.typing.ArrayLike = 0.9,
                     sign_decay_fn: SignDecay = None,
                     mu_dtype: Optional[Any] = None
                     ) -> optax.GradientTransformation:
  """AddSign direction: (alpha + d * sign(g) * sign(m)) * g.

  m <- beta * m + (1 - beta) * g (m starts at 0, no bias correction) is updated
  before the sign is taken; sign(0) = 0; d = sign_decay_fn(k), k = 0, 1, ... the
  number of previous updates (d = 1 without a decay function).

  Args:
    alpha: base multiplier; with d = 1 the gradient is scaled by alpha + 1 where
      signs agree and by alpha - 1 where they disagree.
    beta: decay of the moving average m.
    sign_decay_fn: function of the update count returning d (see
      `linear_decay_fn`, `cosine_decay_fn`, `restart_decay_fn`), or a fixed d.
    mu_dtype: dtype of m; None uses the parameters' dtype.

  Returns:
    A `GradientTransformation` producing the direction (not yet scaled by -lr).

  References:
    Bello et al., Neural Optimizer Search with Reinforcement Learning, 2017,
    arXiv 1709.07417.
  """
  return _scale_by_sign_agreement(_addsign_multipliers(alpha), beta,
                                  sign_decay_fn, mu_dtype)


def scale_by_powersign(base: jax.typing.ArrayLike = math.e,
                       beta: jax.typing.ArrayLike = 0.9,
                       sign_decay_fn: SignDecay = None,
                       mu_dtype: Optional[Any] = None
                       ) -> optax.GradientTransformation:
  """PowerSign direction: base**(d * sign(g) * sign(m)) * g.

  m and d as in `scale_by_addsign`; base**(d * s) = exp(log(base) * d * s) as in
  TF, evaluated once per update for s = +1 and -1.

  Args:
    base: base of the exponential multiplier (> 0); with d = 1 the gradient is
      scaled by base where signs agree and by 1 / base where they disagree.
    beta: decay of the moving average m.
    sign_decay_fn: function of the update count returning d, or a fixed d.
    mu_dtype: dtype of m; None uses the parameters' dtype.

  Returns:
    A `GradientTransformation` producing the direction (not yet scaled by -lr).

  References:
    Bello et al., Neural Optimizer Search with Reinforcement Learning, 2017,
    arXiv 1709.07417.
  """
  return _scale_by_sign_agreement(_powersign_multipliers(base), beta,
                                  sign_decay_fn, mu_dtype)


def addsign(learning_rate: optax.ScalarOrSchedule,
            alpha: jax.typing.ArrayLike = 1.0,
            beta: jax.typing.ArrayLike = 0.9,
            sign_decay_fn: SignDecay = None,
            mu_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """The AddSign optimizer: params move by -lr * (alpha + d * s) * g.

  `scale_by_addsign` followed by the learning rate.

  Args:
    learning_rate: a number or an `optax.Schedule` of the update count.
    alpha: base multiplier of the gradient, see `scale_by_addsign`.
    beta: decay of the moving average m.
    sign_decay_fn: d as a function of the update count, or a fixed d.
    mu_dtype: dtype of m; None uses the parameters' dtype.

  Returns:
    A `GradientTransformation` whose updates are applied with `optax.apply_updates`.

  Example:
    >>> tx = addsign(0.1, sign_decay_fn=linear_decay_fn(1000))

  References:
    Bello et al., Neural Optimizer Search with Reinforcement Learning, 2017,
    arXiv 1709.07417.
  """
  return _descend(scale_by_addsign(alpha, beta, sign_decay_fn, mu_dtype),
                  learning_rate)


def powersign(learning_rate: optax.ScalarOrSchedule,
              base: jax.typing.ArrayLike = math.e,
              beta: jax.typing.ArrayLike = 0.9,
              sign_decay_fn: SignDecay = None,
              mu_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """The PowerSign optimizer: params move by -lr * base**(d * s) * g.

  `scale_by_powersign` followed by the learning rate; the other arguments, the
  result and the reference are `addsign`'s.

  Args:
    learning_rate: as `addsign`.
    base: base of the exponential multiplier, see `scale_by_powersign`.
    beta: as `addsign`.
    sign_decay_fn: as `addsign`.
    mu_dtype: as `addsign`.

  Returns:
    A `GradientTransformation`, as `addsign`.

  Example:
    >>> tx = powersign(0.1, sign_decay_fn=cosine_decay_fn(1000))

  References:
    Bello et al. 2017, arXiv 1709.07417 (see `addsign`).
  """
  return _descend(scale_by_powersign(base, beta, sign_decay_fn, mu_dtype),
                  learning_rate)
