"""`jaxtrain lr-find`: the learning-rate range test.

    jaxtrain lr-find --config=experiments/digits_cnn.py --workdir=/tmp/lr_find

One short run whose learning rate grows exponentially from `min_lr` to `max_lr`
over `num_steps` steps, lr_k = min_lr * (max_lr / min_lr)^(k / (num_steps - 1)),
recording the train loss of every step, smoothed by a bias-corrected exponential
moving average (beta = `smoothing`). The test stops on divergence: a non-finite
step, a smoothed loss above `divergence_factor` times its minimum, or one 20% above
where it started. The suggested
learning rate is the one at the minimum smoothed loss divided by 10, one order of
magnitude below where the loss stops improving (Smith 2017); the learning rate of
the steepest descent is reported too.

On many hosts (`--num_processes` etc., as `jaxtrain train`) every process runs the
test and process 0 writes lr_find.csv and lr_find.png, through `etils.epath`, so
--workdir may be gs://BUCKET/PATH.

The run uses the experiment's own optimizer chain (`optim.build`) with an
`exponential` schedule, so LARS, clipping, masks etc. behave as in training. With a
study config, `--optimizer=LABEL` picks one of its optimizers.

References:
  Smith, Cyclical Learning Rates for Training Neural Networks, 2017,
  arXiv 1506.01186 (the LR range test). Smith, A Disciplined Approach to Neural
  Network Hyper-Parameters, 2018, arXiv 1803.09820 (the exponential form).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxtrain import init_from, optim, runner, step as step_lib
from jaxtrain import program as program_lib
from jaxtrain.data import pipeline
from jaxtrain.errors import ConfigError
from jaxtrain.optim import schedule_config
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding
from jaxtrain.settings import Settings
from jaxtrain.study import grid, plots


@dataclasses.dataclass
class RangeTest:
  """The recorded test: one entry per completed step."""
  learning_rates: list[float]
  losses: list[float]
  smoothed: list[float]
  diverged: bool
  suggestion: float   # LR at the minimum smoothed loss / 10
  steepest: float     # LR where the smoothed loss falls fastest per log(LR)


def range_config(config: ml_collections.ConfigDict | Settings, min_lr: float, max_lr: float,
                 num_steps: int, optimizer: str = "") -> ml_collections.ConfigDict:
  """The experiment config of the test: exponential LR, `num_steps` steps."""
  experiment, study = grid.split(config)
  if optimizer:
    study = study or grid.study_defaults()
    dropped = grid.dropped_fields(experiment, study, optimizer)
    if dropped:
      print(f"lr-find: optimizer {optimizer!r} does not read "
            f"{', '.join(dropped)}; the test uses its defaults there")
    experiment.optimizer = grid.optimizer_section(experiment, study, optimizer)
  for flag, lr in (("--min_lr", min_lr), ("--max_lr", max_lr)):
    if not (math.isfinite(lr) and lr > 0):
      raise ConfigError(flag, lr, "use a finite learning rate > 0")
  if not min_lr < max_lr:
    raise ConfigError("--min_lr", min_lr, f"need --min_lr < --max_lr={max_lr}")
  if not 2 <= num_steps <= 2**31 - 1:
    raise ConfigError("--num_steps", num_steps, "use at least 2 steps")
  c = experiment.optimizer
  c.learning_rate, c.lr_scaling = float(min_lr), "none"
  c.base_batch_size = optim.default_config().base_batch_size  # read by no rule now
  c.schedule = s = schedule_config.schedule_defaults()  # the test's own schedule
  s.name, s.decay_rate, s.decay_steps = "exponential", max_lr / min_lr, num_steps - 1
  s.staircase, s.end_value = False, float(max_lr)
  s.warmup_steps, s.warmup_fraction = 0, 0.0
  experiment.train.num_steps, experiment.train.num_epochs = num_steps, 0.0
  return experiment


def _suggestions(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
  if not lrs:
    return math.nan, math.nan
  best = int(np.argmin(smoothed))
  if len(lrs) < 3:
    return lrs[best] / 10, lrs[best]
  slope = np.gradient(np.asarray(smoothed), np.log(np.asarray(lrs)))
  first = min(_SETTLE, best)  # the EMA's first values are mostly noise
  return lrs[best] / 10, lrs[first + int(np.argmin(slope[first:best + 1]))]


_SETTLE = 10  # steps before the smoothed loss is a fair reference


def _diverged(smoothed: list[float], factor: float) -> bool:
  """Above `factor` x its minimum (fastai's rule), or 20% above the highest of its
  first `_SETTLE` values: a collapsed classifier's loss plateaus near ln(classes),
  well under 4x a good minimum but clearly above where the test started."""
  if smoothed[-1] > factor * min(smoothed):
    return True
  return len(smoothed) > _SETTLE and smoothed[-1] > 1.2 * max(smoothed[:_SETTLE])


def check_smoothing(smoothing: float, divergence_factor: float) -> None:
  """The EMA coefficient is in [0, 1) (its bias correction divides by 1 - beta^k)
  and the divergence factor > 1 (its test compares with the minimum)."""
  if not 0 <= smoothing < 1:
    raise ConfigError("--smoothing", smoothing, "use a coefficient in [0, 1), e.g. "
                      "0.98 (0: no smoothing)")
  if not (math.isfinite(divergence_factor) and divergence_factor > 1):
    raise ConfigError("--divergence_factor", divergence_factor, "use a finite factor "
                      "> 1, e.g. 4 (the test stops when the smoothed loss exceeds it "
                      "times its minimum)")


def run_range_test(config: ml_collections.ConfigDict, smoothing: float = 0.98,
                   divergence_factor: float = 4.0, devices=None) -> RangeTest:
  """Runs the test on a config from `range_config`."""
  check_smoothing(smoothing, divergence_factor)
  exp = runner.build(config, devices)
  rules = config.sharding.rules
  # No weight-average copy: the test reads only the loss. Distillation: the loss
  # needs the teacher's logits, so its variables come along (`teacher_args`).
  exp = dataclasses.replace(exp, ema=None)
  program = program_lib.compile_program(exp)
  # With `init_from`, the weights a fine-tune would start from.
  state = init_from.start(exp, program, program.state, None, print)
  teacher = program.teacher_args
  batch_sh = mesh_lib.batch_sharding(exp.mesh)
  it = pipeline.train_iterator(exp.train_source, config.train.batch_size, config.seed)
  lrs, losses, smoothed, diverged, avg = [], [], [], False, 0.0
  try:
    with sharding.activate(exp.mesh, rules):
      train_fn, sums = program.train_fn, program.init_sums()
      for k in range(exp.total_steps):
        state, sums = train_fn(state, sums, pipeline.to_global(next(it), batch_sh),
                               *teacher)
        fetched = jax.device_get(sums)
        sums = step_lib.reset(sums)
        loss = float(fetched["loss"] / fetched["count"])
        if (int(fetched["nonfinite_step"]) != int(step_lib.NO_STEP)
            or not math.isfinite(loss)):
          diverged = True
          break
        avg = smoothing * avg + (1 - smoothing) * loss
        value = avg / (1 - smoothing ** (k + 1))
        lrs.append(float(exp.lr_schedule(k)))
        losses.append(loss)
        smoothed.append(value)
        if _diverged(smoothed, divergence_factor):
          diverged = True
          break
  finally:
    it.close()
  return RangeTest(lrs, losses, smoothed, diverged, *_suggestions(lrs, smoothed))


def write(result: RangeTest, workdir: str) -> str:
  """Writes lr_find.csv and lr_find.png into `workdir`; returns the PNG's path."""
  root = epath.Path(workdir)
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
  for i, row in enumerate(zip(result.learning_rates, result.losses, result.smoothed)):
    w.writerow([i, *row])
  (root / "lr_find.csv").write_text(f.getvalue(), encoding="utf-8")
  return plots.lr_range(result.learning_rates, result.smoothed, result.suggestion,
                        root / "lr_find.png")
