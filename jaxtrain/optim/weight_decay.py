"""Decoupled weight decay after an optimizer that already applied its learning rate.

Built-in optimizers decay as ``-lr_t * (direction + wd * w)`` (decoupled weight
decay, Loshchilov & Hutter 2019, arXiv 1711.05101: AdamW's form, the decay scaled
by the learning-rate schedule). A plug-in factory returns the whole update
``-lr_t * direction``, so the decay cannot go inside it; this transformation,
chained after it, adds ``-lr_t * wd * w`` on the masked parameters: the same
update, with the same schedule, counted in the same applied updates.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def decoupled_weight_decay(weight_decay: float | jax.Array,
                           learning_rate: optax.ScalarOrSchedule,
                           mask: Any = None) -> optax.GradientTransformation:
  """Adds ``-learning_rate(t) * weight_decay * params`` to the updates.

  Args:
    weight_decay: the decay coefficient (may be traced, e.g. under
      `optax.inject_hyperparams`).
    learning_rate: the learning rate or its schedule of the update count `t`
      (the one the preceding optimizer used).
    mask: a pytree of bools, or a function of the params returning one, of the
      params to decay (as `optax.add_decayed_weights`); None: all.

  Returns:
    An `optax.GradientTransformation` with a `ScaleByScheduleState` (the count).

  Example:
    >>> tx = optax.chain(optax.sgd(lr), decoupled_weight_decay(1e-4, lr))

  References:
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
    arXiv 1711.05101.
  """
  schedule: Callable[[jax.Array], Any] = (
      learning_rate if callable(learning_rate) else lambda _: learning_rate)

  def init(params: Any) -> optax.ScaleByScheduleState:
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("decoupled_weight_decay needs the params: "
                       "tx.update(updates, state, params)")
    step = schedule(state.count) * weight_decay
    updates = jax.tree.map(lambda u, p: (u - step * p).astype(u.dtype), updates,
                           params)
    return updates, optax.ScaleByScheduleState(
        count=optax.safe_increment(state.count))

  tx = optax.GradientTransformation(init, update)
  return tx if mask is None else optax.masked(tx, mask)
