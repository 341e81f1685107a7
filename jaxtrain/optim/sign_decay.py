"""Sign-decay functions for AddSign and PowerSign: d(step) in [0, 1] that anneals
the sign term of the direction towards plain gradient descent.

Semantics of TF's `tf.contrib.opt.sign_decay` (`sign_decay.py`): the step is
clamped to `decay_steps` before every formula, so each decay is constant after
`decay_steps`. All are jit-traceable functions of the (traced) step.

References:
  Bello et al., Neural Optimizer Search with Reinforcement Learning, 2017,
  arXiv 1709.07417 (Section 5, "sign decay").
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

DecayFn = Callable[[jax.typing.ArrayLike], jax.Array]


def _clamped(step: jax.typing.ArrayLike, decay_steps: int) -> jax.Array:
  return jnp.minimum(jnp.asarray(step, jnp.float32), decay_steps)


def _half_cosine(fraction: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))


def linear_decay_fn(decay_steps: int) -> DecayFn:
  """Linear sign decay (D - t) / D with t = min(step, D), D = `decay_steps`.

  Args:
    decay_steps: D, steps until the decay reaches 0 (and stays there).

  Returns:
    A jit-traceable function step -> decay in [0, 1].

  References:
    Bello et al. 2017, arXiv 1709.07417; TF `sign_decay.get_linear_decay_fn`.
  """
  def decay_fn(step: jax.typing.ArrayLike) -> jax.Array:
    t = _clamped(step, decay_steps)
    return jnp.maximum(0.0, (decay_steps - t) / decay_steps)
  return decay_fn


def cosine_decay_fn(decay_steps: int, num_periods: float = 0.5,
                    zero_after: Optional[float] = None) -> DecayFn:
  """Cyclical cosine sign decay 0.5 * (1 + cos(pi * f)), f = 2 * P * t / D.

  t = min(step, D), D = `decay_steps`, P = `num_periods`; the decay is constant
  after D steps.

  Args:
    decay_steps: D, the steps over which `num_periods` cosine periods elapse.
    num_periods: P, the number of cosine periods (0.5: one decay from 1 to 0).
    zero_after: if set, the decay is 0 once f >= 2 * zero_after (TF semantics).

  Returns:
    A jit-traceable function step -> decay in [0, 1].

  References:
    Bello et al. 2017, arXiv 1709.07417; TF `sign_decay.get_cosine_decay_fn`.
  """
  def decay_fn(step: jax.typing.ArrayLike) -> jax.Array:
    fraction = 2.0 * num_periods * _clamped(step, decay_steps) / decay_steps
    decayed = _half_cosine(fraction)
    if zero_after is not None:
      decayed = jnp.where(fraction >= 2 * zero_after, 0.0, decayed)
    return decayed
  return decay_fn


def restart_decay_fn(decay_steps: int, num_periods: int = 1,
                     zero_after: Optional[float] = None) -> DecayFn:
  """Cosine sign decay with restarts: 0.5 * (1 + cos(pi * f)), f = (P t mod D) / D.

  t = min(step, D), D = `decay_steps`, P = `num_periods`. As in TF the step is
  clamped first, so at and after D the fraction is (P D mod D) / D = 0 and the
  decay is back at 1.

  Args:
    decay_steps: D, the length over which the restarts happen.
    num_periods: P, the number of restarts within D steps.
    zero_after: if set, the decay is 0 once P * t / D >= zero_after.

  Returns:
    A jit-traceable function step -> decay in [0, 1].

  References:
    Bello et al. 2017, arXiv 1709.07417; TF `sign_decay.get_restart_decay_fn`.
  """
  def decay_fn(step: jax.typing.ArrayLike) -> jax.Array:
    t = _clamped(step, decay_steps)
    decayed = _half_cosine(jnp.mod(num_periods * t, decay_steps) / decay_steps)
    if zero_after is not None:
      decayed = jnp.where(num_periods * t / decay_steps >= zero_after, 0.0,
                          decayed)
    return decayed
  return decay_fn
