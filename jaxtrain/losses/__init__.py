"""Losses looked up by name: ``config.loss.name`` plus the loss's options.

  =============================  ==========================================  ==========
  name                           options (defaults)                          source
  =============================  ==========================================  ==========
  softmax_cross_entropy          label_smoothing=0                           Szegedy'16
  sigmoid_binary_cross_entropy   label_smoothing=0, target_threshold=None,   RSB / timm
                                 reduction="mean"
  focal                          alpha=0.25, gamma=2, label_smoothing=0      Lin'17
  mse                            reduction="mean"
  huber                          delta=1, reduction="mean"                   Huber'64
  smooth_l1                      beta=1, reduction="mean"                    Girshick'15
  distillation                   temperature=1, weight=0.5,                  Hinton'15
                                 hard_loss="softmax_cross_entropy",
                                 + the options of the hard loss
  =============================  ==========================================  ==========

For example ``--config.loss.name=distillation --config.loss.temperature=4
--config.loss.weight=0.9 --config.loss.label_smoothing=0.1`` (smoothing of the hard
cross-entropy). A loss is ``loss(logits, batch) -> (B,)`` float32 per-example
values (`jaxtrain.losses.base.Loss`); `make_train_step(..., loss=...)` averages
them. ``train.label_smoothing`` (older field) feeds the loss's ``label_smoothing``.

Batch contract (all arrays global, batch axis first, sharded like ``image``):

  ``label``           int (B,): class labels (always present).
  ``targets``         float (B, K), optional: soft labels from the input pipeline
                      (mixup, cutmix, label smoothing; rows sum to 1) or regression
                      targets; used instead of one-hot ``label`` when present.
  ``teacher_logits``  float (B, K) or (M, B, K) for an ensemble of M teachers, any
                      dtype; required by ``distillation``, ignored by other losses.
                      The teacher's logits for exactly this batch's (augmented)
                      images, computed in eval mode (``train=False``, running BN
                      statistics, no dropout); the loss stops their gradient. The
                      runner adds them before calling the train step (e.g. a
                      separately jitted ``teacher.apply(teacher_vars, image,
                      train=False)``), or passes ``teacher_fn(images) -> logits`` to
                      `jaxtrain.step.make_train_step`, which then computes them inside
                      the step when the batch has none.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxtrain.errors import ConfigError
from jaxtrain.losses.base import Loss
from jaxtrain.losses.classification import (
    FocalLoss, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy, cross_entropy,
    sigmoid_binary_cross_entropy, sigmoid_focal_loss, softmax_cross_entropy)
from jaxtrain.losses.distillation import (
    TEACHER_LOGITS, Distillation, distillation_kl)
from jaxtrain.losses.regression import (
    HuberLoss, MeanSquaredError, SmoothL1Loss, huber, smooth_l1, squared_error)

DEFAULT = "softmax_cross_entropy"
LOSSES: dict[str, type] = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "sigmoid_binary_cross_entropy": SigmoidBinaryCrossEntropy,
    "focal": FocalLoss,
    "mse": MeanSquaredError,
    "huber": HuberLoss,
    "smooth_l1": SmoothL1Loss,
    "distillation": Distillation,
}
# Distillation's own options; the rest of its section configures the hard loss.
_DISTILLATION_OPTIONS = ("temperature", "weight", "hard_loss")


def _lookup(name: Any, field: str = "loss.name") -> type:
  if name not in LOSSES:
    raise ConfigError(field, name, "not a registered loss", choices=LOSSES)
  return LOSSES[name]


def _fields(cls: type) -> list[str]:
  return [f.name for f in dataclasses.fields(cls)]


def option_names(section: Mapping[str, Any]) -> list[str]:
  """Options a ``config.loss`` section with this ``name`` (and hard_loss) accepts."""
  name = section.get("name", DEFAULT)
  if _lookup(name) is not Distillation:
    return _fields(LOSSES[name])
  hard = section.get("hard_loss", DEFAULT)
  if hard == "distillation":
    raise ConfigError("loss.hard_loss", hard, "the hard loss cannot be distillation")
  return [*_DISTILLATION_OPTIONS, *_fields(_lookup(hard, "loss.hard_loss"))]


def get_loss(name: str = DEFAULT, **options: Any) -> Loss:
  """Builds loss `name` with `options`; see the table above.

  Args:
    name: a registered loss name (`LOSSES`).
    options: that loss's options, e.g. ``temperature=4.0``.

  Returns:
    The loss, a callable ``loss(logits, batch) -> (B,)`` float32 values.

  Raises:
    ConfigError: unknown name or option, or a bad value, naming ``loss.<field>``.
  """
  section = {"name": name, **options}
  accepted = option_names(section)
  for key, value in options.items():
    if key not in accepted:
      raise ConfigError(f"loss.{key}", value, f"not an option of loss {name!r}",
                        choices=accepted)
  if LOSSES[name] is not Distillation:
    return LOSSES[name](**options)
  own = {k: options.pop(k) for k in ("temperature", "weight") if k in options}
  hard = get_loss(options.pop("hard_loss", DEFAULT), **options)
  return Distillation(hard=hard, **own)


def from_config(config: Any) -> Loss:
  """The loss of a full config: ``config.loss`` (label smoothing included, as
  ``loss.label_smoothing``: the one place it is set).

  A config without a ``loss`` section gets softmax cross-entropy.

  Raises:
    ConfigError: as `get_loss`.
  """
  section = dict(getattr(config, "loss", None) or {})
  name = section.pop("name", DEFAULT)
  return get_loss(name, **section)


def check_config(config: Any) -> None:
  """Validates ``config.loss`` before anything compiles (called by config.validate)."""
  from_config(config)


__all__ = [
    "DEFAULT", "Distillation", "FocalLoss", "HuberLoss", "LOSSES", "Loss",
    "MeanSquaredError", "SigmoidBinaryCrossEntropy", "SmoothL1Loss",
    "SoftmaxCrossEntropy", "TEACHER_LOGITS", "check_config", "cross_entropy",
    "distillation_kl", "from_config", "get_loss", "huber", "option_names",
    "sigmoid_binary_cross_entropy", "sigmoid_focal_loss", "smooth_l1",
    "softmax_cross_entropy", "squared_error",
]
