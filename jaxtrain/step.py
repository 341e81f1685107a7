"""The pure train and eval steps.

`make_train_step` returns `step(state, batch) -> (state, metrics)`: forward, loss,
gradients, update, all in one XLA program when jitted. Metrics are sums with a
`count`, so they add up exactly across steps, devices and hosts; the host divides at
log time. Logits and loss are float32 whatever the compute dtype. Losses live in
`jaxtrain.losses` (registry, batch contract incl. ``teacher_logits``).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxtrain import losses, noise_scale, precision, step_diagnostics
from jaxtrain.losses import cross_entropy  # noqa: F401  (public: jaxtrain.cross_entropy)
from jaxtrain.state import TrainState

Metrics = dict[str, jax.Array]
TrainStep = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]
TeacherFn = Callable[[jax.Array], jax.Array]


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per row, 1.0 if `labels` is among the `k` largest `logits`, else 0.0 (float32).

  The label is in the top k iff fewer than k classes rank above it. A class ranks
  above the label if its logit is strictly greater, or equal at a lower class
  index: ties resolve as in `jax.lax.top_k` (and `jnp.argmax` for k = 1), lower
  index first. A NaN label logit is a miss. No sort and no gather, only
  elementwise ops and sums over the classes: with the logits split over devices
  along the classes (tensor parallelism) this all-reduces one count per row,
  where `top_k` needs each row whole on one device (an all-gather).
  """
  classes = jnp.arange(logits.shape[-1])
  is_label = classes == labels[:, None]
  label_logit = jnp.sum(jnp.where(is_label, logits, 0), axis=-1, keepdims=True)
  above = (logits > label_logit) | ((logits == label_logit)
                                    & (classes < labels[:, None]))
  hit = (jnp.sum(above, axis=-1) < k) & ~jnp.isnan(label_logit[:, 0])
  return hit.astype(jnp.float32)


def _classification_sums(logits, labels, loss, weights) -> Metrics:
  correct = top_k_correct(logits, labels, 1)
  sums = {"loss": jnp.sum(loss * weights), "accuracy": jnp.sum(correct * weights),
          "count": jnp.sum(weights)}
  if logits.shape[-1] > 5:
    sums["top5_accuracy"] = jnp.sum(top_k_correct(logits, labels, 5) * weights)
  return sums


def _apply(model: nn.Module, params, model_state, images, train: bool, rng):
  """Runs the model; returns (logits, new model_state)."""
  variables = {"params": params, **model_state}
  if not train:
    return model.apply(variables, images, train=False), model_state
  mutable = list(model_state.keys())
  logits, updates = model.apply(variables, images, train=True, mutable=mutable,
                                rngs={"dropout": rng})
  return logits, {**model_state, **updates}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    loss: losses.Loss | None = None,
                    teacher_fn: TeacherFn | None = None,
                    weight_grad_dtype: str = "float32",
                    diagnostics: step_diagnostics.Settings | None = None
                    ) -> TrainStep:
  """Builds the pure train step.

  An update whose loss or gradients are not finite is dropped inside the step:
  params, optimizer state and model state stay as they were (the step counter still
  advances, so data and RNG streams stay aligned). `metrics` report it: `skipped`
  (1 for such a step), `nonfinite_step` (its index) and `nonfinite_leaves` (per
  parameter leaf, in `jax.tree.leaves(params)` order, 1 where its gradient is not
  finite), so the host can skip on or halt naming the step and the parameters.

  Args:
    model: a Flax linen module applied as `model.apply(vars, x, train=...)`.
    tx: the optax transformation.
    loss: per-example loss `loss(logits, batch)` (`jaxtrain.losses`, e.g.
      `losses.from_config(config)`, or ``losses.SoftmaxCrossEntropy(0.1)`` for
      label smoothing); its mean over the batch is minimised. Default: softmax
      cross-entropy.
    teacher_fn: `images -> teacher logits` (e.g. a closure over a restored
      teacher's variables, applied with ``train=False``), called inside the step
      when the batch has no ``teacher_logits`` (distillation); its gradient is
      stopped.
    weight_grad_dtype: ``float32`` or ``compute``: how the layers of
      `jaxtrain.precision` form weight gradients under bfloat16 compute
      (`precision.weight_grads`).
    diagnostics: what the step measures (`jaxtrain.step_diagnostics`); None:
      nothing, the step as without it.

  Returns:
    ``step(state, batch) -> (state, metrics)``: one update and this step's metric
    sums (add them to running totals with `accumulate`).
  """
  if loss is None:
    loss = losses.SoftmaxCrossEntropy()

  def step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    batch = _with_teacher_logits(batch, teacher_fn)
    loss_fn = _loss_fn(model, loss, state.model_state)
    with precision.weight_grads(weight_grad_dtype):
      grads, (logits, per_example, model_state), replica_norms = _gradients(
          loss_fn, state, batch, rng, diagnostics is not None)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new, finite, leaf_ok = _update_if_finite(state, params, opt_state, model_state,
                                             grads, per_example)
    metrics = _classification_sums(logits, batch["label"], per_example,
                                   jnp.ones_like(per_example))
    metrics.update(_nonfinite_metrics(finite, leaf_ok, state.step))
    if diagnostics is not None:
      new, measured = step_diagnostics.measure(diagnostics, state, new, grads,
                                               updates, finite, replica_norms)
      metrics.update(measured)
    return new, metrics

  return step


