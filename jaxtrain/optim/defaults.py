"""The `config.optimizer` section and its `schedule` subsection, with their defaults.

Plain data (ml_collections only, no JAX or Optax), so that loading an experiment and
reporting a bad field stay fast (`jaxtrain --help` and config errors start before
JAX is imported); `build` and `schedule_config` read these sections.
"""
from __future__ import annotations

import math
from typing import Any

import ml_collections

from jaxtrain.errors import ConfigError

# The built-in optimizers (`build`); any other `optimizer.name` is a plug-in
# (`jaxtrain.optim.plugins`).
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
              "adamw", "lamb", "lars", "addsign", "powersign")

def schedule_defaults() -> ml_collections.ConfigDict:
  """The `config.optimizer.schedule` section; see `schedule_from_config`.

  Returns:
    A ConfigDict with every field a schedule reads, at its default.
  """
  s = ml_collections.ConfigDict()
  s.name = "warmup_cosine"    # one of SCHEDULES
  s.warmup_steps = 0          # linear warmup from 0 to the peak LR
  s.warmup_fraction = 0.0     # alternative: warmup = round(fraction * total_steps)
  s.warmup_init_fraction = 0.0  # warmup starts at this fraction of the peak LR
                                # (Goyal et al. 2017: 1/k of k x the base LR)
  s.end_value = 0.0           # final LR: cosine/linear/polynomial/sgdr/mlperf; floor of
                              # exponential/step when > 0
  s.power = 1.0               # polynomial / mlperf_polynomial exponent
  s.decay_rate = 0.1          # exponential/step/inverse_time rate
  s.decay_steps = 0           # exponential/step/inverse_time period, linear_cosine
                              # length, sgdr first cycle; 0: total - warmup steps
  s.staircase = False         # exponential/inverse_time: decay in jumps
  s.boundaries = ()           # piecewise: train steps at which ...
  s.scales = ()               # ... the LR is multiplied by these factors
  s.pct_start = 0.3           # one_cycle: fraction of steps spent increasing
  s.div_factor = 25.0         # one_cycle: initial LR = peak / div_factor
  s.final_div_factor = 1e4    # one_cycle: final LR = initial / final_div_factor
  s.cycle_mult = 1.0          # sgdr: growth of the cycle length
  s.num_periods = 0.5         # linear_cosine / noisy_linear_cosine
  s.alpha = 0.0               # linear_cosine / noisy_linear_cosine
  s.beta = 0.001              # linear_cosine / noisy_linear_cosine
  s.initial_variance = 1.0    # noisy_linear_cosine
  s.variance_decay = 0.55     # noisy_linear_cosine
  s.seed = 0                  # noisy_linear_cosine noise key
  return s



def default_config() -> ml_collections.ConfigDict:
  """The `config.optimizer` section with every field the optimizers read.

  Every default means "off" or is the usual value of that optimizer's
  hyperparameter; the comments next to the fields say what each does.

  Returns:
    A ConfigDict, with the schedule section under `schedule`.
  """
  c = ml_collections.ConfigDict()
  c.name = "momentum"          # one of OPTIMIZERS, a registered plug-in name or
                               # "package.module:factory" (jaxtrain.optim.plugins)
  c.kwargs = ml_collections.ConfigDict()  # a plug-in factory's keyword arguments
  c.learning_rate = 0.1        # peak LR (at base_batch_size when lr_scaling is on)
  c.lr_scaling = "none"        # none|linear|sqrt: scale learning_rate by batch size
  c.base_batch_size = 256      # batch size learning_rate was tuned for
  c.momentum = 0.9             # momentum/nesterov/lars/rmsprop (0=off);
                               # addsign/powersign: beta, the decay of m
  c.nesterov = False           # Nesterov momentum for momentum and lars
  c.b1 = 0.9                   # adam/adamw/lamb
  c.b2 = 0.999                 # adam/adamw/lamb
  c.eps = -1.0                 # <0: the optimizer's own default (adam 1e-8, lamb 1e-6,
                               # rmsprop 1e-8, adagrad 1e-7, lars 0)
  c.rmsprop_decay = 0.9        # rmsprop second-moment decay
  c.centered = False           # rmsprop: centered variant
  c.adagrad_initial_accumulator = 0.1
  c.trust_coefficient = 0.001  # lars
  c.alpha = 1.0                # addsign
  c.base = math.e              # powersign
  c.sign_decay = "none"        # addsign/powersign: none|linear|cosine|restart
  c.sign_decay_steps = 0       # 0: total_steps
  c.sign_decay_num_periods = -1.0  # <0: the decay's default (cosine 0.5, restart 1)
  c.sign_decay_zero_after = -1.0   # <0: never zero
  c.mu_dtype = ""              # first-moment dtype: "" (param dtype)|float32|bfloat16
  c.weight_decay = 0.0         # decoupled (lars: inside the trust ratio); 0=off
  c.weight_decay_mask = ""     # regex of decayed params; "": params with ndim > 1
  c.l1 = 0.0                   # adds l1*sign(w) to the gradient (masked like wd)
  c.l2 = 0.0                   # adds l2*w to the gradient (masked like wd)
  c.grad_clip_norm = 0.0       # clip by global norm; 0=off
  c.grad_clip_value = 0.0      # clip each element to [-v, v]; 0=off
  c.grad_noise_eta = 0.0       # annealed Gaussian noise variance eta/(1+t)^gamma; 0=off
  c.grad_noise_gamma = 0.55
  c.grad_noise_seed = 0
  c.accumulate_steps = 1       # average gradients over k micro-steps (optax.MultiSteps)
  c.ema_decay = 0.0            # EMA of params, read with ema_params(opt_state); 0=off
  c.lr_multipliers = ()        # ((regex, multiplier), ...); first match wins
  c.freeze = ()                # (regex, ...): matching params are never updated
  c.schedule = schedule_defaults()
  return c


