"""What every loss shares: the call contract, batch -> targets, option checks.

A loss is a frozen dataclass whose fields are its options (``config.loss.<option>``)
and whose call ``loss(logits, batch)`` returns the per-example loss, shape (B,),
float32 whatever the dtype of the logits (Micikevicius et al. 2017, arXiv
1710.03740: reductions and the loss in float32). Options are checked when the loss
is built, so a bad value is a `ConfigError` naming ``loss.<option>`` before anything
compiles.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Protocol

import jax
import jax.numpy as jnp

from jaxtrain import checks
from jaxtrain.errors import ConfigError

Batch = Mapping[str, jax.Array]


class Loss(Protocol):
  """``loss(logits, batch) -> (B,) float32 per-example loss``."""

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    ...


def class_targets(logits: jax.Array, batch: Batch,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Float32 (B, K) targets: the batch's soft ``targets``, else one-hot ``label``.

  Label smoothing (Szegedy et al. 2016, arXiv 1512.00567, Sec. 7) maps targets t to
  (1 - eps) * t + eps / K. It is affine and mixup/cutmix are convex combinations, so
  smoothing mixed targets here equals smoothing before mixing (timm's
  ``Mixup(label_smoothing=...)``).
  """
  num_classes = logits.shape[-1]
  if "targets" in batch:
    targets = jnp.asarray(batch["targets"], jnp.float32)
  else:
    targets = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return targets


def regression_targets(logits: jax.Array, batch: Batch) -> jax.Array:
  """Float32 targets shaped like `logits`: ``targets``, else one-hot ``label``.

  One-hot labels make a regression loss a classification loss (the square loss of
  Hui & Belkin 2021, arXiv 2006.07322).
  """
  if "targets" in batch:
    return jnp.asarray(batch["targets"], jnp.float32).reshape(logits.shape)
  return jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=jnp.float32)


def reduce_classes(values: jax.Array, reduction: str) -> jax.Array:
  """Per-example loss from per-output values: mean or sum over the last axis."""
  return jnp.sum(values, -1) if reduction == "sum" else jnp.mean(values, -1)


def check_number(option: str, value: Any, low: float, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> None:
  """Raises ConfigError naming ``loss.<option>`` unless low <=/< value <=/< high."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high))
  if not ok:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    raise ConfigError(f"loss.{option}", value,
                      f"use a number in {left}{low}, {high}{right}")


def check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
  """Raises ConfigError naming ``loss.<option>`` unless `value` is in `choices`."""
  checks.check_choice(f"loss.{option}", value, choices)


REDUCTIONS = ("mean", "sum")