def _loss_fn(model: nn.Module, loss: losses.Loss, model_state: Any):
  """``(params, batch, rng) -> (mean loss, (logits, per-example loss, model
  state))``: the function the step differentiates."""
  def loss_fn(params, batch, rng):
    logits, new_state = _apply(model, params, model_state, batch["image"], True, rng)
    per_example = loss(logits, batch)
    return jnp.mean(per_example), (logits, per_example, new_state)
  return loss_fn


def _with_teacher_logits(batch: dict[str, jax.Array], teacher_fn: TeacherFn | None
                         ) -> dict[str, jax.Array]:
  """The batch with the teacher's logits (gradient stopped) when it has none."""
  if teacher_fn is None or losses.TEACHER_LOGITS in batch:
    return batch
  return {**batch, losses.TEACHER_LOGITS:
          jax.lax.stop_gradient(teacher_fn(batch["image"]))}


def _gradients(loss_fn: Callable[..., Any], state: TrainState,
               batch: dict[str, jax.Array], rng: jax.Array, diagnostics: bool):
  """(gradient, aux, replica norms or None): with `train.diagnostics` and a state
  carrying noise-scale averages, the same backward pass taken replica by replica
  (`noise_scale.per_replica_gradients`), else the plain one."""
  if not diagnostics or state.noise_scale is None:
    grads, aux = jax.grad(loss_fn, has_aux=True)(state.params, batch, rng)
    return grads, aux, None
  return noise_scale.per_replica_gradients(loss_fn, state.params, batch, rng,
                                           step_diagnostics.BATCH_AXES)


NO_STEP = jnp.iinfo(jnp.int32).max


def _update_if_finite(state: TrainState, params: Any, opt_state: Any,
                      model_state: Any, grads: Any, per_example: jax.Array
                      ) -> tuple[TrainState, jax.Array, jax.Array]:
  """The next state, or `state` with only its step advanced where the loss or a
  gradient is not finite; also (finite, per-leaf finite) for the metrics."""
  # One sum of squares per leaf: Inf and NaN both survive it. One is_finite of
  # the stacked sums, not one per sum: XLA evaluates the guard inside every
  # state leaf's select fusion, and per-sum is_finites became an and-chain of
  # all leaves in each of them -- 68k ops for ResNet-50, 5x its compile time.
  leaf_ok = jnp.isfinite(jnp.stack([jnp.sum(jnp.square(g.astype(jnp.float32)))
                                    for g in jax.tree.leaves(grads)]))
  finite = jnp.isfinite(jnp.sum(per_example)) & jnp.all(leaf_ok)
  params, opt_state, model_state = jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), (params, opt_state, model_state),
      (state.params, state.opt_state, state.model_state))
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                      model_state=model_state)
  return new, finite, leaf_ok


def _nonfinite_metrics(finite, leaf_ok, step) -> Metrics:
  bad = (~finite).astype(jnp.float32)
  return {"skipped": bad, "skip_run": bad, "max_skip_run": bad,
          "nonfinite_step": jnp.where(finite, NO_STEP, step).astype(jnp.int32),
          "nonfinite_leaves": (~leaf_ok).astype(jnp.float32)}


def accumulate(total: Metrics, new: Metrics) -> Metrics:
  """Adds one step's metrics to the running totals (`new` is a single step's)."""
  out = {k: total[k] + v for k, v in new.items()}
  if "nonfinite_step" in new:
    out["nonfinite_step"] = jnp.minimum(total["nonfinite_step"], new["nonfinite_step"])
    out["skip_run"] = (total["skip_run"] + 1.0) * new["skipped"]
    out["max_skip_run"] = jnp.maximum(total["max_skip_run"], out["skip_run"])
  return out


def reset(total: Metrics) -> Metrics:
  """Starts a new log window; a run of skipped steps carries over."""
  out = jax.tree.map(jnp.zeros_like, total)
  if "nonfinite_step" in total:
    out["nonfinite_step"] = jnp.full_like(total["nonfinite_step"], NO_STEP)
    # Copies: the sums are donated to the step, and one buffer must not appear twice.
    out["skip_run"] = jnp.copy(total["skip_run"])
    out["max_skip_run"] = jnp.copy(total["skip_run"])
  return out


def make_eval_step(model: nn.Module, loss: losses.Loss | None = None
                   ) -> Callable[[TrainState, dict[str, jax.Array]], Metrics]:
  """Builds `eval_step(state, batch) -> metric sums`, weighting rows by `mask`.

  `loss` defaults to plain softmax cross-entropy (no smoothing), comparable across
  training losses; eval batches carry no teacher logits (for distillation give its
  `hard` loss, if anything).

  Args:
    model: the Flax linen model, applied with ``train=False``.
    loss: per-example loss `loss(logits, batch)`.

  Returns:
    ``eval_step(state, batch) -> sums`` of loss, correct top-1/top-5 and count.
  """
  loss = losses.SoftmaxCrossEntropy() if loss is None else loss

  def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> Metrics:
    logits, _ = _apply(model, state.params, state.model_state, batch["image"],
                       False, None)
    per_example = loss(logits, {"label": batch["label"]})
    return _classification_sums(logits, batch["label"], per_example, batch["mask"])

  return eval_step


def sum_metrics(total: Metrics | None, new: Metrics) -> Metrics:
  """Adds metric sums (eval batches)."""
  return new if total is None else jax.tree.map(jnp.add, total, new)
