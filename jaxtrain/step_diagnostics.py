"""What the train step measures about its own update (`train.diagnostics`).

With ``train.diagnostics = True`` every step, inside the jitted step, computes
(`jaxtrain.update_stats`): the global and per-layer-group gradient, parameter and
update norms and update/parameter ratios; for LARS and LAMB the trust ratio of
every tensor (min / median / max, and the median per group); and, with more than
one data-parallel replica, the gradient noise scale B_simple (`jaxtrain.noise_scale`,
McCandlish et al. 2018, arXiv 1812.06162, app. A) from the per-replica and the
all-reduced gradients. The values ride in the metric sums as one vector
(``diagnostics``, an `update_stats.NamedValues`) with a step count, so a log window
reports their mean over its (finite) steps as ``train/...`` (`averages`). The noise
scale's moving averages live in the train state (``TrainState.noise_scale``), so
checkpoints carry them and a resumed run continues them bit for bit.

What cannot be measured exactly is not logged, and `notes` says why (printed
once at the start of a run): LARS's trust ratio when a gradient stage (clipping,
noise, L1/L2, freezing, accumulation) changes the gradient LARS receives; the
noise scale with one replica (no second batch size) or with batch statistics
(batch norm couples the replicas' gradients).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxtrain import noise_scale, update_stats
from jaxtrain import settings as settings_lib
from jaxtrain.optim import defaults as optim_defaults
from jaxtrain.optim import masks
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel.batchnorm import data_parallel_size

KEY = "diagnostics"  # the metric sums' entry: an update_stats.NamedValues
STEPS = "steps"  # finite steps in the window: the divisor of the means
BATCH_AXES = mesh_lib.BATCH_AXES  # the replicas: the mesh axes the batch is split over
NOISE_SCALE_DECAY = 0.99  # EMA of the two estimates (about the last 100 steps)
# Optimizer fields that change the gradient before LARS sees it.
_GRADIENT_STAGES = ("l1", "l2", "grad_clip_norm", "grad_clip_value",
                    "grad_noise_eta", "freeze")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the step measures (`from_config`).

  Attributes:
    trust_ratio: "lars", "lamb" or "" (none measured).
    optimizer: the merged ``config.optimizer`` (the trust ratio's hyperparameters).
    notes: what is not measured and why, one line each.
  """
  trust_ratio: str
  optimizer: ml_collections.ConfigDict
  notes: tuple[str, ...] = ()

  @classmethod
  def from_config(cls, config: settings_lib.Settings | ml_collections.ConfigDict
                  ) -> Settings | None:
    """None when ``train.diagnostics`` is off."""
    if not getattr(config.train, "diagnostics", False):
      return None
    opt = optim_defaults.merged_section(config.optimizer)
    kind = opt.name if opt.name in ("lars", "lamb") else ""
    notes = []
    stages = [f for f in _GRADIENT_STAGES if opt[f]]
    stages += ["accumulate_steps"] if opt.accumulate_steps > 1 else []
    if kind == "lars" and stages:
      notes.append(f"train/trust_ratio_* not logged: optimizer.{stages[0]} changes "
                   "the gradient LARS receives, which the step does not see")
      kind = ""
    return cls(kind, opt, tuple(notes))


def init_noise_scale(state: Any) -> Any:
  """`state` with empty noise-scale averages (the step then measures the scale)."""
  return state.replace(noise_scale=noise_scale.init())


def noise_scale_shardings(state_shardings: Any, replicated: Any) -> Any:
  """The TrainState's shardings with the noise-scale averages replicated."""
  return state_shardings.replace(noise_scale=jax.tree.map(
      lambda _: replicated, noise_scale.init()))


def noise_scale_note(mesh: jax.sharding.AbstractMesh, model_state: Any
                     ) -> str | None:
  """Why the noise scale cannot be measured on `mesh` for a model with
  `model_state`, or None if it can."""
  if data_parallel_size(mesh) < 2:
    return ("train/gradient_noise_scale not logged: it needs more than one "
            "data-parallel replica (mesh.data x mesh.fsdp is 1), whose gradients give "
            "the second batch size")
  if jax.tree.leaves(model_state):
    return ("train/gradient_noise_scale not logged: the model keeps batch statistics "
            "(batch norm), which couple the replicas' gradients, so no replica has "
            "a gradient of its own examples alone")
  return None


def _trust_ratios(s: Settings, grads: Any, params: Any, opt_state: Any
                  ) -> update_stats.NamedValues | None:
  """The trust-ratio metrics of LARS (formula) or LAMB (its Adam moments)."""
  o = s.optimizer
  decayed = masks.regex_mask(o.weight_decay_mask, default=masks.ndim_above_1)(params)
  if s.trust_ratio == "lars":
    ratios = update_stats.lars_trust_ratios(
        grads, params, jax.tree.map(lambda d: not d, decayed),
        trust_coefficient=o.trust_coefficient, weight_decay=o.weight_decay,
        eps=max(o.eps, 0.0))
  else:
    adam = [x for x in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(x, optax.ScaleByAdamState)][-1]
    ratios = update_stats.lamb_trust_ratios(
        adam, params, decayed, b1=o.b1, b2=o.b2,
        eps=1e-6 if o.eps < 0 else o.eps, weight_decay=o.weight_decay)
  return update_stats.trust_ratio_stats(ratios)


def measure(s: Settings, state: Any, new: Any, grads: Any, updates: Any,
            finite: jax.Array, replica_norms: tuple[jax.Array, jax.Array, int, int]
            | None) -> tuple[Any, dict[str, update_stats.NamedValues]]:
  """This step's diagnostics as metric sums, and `new` with its noise-scale EMA.

  Args:
    s: the settings.
    state, new: the train state before and after the step.
    grads: the gradient the optimizer received; updates: what it returned.
    finite: whether the step was applied (a skipped one adds nothing).
    replica_norms: (mean per-replica |G|^2, |G|^2 of the mean, per-replica
      batch, global batch) when the state has a noise scale, else None.

  Returns:
    `new`, and ``{KEY: NamedValues}``: the values, all 0 for a skipped step, and
    ``steps`` (1, or 0 when skipped).
  """
  stats = update_stats.update_stats(grads, state.params, updates)
  if s.trust_ratio:
    trust = _trust_ratios(s, grads, state.params, new.opt_state)
    stats = stats if trust is None else stats | trust
  if replica_norms is not None:
    ns = noise_scale.update(state.noise_scale, *replica_norms, NOISE_SCALE_DECAY)
    ns = jax.tree.map(lambda n, o: jnp.where(finite, n, o), ns, state.noise_scale)
    new = new.replace(noise_scale=ns)
    g2, trace = noise_scale.averages(ns, NOISE_SCALE_DECAY)
    stats = stats | update_stats.NamedValues.of(
        {"gradient_noise_scale": noise_scale.simple_noise_scale(ns),
         "true_grad_sq_norm": g2, "grad_covariance_trace": trace})
  stats = stats | update_stats.NamedValues.of({STEPS: 1.0})
  return new, {KEY: stats.replace(array=jnp.where(finite, stats.array, 0.0))}


def averages(sums: dict[str, Any]) -> dict[str, float]:
  """``train/<name>``: the mean of each diagnostic over the window's finite steps
  (nothing when diagnostics are off or every step of the window was skipped)."""
  totals = dict(sums.get(KEY, {}))
  steps = float(totals.pop(STEPS, 0.0))
  if not steps:
    return {}
  return {"train/" + k: float(v) / steps for k, v in totals.items()}
