"""Learning-rate schedules that Optax lacks, each a jit-traceable `optax.Schedule`
(step -> value).

Where Optax has the exact schedule (cosine, warmup-cosine, one-cycle, exponential,
piecewise, polynomial) it is used as is, by name, in `schedule_config.py`; this
module holds only the missing ones and the warmup wrapper. Formulas follow TF's
`learning_rate_decay.py` where TF defines them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_Step = jax.typing.ArrayLike


def _clamped_step(step: _Step, decay_steps: int) -> jax.Array:
  # TF clamps the step to decay_steps before every decay formula; the lower clamp
  # only matters for the branch `optax.join_schedules` evaluates and discards.
  return jnp.clip(jnp.asarray(step, jnp.float32), 0, decay_steps)


def _linear_cosine_factor(completed: jax.Array, linear: jax.Array,
                          num_periods: float, alpha: float,
                          beta: float) -> jax.Array:
  cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * 2.0 * num_periods * completed))
  return (alpha + linear) * cosine + beta


def linear_cosine_decay_schedule(
    init_value: float, decay_steps: int, num_periods: float = 0.5,
    alpha: float = 0.0, beta: float = 0.001) -> optax.Schedule:
  """TF's linear cosine decay.

  value = init_value * ((alpha + linear) * cosine + beta), where, with t = min(step,
  decay_steps), linear = (decay_steps - t) / decay_steps and
  cosine = 0.5 * (1 + cos(pi * 2 * num_periods * t / decay_steps)).

  Args:
    init_value: initial learning rate.
    decay_steps: number of steps to decay over; the value is constant afterwards.
    num_periods: number of cosine periods in the decaying part.
    alpha: see formula.
    beta: see formula (the floor of the schedule, relative to init_value).

  Returns:
    A schedule step -> value.

  References:
    Bello et al., Neural Optimizer Search with Reinforcement Learning, 2017,
    arXiv 1709.07417; TF `tf.compat.v1.train.linear_cosine_decay`.
  """
  _check_positive("decay_steps", decay_steps)

  def schedule(step: _Step) -> jax.Array:
    completed = _clamped_step(step, decay_steps) / decay_steps
    return init_value * _linear_cosine_factor(completed, 1.0 - completed,
                                              num_periods, alpha, beta)
  return schedule


def noisy_linear_cosine_decay_schedule(
    init_value: float, decay_steps: int, key: jax.Array,
    initial_variance: float = 1.0, variance_decay: float = 0.55,
    num_periods: float = 0.5, alpha: float = 0.0,
    beta: float = 0.001) -> optax.Schedule:
  """TF's noisy linear cosine decay: the linear term gets annealed Gaussian noise.

  As `linear_cosine_decay_schedule` with linear + eps_t, eps_t ~ N(0, v_t),
  v_t = initial_variance / (1 + t)**variance_decay, t = min(step, decay_steps). The
  noise is a deterministic function of (key, step): `fold_in(key, step)`, so the
  value logged for a step is the value used at that step.

  Args:
    init_value, decay_steps, num_periods, alpha, beta: as in
      `linear_cosine_decay_schedule`.
    key: a `jax.random` key.
    initial_variance: variance of the noise at step 0.
    variance_decay: decay exponent of the noise variance.

  Returns:
    A schedule step -> value.

  References:
    Bello et al. 2017, arXiv 1709.07417 (noise as in Neelakantan et al. 2015,
    arXiv 1511.06807); TF `tf.compat.v1.train.noisy_linear_cosine_decay`.
  """
  _check_positive("decay_steps", decay_steps)

  def schedule(step: _Step) -> jax.Array:
    t = _clamped_step(step, decay_steps)
    completed = t / decay_steps
    std = jnp.sqrt(initial_variance / (1.0 + t) ** variance_decay)
    sample_key = jax.random.fold_in(key, jnp.asarray(step).astype(jnp.uint32))
    noise = std * jax.random.normal(sample_key, (), jnp.float32)
    return init_value * _linear_cosine_factor(completed, 1.0 - completed + noise,
                                              num_periods, alpha, beta)
  return schedule


def inverse_time_decay_schedule(init_value: float, decay_steps: int,
                                decay_rate: float,
                                staircase: bool = False) -> optax.Schedule:
  """TF's inverse time decay: init_value / (1 + decay_rate * step / decay_steps).

  Args:
    init_value: initial learning rate.
    decay_steps: steps per unit of decay.
    decay_rate: decay rate.
    staircase: if True, step / decay_steps is floored (decay in discrete jumps).

  Returns:
    A schedule step -> value.

  References:
    TensorFlow `tf.compat.v1.train.inverse_time_decay` (`learning_rate_decay.py`).
  """
  _check_positive("decay_steps", decay_steps)

  def schedule(step: _Step) -> jax.Array:
    p = jnp.asarray(step, jnp.float32) / decay_steps
    if staircase:
      p = jnp.floor(p)
    return init_value / (1.0 + decay_rate * p)
  return schedule


def mlperf_polynomial_schedule(base_lr: float, warmup_steps: int,
                               total_steps: int, end_lr: float = 1e-4,
                               power: float = 2.0) -> optax.Schedule:
  """The MLPerf ResNet-50 (LARS) schedule: linear warmup, then polynomial decay.

  base_lr * step / warmup_steps while step <= warmup_steps, then
  end_lr + (base_lr - end_lr) * (1 - min(step - warmup_steps, D) / D)**power with
  D = total_steps - warmup_steps + 1 (the reference implementation's off-by-one).

  Args:
    base_lr: peak learning rate, reached at step == warmup_steps.
    warmup_steps: length of the linear warmup (0: no warmup, start at base_lr).
    total_steps: total number of training steps.
    end_lr: learning rate at the end of the decay.
    power: exponent of the polynomial decay.

  Returns:
    A schedule step -> value.

  References:
    Kumar et al., Scale MLPerf-0.6 models on Google TPU-v3 Pods, 2019,
    arXiv 1909.09756; MLPerf training reference `resnet` (LARS).
  """
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"need 0 <= warmup_steps={warmup_steps} <= "
                     f"total_steps={total_steps}")
  decay_steps = total_steps - warmup_steps + 1

  def schedule(step: _Step) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    done = jnp.minimum(step - warmup_steps, decay_steps) / decay_steps
    decay = end_lr + (base_lr - end_lr) * (1.0 - done) ** power
    if not warmup_steps:  # step 0 is then the start of the decay: base_lr.
      return decay
    return jnp.where(step <= warmup_steps, base_lr * step / warmup_steps, decay)
  return schedule


def with_linear_warmup(schedule: optax.Schedule, peak_value: float,
                       warmup_steps: int, init_value: float = 0.0) -> optax.Schedule:
  """Linear warmup from `init_value` to `peak_value` over `warmup_steps`, then `schedule`.

  Args:
    schedule: the schedule after warmup; it sees the step counted from the end of
      warmup, so it should start at `peak_value`.
    peak_value: value reached at step == warmup_steps.
    warmup_steps: warmup length; 0 returns `schedule` unchanged.
    init_value: value at step 0 (Goyal et al. start at the small-batch LR, 1/k of
      the peak).

  Returns:
    A schedule step -> value.

  References:
    Goyal et al., Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour, 2017,
    arXiv 1706.02677 (gradual warmup).
  """
  if warmup_steps <= 0:
    return schedule
  warmup = optax.linear_schedule(init_value, peak_value, warmup_steps)
  return optax.join_schedules([warmup, schedule], [warmup_steps])


def warmup_polynomial_schedule(peak_value: float, warmup_steps: int,
                               total_steps: int, end_value: float = 0.0,
                               power: float = 1.0) -> optax.Schedule:
  """Linear warmup from 0, then polynomial decay to `end_value` at `total_steps`.

  Args:
    peak_value: value at the end of warmup.
    warmup_steps: warmup length.
    total_steps: total schedule length, including warmup.
    end_value: final value.
    power: polynomial exponent; 1.0 is linear decay.

  Returns:
    A schedule step -> value.

  References:
    Goyal et al. 2017, arXiv 1706.02677 (gradual warmup); the decay is
    `optax.polynomial_schedule` (TF's `polynomial_decay`).
  """
  decay = optax.polynomial_schedule(peak_value, end_value, power,
                                    total_steps - warmup_steps)
  return with_linear_warmup(decay, peak_value, warmup_steps)


def sgdr_warm_restarts_schedule(peak_value: float, first_cycle_steps: int,
                                total_steps: int, cycle_mult: float = 1.0,
                                end_value: float = 0.0,
                                warmup_steps: int = 0) -> optax.Schedule:
  """SGDR: cosine cycles restarting at `peak_value`, cycle i lasting T0 * mult**i.

  Cycles are generated until `total_steps` is covered; each cycle is an
  `optax.warmup_cosine_decay_schedule` (warmup from 0 when `warmup_steps` > 0).

  Args:
    peak_value: value at the start of every cycle.
    first_cycle_steps: length T0 of the first cycle.
    total_steps: steps to cover.
    cycle_mult: growth factor of the cycle length (T_mult); >= 1.
    end_value: value at the end of every cycle.
    warmup_steps: warmup at the start of every cycle.

  Returns:
    A schedule step -> value.

  References:
    Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts,
    2016, arXiv 1608.03983.
  """
  _check_positive("first_cycle_steps", first_cycle_steps)
  if cycle_mult < 1.0:
    raise ValueError(f"cycle_mult={cycle_mult} must be >= 1")
  kwargs, covered, length = [], 0, float(first_cycle_steps)
  while covered < total_steps or not kwargs:
    steps = max(int(round(length)), warmup_steps + 1)
    kwargs.append(dict(init_value=0.0 if warmup_steps else peak_value,
                       peak_value=peak_value, warmup_steps=warmup_steps,
                       decay_steps=steps, end_value=end_value))
    covered, length = covered + steps, length * cycle_mult
  return optax.sgdr_schedule(kwargs)


def _check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{name}={value} must be > 0")
