"""config.optimizer -> one Optax chain and its learning-rate schedule.

The chain, in order (each stage present only when its field is on):

  [MultiSteps over accumulate_steps micro-steps:
    L1/L2 penalty -> zero frozen grads -> clip by value -> clip by global norm
    -> gradient noise -> optimizer direction -> decoupled weight decay
    -> -learning rate -> per-path LR multipliers -> zero frozen updates
    -> parameter EMA]

A plug-in optimizer (`optimizer.name` a registered name or "package.module:factory",
`jaxtrain.optim.plugins`) takes the place of "direction -> weight decay -> -learning
rate": its factory's update (given the learning-rate schedule), then decoupled
weight decay scaled by the same schedule (`weight_decay.decoupled_weight_decay`).

`default_config()` is the whole optimizer section; every field's default means "off"
(or is the usual value of that optimizer's hyperparameter). All step counts
(`total_steps`, warmup, decay steps, boundaries) count train steps, i.e. calls to
`tx.update`; with gradient accumulation the schedule is read at the first micro-step
of each accumulated update, and the returned schedule is that same function of the
train step, so the logged LR is the LR used.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Any

import jax
import ml_collections
import optax

from jaxtrain.errors import ConfigError
from jaxtrain.optim.lars import lars as lars_tx
from jaxtrain.optim import lr_scaling
from jaxtrain.optim import masks
from jaxtrain.optim import plugins
from jaxtrain.optim import schedule_config
from jaxtrain.optim import sign
from jaxtrain.optim import sign_decay
from jaxtrain.optim.defaults import default_config  # noqa: F401  (optim.default_config)
from jaxtrain.optim.defaults import MAX_INT
from jaxtrain.optim.defaults import OPTIMIZERS
from jaxtrain.optim.defaults import check_schedule_values as schedule_values
from jaxtrain.optim.defaults import merged_section
from jaxtrain.optim import unread_fields
from jaxtrain.optim.weight_decay import decoupled_weight_decay

SIGN_DECAYS = ("none", "linear", "cosine", "restart")
MU_DTYPES = ("", "float32", "bfloat16")
LR_SCALING = ("none", "linear", "sqrt")


def build(opt_config: ml_collections.ConfigDict, total_steps: int,
          batch_size: int | None = None
          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer chain and learning-rate schedule from config.optimizer.

  Every field is validated first; a bad one raises `ConfigError` naming it.

  Args:
    opt_config: the `config.optimizer` section (missing fields take defaults).
    total_steps: number of train steps (calls to `tx.update`).
    batch_size: global batch size; needed only when `lr_scaling` is not "none".

  Returns:
    (tx, lr_schedule): the full `GradientTransformation` and the schedule of the
    learning rate as a function of the train step, for logging.
  """
  c = _validate(opt_config, total_steps, batch_size)
  k = c.accumulate_steps
  peak = c.learning_rate
  if c.lr_scaling != "none":
    peak = lr_scaling.scale_lr(peak, batch_size, c.base_batch_size, c.lr_scaling)
  train_schedule = schedule_config.schedule_from_config(c.schedule, peak,
                                                        total_steps)
  # The inner optimizer counts applied updates u; update u starts at train step u*k.
  update_schedule = lambda u: train_schedule(u * k)
  logged_schedule = lambda t: train_schedule((t // k) * k)

  wd_mask = masks.regex_mask(c.weight_decay_mask, default=masks.ndim_above_1)
  # Frozen params are zeroed twice: their gradients after the penalties (no share
  # of the clip norm, state stays 0) and their final updates (no weight decay).
  # Their state stays allocated, keeping the params' tree structure that
  # `optax.tree_map_params` (state sharding) and checkpoints rely on;
  # `optax.partition` would save the memory but leaves `MaskedNode`s in the state.
  freeze = [optax.freeze(masks.regex_mask(c.freeze))] if c.freeze else []
  stages = _gradient_stages(c, wd_mask, freeze)
  stages.append(_optimizer(c, update_schedule, total_steps // k, wd_mask))
  if c.lr_multipliers:
    stages.append(masks.scale_by_lr_multipliers(c.lr_multipliers))
  stages += freeze
  if c.ema_decay:
    stages.append(masks.track_params_ema(c.ema_decay))
  tx = optax.chain(*stages)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  return tx, logged_schedule


def _gradient_stages(c: ml_collections.ConfigDict, wd_mask: Any,
                     freeze: list[optax.GradientTransformation]
                     ) -> list[optax.GradientTransformation]:
  """Penalties, freezing, clipping, then annealed noise (Neelakantan et al. 2015,
  arXiv 1511.06807) last, so the noise scale is not clipped away."""
  stages = []
  if c.l1 or c.l2:
    stages.append(masks.add_l1_l2(c.l1, c.l2, wd_mask))
  stages += freeze
  if c.grad_clip_value:
    stages.append(optax.clip(c.grad_clip_value))
  if c.grad_clip_norm:
    stages.append(optax.clip_by_global_norm(c.grad_clip_norm))
  if c.grad_noise_eta:
    stages.append(optax.add_noise(c.grad_noise_eta, c.grad_noise_gamma,
                                  jax.random.key(c.grad_noise_seed)))
  return stages


def _eps(c: ml_collections.ConfigDict, default: float) -> float:
  return default if c.eps < 0 else c.eps


def _optimizer(c: ml_collections.ConfigDict, lr: optax.Schedule,
               num_updates: int, wd_mask: Any) -> optax.GradientTransformation:
  """Direction, decoupled weight decay and learning rate for `c.name`."""
  if plugins.is_plugin(c.name):
    return plugin_optimizer(c, lr, wd_mask)
  mu_dtype = c.mu_dtype or None
  if c.name == "lars":
    exclude = lambda params: jax.tree.map(lambda m: not m, wd_mask(params))
    return lars_tx(lr, momentum=c.momentum, weight_decay=c.weight_decay,
                   trust_coefficient=c.trust_coefficient, eps=_eps(c, 0.0),
                   nesterov=c.nesterov, exclude=exclude, mu_dtype=mu_dtype)
  if c.name == "lamb":
    return optax.lamb(lr, c.b1, c.b2, _eps(c, 1e-6),
                      weight_decay=c.weight_decay, mask=wd_mask)
  direction = _direction(c, num_updates, mu_dtype)
  stages = [direction]
  if c.weight_decay:
    stages.append(optax.add_decayed_weights(c.weight_decay, wd_mask))
  stages.append(optax.scale_by_learning_rate(lr))
  return optax.chain(*stages)


def plugin_optimizer(c: ml_collections.ConfigDict, lr: optax.Schedule,
                     wd_mask: Any, kwargs: dict[str, Any] | None = None,
                     weight_decay: Any = None) -> optax.GradientTransformation:
  """A plug-in factory's transformation (`plugins.make`) with decoupled weight
  decay after it when `c.weight_decay` is on (`decoupled_weight_decay`).

  Args:
    c: the full optimizer section.
    lr: the learning-rate schedule of the applied-update count.
    wd_mask: the weight-decay mask.
    kwargs: the factory's keyword arguments (default: `c.kwargs`).
    weight_decay: the decay (default `c.weight_decay`; traced in a vectorized
      study); the stage is present when this or `c.weight_decay` is not 0.
  """
  kwargs = c.kwargs.to_dict() if kwargs is None else kwargs
  tx = plugins.make(c.name, kwargs, lr)
  if weight_decay is None and not c.weight_decay:
    return tx
  decay = c.weight_decay if weight_decay is None else weight_decay
  return optax.chain(tx, decoupled_weight_decay(decay, lr, wd_mask))


def _direction(c: ml_collections.ConfigDict, num_updates: int,
               mu_dtype: Any) -> optax.GradientTransformation:
  """The unscaled update direction of the optimizers that share the generic tail."""
  name = c.name
  if name == "sgd":
    return optax.identity()
  if name in ("momentum", "nesterov"):
    return optax.trace(c.momentum, nesterov=c.nesterov or name == "nesterov",
                       accumulator_dtype=mu_dtype)
  if name in ("adam", "adamw"):
    return optax.scale_by_adam(c.b1, c.b2, _eps(c, 1e-8), mu_dtype=mu_dtype)
  if name == "adagrad":
    return optax.scale_by_rss(c.adagrad_initial_accumulator, _eps(c, 1e-7))
  if name == "rmsprop":
    scale = optax.scale_by_stddev if c.centered else optax.scale_by_rms
    stages = [scale(decay=c.rmsprop_decay, eps=_eps(c, 1e-8))]
    if c.momentum:
      stages.append(optax.trace(c.momentum, nesterov=c.nesterov,
                                accumulator_dtype=mu_dtype))
    return optax.chain(*stages)
  decay_fn = _sign_decay_fn(c, num_updates)
  if name == "addsign":
    return sign.scale_by_addsign(c.alpha, c.momentum, decay_fn, mu_dtype)
  if name == "powersign":
    return sign.scale_by_powersign(c.base, c.momentum, decay_fn, mu_dtype)
  raise ConfigError("optimizer.name", name, "unknown optimizer", OPTIMIZERS)


def _sign_decay_fn(c: ml_collections.ConfigDict, num_updates: int) -> Any:
  """The sign decay as a function of the applied-update count."""
  if c.sign_decay == "none":
    return None
  steps = c.sign_decay_steps // c.accumulate_steps or num_updates
  zero_after = None if c.sign_decay_zero_after < 0 else c.sign_decay_zero_after
  periods = c.sign_decay_num_periods
  if c.sign_decay == "linear":
    return sign_decay.linear_decay_fn(steps)
  if c.sign_decay == "cosine":
    return sign_decay.cosine_decay_fn(steps, 0.5 if periods < 0 else periods,
                                      zero_after)
  return sign_decay.restart_decay_fn(steps, 1 if periods < 0 else periods,
                                     zero_after)


def mask_summary(opt_config: ml_collections.ConfigDict,
                 params: Any) -> list[tuple[str, tuple[int, ...], bool, bool,
                                            float, bool]]:
  """What the optimizer config does to each parameter, for `jaxtrain optim-summary`.

  Args:
    opt_config: the `config.optimizer` section.
    params: the params pytree (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    One row per parameter: (path, shape, weight_decay, trust_ratio, lr_multiplier,
    frozen). weight_decay is True when weight decay, L1 or L2 is on and the path is
    in the weight-decay mask; trust_ratio is True for lars tensors not excluded and
    for every tensor under lamb.
  """
  c = _validate(opt_config, total_steps=None, batch_size=None)
  wd_on = bool(c.weight_decay or c.l1 or c.l2)
  decayed = masks.regex_mask(c.weight_decay_mask, default=masks.ndim_above_1)
  frozen = masks.regex_mask(c.freeze)
  rows = []
  for path, leaf, wd, fz in zip(jax.tree.leaves(masks.param_paths(params)),
                                jax.tree.leaves(params),
                                jax.tree.leaves(decayed(params)),
                                jax.tree.leaves(frozen(params))):
    # A plug-in's trust ratio, if any, is its own business: not shown.
    trust = (c.name == "lars" and wd) or c.name == "lamb"
    rows.append((path, tuple(leaf.shape), bool(wd_on and wd and not fz),
                 bool(trust and not fz),
                 masks.multiplier_for(path, c.lr_multipliers), bool(fz)))
  return rows


def _check(field: str, value: Any, ok: bool, fix: str) -> None:
  if not ok:
    raise ConfigError(f"optimizer.{field}", value, fix)


def _check_regex(field: str, pattern: Any) -> None:
  try:
    re.compile(pattern)
  except (re.error, TypeError) as e:
    raise ConfigError(f"optimizer.{field}", pattern,
                      f"not a valid regex ({e})") from e


def _validate(opt_config: Any, total_steps: int | None,
              batch_size: int | None) -> ml_collections.ConfigDict:
  """Checks every field (before anything compiles); returns the full config."""
  c = merged_section(opt_config)
  if plugins.is_plugin(c.name) or c.name not in OPTIMIZERS:
    plugins.make(c.name, c.kwargs.to_dict(), lambda count: c.learning_rate)
  for field, choices in (("sign_decay", SIGN_DECAYS), ("mu_dtype", MU_DTYPES),
                         ("lr_scaling", LR_SCALING)):
    if c[field] not in choices:
      raise ConfigError(f"optimizer.{field}", c[field], "unknown value", choices)
  _check("learning_rate", c.learning_rate,
         math.isfinite(c.learning_rate) and c.learning_rate >= 0,
         "must be a finite number >= 0")
  for field in ("momentum", "b1", "b2", "rmsprop_decay", "ema_decay"):
    _check(field, c[field], 0.0 <= c[field] < 1.0, "must be in [0, 1)")
  for field in ("weight_decay", "l1", "l2", "grad_clip_norm", "grad_clip_value",
                "grad_noise_eta", "grad_noise_gamma", "trust_coefficient",
                "adagrad_initial_accumulator", "alpha"):
    _check(field, c[field], math.isfinite(c[field]) and c[field] >= 0,
           "must be a finite number >= 0 (0 turns it off)")
  _check("eps", c.eps, math.isfinite(c.eps), "must be finite (< 0: default)")
  _check("base", c.base, math.isfinite(c.base) and c.base > 0, "must be > 0")
  _check("accumulate_steps", c.accumulate_steps, c.accumulate_steps >= 1,
         "must be >= 1 (1: no accumulation)")
  _check("base_batch_size", c.base_batch_size, c.base_batch_size >= 1,
         "must be >= 1")
  _check("sign_decay_steps", c.sign_decay_steps, c.sign_decay_steps >= 0,
         "must be >= 0 (0: total_steps)")
  _check("sign_decay_num_periods", c.sign_decay_num_periods,
         math.isfinite(c.sign_decay_num_periods) and c.sign_decay_num_periods != 0,
         "must be > 0 (< 0: the decay's default; 0 periods would not decay)")
  _check("sign_decay_zero_after", c.sign_decay_zero_after,
         math.isfinite(c.sign_decay_zero_after), "must be finite (< 0: never zero)")
  _check("grad_noise_seed", c.grad_noise_seed,
         isinstance(c.grad_noise_seed, int) and 0 <= c.grad_noise_seed <= MAX_INT,
         f"must be an integer in [0, {MAX_INT}]")
  for field in ("accumulate_steps", "sign_decay_steps", "base_batch_size"):
    _check(field, c[field], c[field] <= MAX_INT, f"must be <= {MAX_INT}")
  schedule_values(c.schedule)
  _check_regex("weight_decay_mask", c.weight_decay_mask)
  for i, pattern in enumerate(c.freeze):
    _check_regex(f"freeze[{i}]", pattern)
  for i, rule in enumerate(c.lr_multipliers):
    _check(f"lr_multipliers[{i}]", rule, len(rule) == 2 and isinstance(
        rule[1], (int, float)) and rule[1] >= 0,
           "expected a (regex, multiplier >= 0) pair")
    _check_regex(f"lr_multipliers[{i}]", rule[0])
  unread_fields.check(c, default_config())
  if total_steps is not None:
    _check_run(c, total_steps, batch_size)
  return c


def _check_run(c: ml_collections.ConfigDict, total_steps: int,
               batch_size: int | None) -> None:
  """Checks that need the run's length or batch size."""
  if (isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral)
      or total_steps < 1):  # a library call's argument: configs were checked
    raise ValueError(f"jaxtrain.optim.build(total_steps={total_steps!r}): the "
                     "number of train steps, an int >= 1")
  _check("accumulate_steps", c.accumulate_steps,
         c.accumulate_steps <= total_steps, f"must be <= {total_steps} steps")
  if c.lr_scaling != "none" and not batch_size:
    raise ConfigError("optimizer.lr_scaling", c.lr_scaling,
                      "needs the batch size: build(..., batch_size=...)")
  schedule_config.resolve_warmup(c.schedule, total_steps)
