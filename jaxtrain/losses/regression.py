"""Regression losses: squared error, Huber, smooth L1.

Targets are the batch's float ``targets`` (reshaped to the outputs), or one-hot
``label`` when there are none (square loss for classification). Per example, the
element losses are averaged (or summed) over the outputs; computed in float32.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtrain.losses.base import (
    REDUCTIONS, Batch, check_choice, check_number, reduce_classes,
    regression_targets)


def squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Element-wise (x - t)^2 in float32."""
  return jnp.square(jnp.asarray(predictions, jnp.float32)
                    - jnp.asarray(targets, jnp.float32))


def huber(predictions: jax.Array, targets: jax.Array, delta: float) -> jax.Array:
  """Element-wise Huber loss (Huber 1964, "Robust Estimation of a Location Parameter").

  0.5 r^2 where |r| <= delta, delta (|r| - 0.5 delta) beyond: quadratic near zero,
  linear (so bounded gradients, delta) for outliers; r = x - t, float32.
  """
  r = jnp.abs(jnp.asarray(predictions, jnp.float32) - jnp.asarray(targets, jnp.float32))
  quadratic = jnp.minimum(r, delta)
  # 0.5 q^2 + delta (r - q) is both branches at once, without a select on r.
  return 0.5 * jnp.square(quadratic) + delta * (r - quadratic)


def smooth_l1(predictions: jax.Array, targets: jax.Array, beta: float) -> jax.Array:
  """Element-wise smooth L1 (Girshick 2015, Fast R-CNN, arXiv 1504.08083, Eq. 3).

  0.5 r^2 / beta where |r| < beta, |r| - 0.5 beta beyond (beta = 1 in the paper):
  Huber with delta = beta, divided by beta.
  """
  return huber(predictions, targets, beta) / beta


@dataclasses.dataclass(frozen=True)
class MeanSquaredError:
  """Squared error (``mse``). Attributes: reduction over outputs, "mean" or "sum"."""
  reduction: str = "mean"

  def __post_init__(self):
    check_choice("reduction", self.reduction, REDUCTIONS)

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    return reduce_classes(squared_error(logits, regression_targets(logits, batch)),
                          self.reduction)


@dataclasses.dataclass(frozen=True)
class HuberLoss:
  """Huber loss (``huber``). Attributes: delta > 0; reduction "mean" or "sum"."""
  delta: float = 1.0
  reduction: str = "mean"

  def __post_init__(self):
    check_number("delta", self.delta, 0.0, low_open=True)
    check_choice("reduction", self.reduction, REDUCTIONS)

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    return reduce_classes(huber(logits, regression_targets(logits, batch), self.delta),
                          self.reduction)


@dataclasses.dataclass(frozen=True)
class SmoothL1Loss:
  """Smooth L1 (``smooth_l1``). Attributes: beta > 0; reduction "mean" or "sum"."""
  beta: float = 1.0
  reduction: str = "mean"

  def __post_init__(self):
    check_number("beta", self.beta, 0.0, low_open=True)
    check_choice("reduction", self.reduction, REDUCTIONS)

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    return reduce_classes(
        smooth_l1(logits, regression_targets(logits, batch), self.beta),
        self.reduction)