def merged_section(opt_config: Any) -> ml_collections.ConfigDict:
  """`default_config()` updated with `opt_config` (unknown keys -> ConfigError)."""
  return _merged(opt_config, default_config(), "optimizer")


def _merged(opt_config: Any, defaults: ml_collections.ConfigDict,
            prefix: str) -> ml_collections.ConfigDict:
  """defaults updated with opt_config; unknown keys and wrong types -> ConfigError."""
  merged = ml_collections.ConfigDict(defaults.to_dict())
  for key, value in dict(opt_config.items()).items():
    field = f"{prefix}.{key}"
    if key not in defaults:
      raise ConfigError(field, value, "unknown field", defaults.keys())
    if field == "optimizer.kwargs":  # free-form: the plug-in's signature checks it
      merged[key] = _kwargs_section(value)
      continue
    if isinstance(defaults[key], ml_collections.ConfigDict):
      merged[key] = _merged(value, defaults[key], field)
      continue
    try:
      merged[key] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(field, value, f"expected {type(defaults[key]).__name__}"
                        ) from e
  return merged


def _kwargs_section(value: Any) -> ml_collections.ConfigDict:
  if not isinstance(value, (ml_collections.ConfigDict, dict)):
    raise ConfigError("optimizer.kwargs", value, "use a section (ConfigDict) of the "
                      "plug-in factory's keyword arguments")
  return ml_collections.ConfigDict(dict(value.items()))


def _finite(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


# schedule field -> (test, what it must be); fields any schedule may read, so all
# are checked (an unread one is at its default, which passes).
_SCHEDULE_VALUES = {
    "end_value": (lambda v: _finite(v) and v >= 0, "a finite learning rate >= 0 "
                  "(a negative one would train uphill)"),
    "power": (lambda v: _finite(v) and v > 0, "a finite exponent > 0"),
    "decay_rate": (lambda v: _finite(v) and v >= 0, "a finite rate >= 0"),
    "div_factor": (lambda v: _finite(v) and v > 0, "a finite factor > 0 (initial "
                   "LR = peak / div_factor)"),
    "final_div_factor": (lambda v: _finite(v) and v > 0, "a finite factor > 0"),
    "cycle_mult": (_finite, "a finite number >= 1"),
    "num_periods": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "alpha": (lambda v: _finite(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "beta": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "initial_variance": (lambda v: _finite(v) and v >= 0, "a finite variance >= 0"),
    "variance_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "warmup_init_fraction": (_finite, "a number in [0, 1]"),
    "warmup_fraction": (_finite, "a number in [0, 1]"),
    "pct_start": (_finite, "a number in (0, 1)"),
}
_SCHEDULE_INTS = ("warmup_steps", "decay_steps", "seed")
MAX_INT = 2**31 - 1


def _is_int(v: Any, high: int = MAX_INT) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= high


def check_schedule_values(s: Any) -> None:
  """Types and ranges of `config.optimizer.schedule` fields (plain values; the
  schedule builder checks what depends on the run's length)."""
  for field, (ok, what) in _SCHEDULE_VALUES.items():
    if field in s and not ok(s[field]):
      raise ConfigError(f"optimizer.schedule.{field}", s[field], f"use {what}")
  for field in _SCHEDULE_INTS:
    if field in s and not _is_int(s[field]):
      raise ConfigError(f"optimizer.schedule.{field}", s[field],
                        f"use an integer in [0, {MAX_INT}]")
  for field in ("boundaries", "scales"):
    values = s.get(field, ())
    ints = field == "boundaries"
    if not isinstance(values, (tuple, list)) or not all(
        _is_int(v) if ints else (_finite(v) and v >= 0) for v in values):
      raise ConfigError(f"optimizer.schedule.{field}", values, "use a tuple of "
                        + ("train steps (integers >= 0)" if ints else
                           "finite factors >= 0"))
