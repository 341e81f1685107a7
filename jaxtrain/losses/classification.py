"""Classification losses: softmax cross-entropy, sigmoid binary cross-entropy, focal.

Each comes as a pure function of (logits, targets) and as a configurable loss
(`jaxtrain.losses.base.Loss`) that reads its targets from the batch: the soft
``targets`` of mixup/cutmix/label smoothing when the input pipeline made them, else
one-hot ``label``. All are computed in float32 from logits of any dtype, through
log-sigmoid / log-softmax so that extreme logits stay finite.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtrain.losses.base import (
    REDUCTIONS, Batch, check_choice, check_number, class_targets, reduce_classes)


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """-sum_k t_k log softmax(z)_k per example, float32; `targets` rows are (soft) labels."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return -jnp.sum(jnp.asarray(targets, jnp.float32) * logp, axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0,
                  targets: jax.Array | None = None) -> jax.Array:
  """Per-example softmax cross-entropy in float32, with label smoothing.

  Label smoothing (Szegedy et al. 2016, arXiv 1512.00567): targets
  (1 - eps) * one_hot + eps / num_classes. `targets`, when given, are soft labels
  (mixup/cutmix from the input pipeline) used instead of one-hot `labels`, and are
  smoothed the same way (as timm's Mixup does).

  Args:
    logits: (B, K) logits of any float dtype.
    labels: (B,) int class labels.
    label_smoothing: eps in [0, 1).
    targets: optional (B, K) soft labels.

  Returns:
    (B,) float32 losses.
  """
  batch = {"label": labels} if targets is None else {"targets": targets}
  return softmax_cross_entropy(logits, class_targets(logits, batch, label_smoothing))


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Element-wise -t log sigmoid(z) - (1 - t) log sigmoid(-z), float32, any shape."""
  z = jnp.asarray(logits, jnp.float32)
  t = jnp.asarray(targets, jnp.float32)
  return -t * jax.nn.log_sigmoid(z) - (1.0 - t) * jax.nn.log_sigmoid(-z)


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float | None,
                       gamma: float) -> jax.Array:
  """Element-wise focal loss, FL = -alpha_t (1 - p_t)^gamma log(p_t), float32.

  Lin et al. 2017 ("Focal Loss for Dense Object Detection", arXiv 1708.02002,
  Eq. 5) with p = sigmoid(z), p_t = p if t = 1 else 1 - p, alpha_t = alpha if t = 1
  else 1 - alpha. For soft t both are interpolated linearly (as optax does), and
  -log(p_t) becomes the binary cross-entropy. 1 - p_t is taken as
  t sigmoid(-z) + (1 - t) sigmoid(z), which keeps its tiny values when p_t -> 1.
  `alpha=None` weights both classes by 1.
  """
  z = jnp.asarray(logits, jnp.float32)
  t = jnp.asarray(targets, jnp.float32)
  loss = sigmoid_binary_cross_entropy(z, t)
  if gamma:  # d/dx x^0 is 0 * inf = NaN at x = 0: no factor at all for gamma 0.
    one_minus_pt = t * jax.nn.sigmoid(-z) + (1.0 - t) * jax.nn.sigmoid(z)
    loss = one_minus_pt ** gamma * loss
  if alpha is not None:
    loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
  return loss


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy:
  """Softmax cross-entropy with optional label smoothing (``softmax_cross_entropy``).

  Attributes:
    label_smoothing: eps of Szegedy et al. 2016; applied to soft targets as well.
  """
  label_smoothing: float = 0.0

  def __post_init__(self):
    check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    return softmax_cross_entropy(logits,
                                 class_targets(logits, batch, self.label_smoothing))


@dataclasses.dataclass(frozen=True)
class SigmoidBinaryCrossEntropy:
  """One-vs-all sigmoid cross-entropy (``sigmoid_binary_cross_entropy``).

  The loss of "ResNet strikes back" (Wightman et al. 2021, arXiv 2110.00476, Sec.
  3.2), as timm's ``BinaryCrossEntropy``: each class an independent binary
  prediction against the (soft, smoothed) targets, averaged over classes.

  Attributes:
    label_smoothing: eps; off value eps / K, on value 1 - eps + eps / K (timm).
    target_threshold: None, or targets above it become 1 and the others 0 (timm's
      ``bce_target_thresh``: mixup/cutmix targets turned into multi-label ones).
    reduction: "mean" (timm's default) or "sum" (``sum_classes``) over classes.
  """
  label_smoothing: float = 0.0
  target_threshold: float | None = None
  reduction: str = "mean"

  def __post_init__(self):
    check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
    if self.target_threshold is not None:
      check_number("target_threshold", self.target_threshold, 0.0, 1.0)
    check_choice("reduction", self.reduction, REDUCTIONS)

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    targets = class_targets(logits, batch, self.label_smoothing)
    if self.target_threshold is not None:
      targets = (targets > self.target_threshold).astype(jnp.float32)
    return reduce_classes(sigmoid_binary_cross_entropy(logits, targets),
                          self.reduction)


@dataclasses.dataclass(frozen=True)
class FocalLoss:
  """Sigmoid focal loss of Lin et al. 2017 (``focal``), summed over classes.

  Summed, not averaged: RetinaNet sums over classes and normalises by the number of
  positives, one per example here.

  Attributes:
    alpha: weight of the positive class (0.25 in the paper); None for no weighting.
    gamma: focusing parameter (2 in the paper); 0 with alpha None is the BCE.
    label_smoothing: eps applied to the targets first.
  """
  alpha: float | None = 0.25
  gamma: float = 2.0
  label_smoothing: float = 0.0

  def __post_init__(self):
    if self.alpha is not None:
      check_number("alpha", self.alpha, 0.0, 1.0)
    check_number("gamma", self.gamma, 0.0)
    check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    targets = class_targets(logits, batch, self.label_smoothing)
    return jnp.sum(sigmoid_focal_loss(logits, targets, self.alpha, self.gamma), -1)
