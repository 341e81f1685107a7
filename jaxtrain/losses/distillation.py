"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531).

The student matches the teacher's class probabilities softened by a temperature T,
p = softmax(z_teacher / T), q = softmax(z_student / T); soft gradients scale as
1 / T^2, so the soft term is multiplied by T^2 to keep its weight independent of T
(Sec. 2). It is mixed with the usual hard-label loss:

  loss = weight * T^2 * KL(p || q) + (1 - weight) * hard_loss(z_student, batch)

KL(p || q) = sum_k p_k (log p_k - log q_k) is the paper's soft cross-entropy minus
the teacher's entropy: the same gradient, and 0 when the student matches. An
ensemble of M teachers (logits of shape (M, B, K)) gives the arithmetic mean of
their softened distributions (Sec. 2 and 3 of the paper use the ensemble's mean
prediction).

The teacher's logits come from the batch (``batch["teacher_logits"]``, see the
`jaxtrain.losses` docstring for the contract); no gradient flows into them.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxtrain.errors import ConfigError
from jaxtrain.losses.base import Batch, Loss, check_number
from jaxtrain.losses.classification import SoftmaxCrossEntropy

TEACHER_LOGITS = "teacher_logits"


def teacher_log_probs(teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """log of softmax(z / T), averaged over a leading ensemble axis if there is one.

  (B, K) -> (B, K); (M, B, K) -> (B, K) as log(mean_m softmax(z_m / T)).
  """
  z = jnp.asarray(teacher_logits, jnp.float32) / temperature
  logp = jax.nn.log_softmax(z, axis=-1)
  if logp.ndim == 3:
    logp = jax.nn.logsumexp(logp, axis=0) - math.log(logp.shape[0])
  return logp


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    temperature: float) -> jax.Array:
  """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T)), float32."""
  logp = jax.lax.stop_gradient(teacher_log_probs(teacher_logits, temperature))
  logq = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / temperature,
                            axis=-1)
  return temperature**2 * jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


@dataclasses.dataclass(frozen=True)
class Distillation:
  """Hinton et al.'s distillation loss (``distillation``).

  Attributes:
    temperature: T > 0 of both softmaxes (Hinton et al. use 1-20; 2-4 is usual).
    weight: share of the soft (KL) term in [0, 1]; the hard loss gets 1 - weight.
    hard: the loss on the batch's labels/targets, any registered loss; configured
      as ``loss.hard_loss`` (its name) plus its own options beside these.
  """
  temperature: float = 1.0
  weight: float = 0.5
  hard: Loss = SoftmaxCrossEntropy()

  def __post_init__(self):
    check_number("temperature", self.temperature, 0.0, low_open=True)
    check_number("weight", self.weight, 0.0, 1.0)

  def __call__(self, logits: jax.Array, batch: Batch) -> jax.Array:
    if TEACHER_LOGITS not in batch:
      raise ConfigError(
          "loss.name", "distillation",
          f"the batch has no {TEACHER_LOGITS!r}: the runner must add the teacher's "
          "logits to each train batch (or pass teacher_fn to make_train_step)")
    soft = distillation_kl(logits, batch[TEACHER_LOGITS], self.temperature)
    if self.weight == 1.0:
      return soft
    return self.weight * soft + (1.0 - self.weight) * self.hard(logits, batch)
