"""The `config.optimizer.schedule` section -> a learning-rate schedule.

`schedule_defaults()` is the section, `resolve_warmup` validates and resolves its
warmup (steps or fraction), `schedule_from_config` builds the schedule: Optax's own
schedules where Optax has the exact one, `lr_schedules` for the rest, every
bad field a `ConfigError` naming it.
"""
from __future__ import annotations

import jax
import ml_collections
import optax

from jaxtrain.errors import ConfigError
from jaxtrain.optim import lr_schedules
from jaxtrain.optim.defaults import schedule_defaults  # noqa: F401  (the section)

SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear", "warmup_linear",
             "polynomial", "warmup_polynomial", "exponential", "step",
             "inverse_time", "piecewise", "linear_cosine", "noisy_linear_cosine",
             "one_cycle", "linear_one_cycle", "sgdr", "mlperf_polynomial")
# These define their own warmup (or none); the others get `with_linear_warmup`.
_OWN_WARMUP = ("one_cycle", "linear_one_cycle", "sgdr", "mlperf_polynomial")


def _schedule_error(field: str, value, fix: str, choices=None) -> ConfigError:
  return ConfigError(f"optimizer.schedule.{field}", value, fix, choices)


def resolve_warmup(s: ml_collections.ConfigDict, total_steps: int) -> int:
  """Warmup steps from `warmup_steps` or `warmup_fraction`, validated.

  Args:
    s: the schedule section (see `schedule_defaults`).
    total_steps: number of train steps.

  Returns:
    The warmup length in steps, in [0, total_steps].

  Raises:
    ConfigError: naming the bad `optimizer.schedule.*` field.
  """
  if s.warmup_steps and s.warmup_fraction:
    raise _schedule_error("warmup_fraction", s.warmup_fraction,
                          "set warmup_steps or warmup_fraction, not both")
  if not 0.0 <= s.warmup_init_fraction <= 1.0:
    raise _schedule_error("warmup_init_fraction", s.warmup_init_fraction,
                          "must be in [0, 1] (a fraction of the peak LR)")
  if not 0.0 <= s.warmup_fraction <= 1.0:
    raise _schedule_error("warmup_fraction", s.warmup_fraction,
                          "must be in [0, 1]")
  warmup = s.warmup_steps or int(round(s.warmup_fraction * total_steps))
  if not 0 <= warmup <= total_steps:
    raise _schedule_error("warmup_steps", warmup,
                          f"must be in [0, total_steps={total_steps}]")
  if warmup and s.name in ("one_cycle", "linear_one_cycle"):
    raise _schedule_error("warmup_steps", warmup,
                          f"{s.name} has its own warmup (pct_start); set 0")
  return warmup


def schedule_from_config(s: ml_collections.ConfigDict, peak: float,
                         total_steps: int) -> optax.Schedule:
  """Builds `config.optimizer.schedule` peaking at `peak` over `total_steps`.

  Args:
    s: the schedule section (see `schedule_defaults`).
    peak: the peak learning rate.
    total_steps: schedule length in steps.

  Returns:
    A schedule step -> learning rate.

  Raises:
    ConfigError: naming the bad `optimizer.schedule.*` field.
  """
  if s.name not in SCHEDULES:
    raise _schedule_error("name", s.name, "unknown schedule", SCHEDULES)
  warmup = resolve_warmup(s, total_steps)
  decay_len = max(total_steps - warmup, 1)
  if s.decay_steps < 0:
    raise _schedule_error("decay_steps", s.decay_steps,
                          "must be >= 0 (0: automatic)")
  period = s.decay_steps or decay_len
  decay = _decay_part(s, peak, total_steps, warmup, decay_len, period)
  if s.name in _OWN_WARMUP:
    return decay
  return lr_schedules.with_linear_warmup(decay, peak, warmup,
                                        init_value=s.warmup_init_fraction * peak)


def _decay_part(s, peak, total_steps, warmup, decay_len, period):
  """The schedule after warmup (or the whole one for _OWN_WARMUP names)."""
  name = s.name
  if name == "constant":
    return optax.constant_schedule(peak)
  if name in ("cosine", "warmup_cosine"):
    alpha = s.end_value / peak if peak else 0.0
    return optax.cosine_decay_schedule(peak, decay_len, alpha=alpha)
  if name in ("linear", "warmup_linear", "polynomial", "warmup_polynomial"):
    power = 1.0 if "linear" in name else s.power
    return optax.polynomial_schedule(peak, s.end_value, power, decay_len)
  if name in ("exponential", "step"):
    if not 0.0 < s.decay_rate:
      raise _schedule_error("decay_rate", s.decay_rate, "must be > 0")
    return optax.exponential_decay(
        peak, period, s.decay_rate, staircase=s.staircase or name == "step",
        end_value=s.end_value or None)
  if name == "inverse_time":
    if not 0.0 <= s.decay_rate:
      raise _schedule_error("decay_rate", s.decay_rate, "must be >= 0")
    return lr_schedules.inverse_time_decay_schedule(peak, period, s.decay_rate,
                                                    s.staircase)
  if name == "piecewise":
    return _piecewise(s, peak, total_steps, warmup)
  if name == "linear_cosine":
    return lr_schedules.linear_cosine_decay_schedule(
        peak, period, s.num_periods, s.alpha, s.beta)
  if name == "noisy_linear_cosine":
    return lr_schedules.noisy_linear_cosine_decay_schedule(
        peak, period, jax.random.key(s.seed), s.initial_variance,
        s.variance_decay, s.num_periods, s.alpha, s.beta)
  if name in ("one_cycle", "linear_one_cycle"):
    if not 0.0 < s.pct_start < 1.0:
      raise _schedule_error("pct_start", s.pct_start, "must be in (0, 1)")
    make = (optax.cosine_onecycle_schedule if name == "one_cycle"
            else optax.linear_onecycle_schedule)
    return make(total_steps, peak, s.pct_start, s.div_factor, s.final_div_factor)
  if name == "sgdr":
    if s.cycle_mult < 1.0:
      raise _schedule_error("cycle_mult", s.cycle_mult, "must be >= 1")
    first = s.decay_steps or total_steps
    if first <= warmup:
      raise _schedule_error("decay_steps", first, "sgdr cycles must be longer "
                            f"than warmup_steps={warmup}")
    return lr_schedules.sgdr_warm_restarts_schedule(
        peak, first, total_steps, s.cycle_mult, s.end_value, warmup)
  return lr_schedules.mlperf_polynomial_schedule(peak, warmup, total_steps,
                                                 s.end_value, s.power)


def _piecewise(s, peak, total_steps, warmup):
  boundaries, scales = list(s.boundaries), list(s.scales)
  if len(boundaries) != len(scales):
    raise _schedule_error("scales", s.scales, f"needs one scale per boundary "
                          f"(boundaries={tuple(boundaries)})")
  # A boundary at the end of warmup is allowed: the warmup climbs to the peak and
  # the first scale applies from that step on (fast.ai's 1.0 -> 2.0, then 1.0).
  if any(not warmup <= b <= total_steps for b in boundaries) or (
      boundaries != sorted(set(boundaries))):
    raise _schedule_error("boundaries", s.boundaries, "must be increasing train "
                          f"steps in [{warmup}, {total_steps}]")
  # The joined schedule counts from the end of warmup.
  return optax.piecewise_constant_schedule(
      peak, {int(b) - warmup: float(x) for b, x in zip(boundaries, scales)})
