"""The train loop's schedule: dispatch steps, log, evaluate, checkpoint, stop.

Steps are dispatched one at a time, or `train.steps_per_dispatch` (k) at a time as
one `lax.scan` over a stacked block of batches, so small models are not bound by
per-step host overhead. Blocks stop at every event (log, eval, checkpoint, profile,
end); a shorter block runs the same compiled program with the extra steps masked,
so every step of a run goes through the same code whatever the block phase, and a
resumed run gives the same bits as an uninterrupted one.

Host work overlaps device work: dispatch is asynchronous, so reading the next
batches runs while the previous block computes; the host waits only at log,
checkpoint and eval points. The time spent waiting for data is logged.

Stage switches (`train.stages`) are events too: a new batch or image size compiles
the step once more, and the data, optimizer state and LR schedule go on by step.
Evaluations report the EMA weights beside the raw ones (`eval_ema/...`); with
`train.early_stopping` each evaluation may save the best state and stop the run,
which then ends with the best state (`jaxtrain.early_stopping`).
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxtrain import checkpoint as checkpoint_lib
from jaxtrain import ema as ema_lib
from jaxtrain import flops_meter
from jaxtrain import metrics as metrics_lib
from jaxtrain import step as step_lib
from jaxtrain import step_diagnostics
from jaxtrain.data import pipeline
from jaxtrain.evaluate import evaluate
from jaxtrain.settings import Settings

_LOGGED = ("loss", "accuracy", "top5_accuracy", "count", "skipped")


MAX_IN_FLIGHT = 2  # dispatches the host may queue ahead (see Loop._bound_in_flight)


@jax.jit
def _progress(step: jax.Array, sums: dict[str, jax.Array]) -> jax.Array:
  """(step, skip_run, max_skip_run, nonfinite_step) as one small int32 array."""
  return jnp.stack([step.astype(jnp.int32)] + [
      sums[k].astype(jnp.int32) for k in ("skip_run", "max_skip_run",
                                          "nonfinite_step")])


class TrainingHalted(RuntimeError):
  """Training stopped on purpose: non-finite steps (see `train.on_nonfinite`)."""


@dataclasses.dataclass
class Functions:
  """The jitted pieces the loop drives."""
  train_step: Callable[..., Any]          # (state, sums, batch) -> (state, sums)
  train_block: Callable[..., Any] | None  # (state, sums, block, n) -> (state, sums)
  eval_step: Callable[..., Any]           # (state, batch) -> sums
  batch_sharding: Any
  block_sharding: Any
  extra_args: tuple[Any, ...] = ()        # after the batch(es): teacher variables


class _NoClock:
  """No compile time known (a Loop built without a `console.CompileClock`)."""
  seconds = 0.0


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """The validated fields the loop acts on (``train.*`` and ``checkpoint.every``)."""
  batch_size: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  steps_per_dispatch: int
  profile_steps: tuple[int, int]
  on_nonfinite: str
  max_consecutive_skips: int
  restore_best: bool
  peak_tflops: float = 0.0  # 0: the device kind's (jaxtrain.peak_flops)

  @classmethod
  def from_config(cls, config: Settings) -> LoopSettings:
    """Reads a validated config (`jaxtrain.config.validate`)."""
    t = config.train
    start, stop = t.profile_steps
    return cls(batch_size=t.batch_size, log_every=t.log_every,
               eval_every=t.eval_every, checkpoint_every=config.checkpoint.every,
               steps_per_dispatch=t.steps_per_dispatch, profile_steps=(start, stop),
               on_nonfinite=t.on_nonfinite,
               max_consecutive_skips=t.max_consecutive_skips,
               restore_best=bool(t.early_stopping.restore_best),
               peak_tflops=float(t.peak_tflops))


class Loop:
  """Runs one experiment from its current step to the end (or a stop).

  `host` is the data iterator, or a `checkpoint.HostState` holding it and the
  early-stopping tracker (saved together in every checkpoint); `best` the
  `checkpoint.BestCheckpointer` when a metric is monitored; `settings` the
  fields it acts on (default: read from ``exp.settings``).
  """

  def __init__(self, exp, fns: Functions, host, ckpt, writer, watcher,
               profile_dir: str, best=None, clock=None,
               settings: LoopSettings | None = None):
    self.exp, self.fns = exp, fns
    # Typed once here (or by the caller), not re-read from the raw config per step.
    self.settings = settings or LoopSettings.from_config(exp.settings)
    self.host = host
    self.data_iter = getattr(host, "data_iter", host)
    self.tracker = getattr(host, "tracker", None)
    self.ckpt, self.writer, self.watcher, self.best = ckpt, writer, watcher, best
    self.profile_dir = profile_dir
    self.leaf_names: list[str] = []
    self.data_wait = 0.0
    self._tracing = False
    self._stage: int | None = None
    self._in_flight: collections.deque = collections.deque()
    # Console: compile time left out of steps/s and the ETA; what a signal stops at.
    self.clock = clock or _NoClock()
    self._compiled = False
    self._next_stop = 0
    self._stop_lock = threading.RLock()  # re-entered by a handler in this thread
    # (wall clock, compile seconds, step) at the start of the timed window.
    self._window = (0.0, 0.0, 0)
    self.finished = False  # ran to the end (or stopped early on its metric)
    self.flops = flops_meter.FlopsMeter(fns.batch_sharding.mesh.devices.flat[0],
                                        self.settings.peak_tflops)

  def evaluate(self, state) -> dict[str, float]:
    """Eval metrics of the raw weights, and of the EMA weights if there are some."""
    args = (self.exp.eval_source, self.exp.eval_batch_size, self.fns.batch_sharding)
    values = evaluate(self.fns.eval_step, state, *args)
    if state.ema is not None:
      values.update(evaluate(self.fns.eval_step, ema_lib.averaged(state), *args,
                             prefix="eval_ema"))
    return values

  def run(self, state, sums, stop_at: int | None):
    """Returns (state, metrics of the last log/eval step, or the best's)."""
    step, total = int(state.step), self.exp.total_steps
    self.leaf_names = [jax.tree_util.keystr(p) for p, _ in
                       jax.tree_util.tree_flatten_with_path(state.params)[0]]
    if step >= total or (self.tracker and self.tracker.should_stop):
      final = self.evaluate(state)
      self.writer.message(f"Already trained to step {step}; final evaluation: "
                          + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
      self.finished = True
      return self._best_or(state, step, final)
    end = min(total, stop_at or total)
    values, early = {}, False
    self._start_window(step)
    self._watch(step, end)
    while step < end:
      self._announce_stage(step)
      self._profile(step)
      n = self._block_length(step, end)
      state, sums = self._advance(state, sums, n)
      step += n
      self._bound_in_flight(state, sums)
      with self._stop_lock:  # the watcher's answer names the step decided here
        # A signal at the last step stops nothing: the run is complete.
        stopping = step < total and self.watcher.should_stop(step)
        self._next_stop = (step + self._block_length(step, end)
                           if step < end and not stopping else step)
      values = {}
      if step % self.settings.log_every == 0 or step == total:
        values = self._train_values(sums, step)
        sums = step_lib.reset(sums)
      if self._every(step, self.settings.eval_every) or step == total:
        values.update(self.evaluate(state))
        early = self._track(step, state, values)
      if values:
        self.writer.write(step, values)
        self._start_window(step)
      if self.ckpt.should_save(step) or step == end or stopping or early:
        self._check_nonfinite(jax.device_get(sums), step)
        if self.best is not None:
          self.best.wait()  # a checkpoint never refers to a best still being written
        self.ckpt.save(step, {"train": state, "metrics": sums}, self.host,
                       self.exp.settings)
      if stopping:
        self.ckpt.wait()
        if jax.process_count() > 1:
          # No process exits (128 + the signal number; a launcher such as srun
          # --kill-on-bad-exit then ends the others) before all have the checkpoint.
          multihost_utils.sync_global_devices("jaxtrain: stop checkpoint complete")
        self.watcher.stopped_at = step  # the command exits 128 + the signal number
        self.writer.message(f"Stopped by {self.watcher.reason} after step {step}; "
                            "checkpoint complete. Re-run the same command to resume.")
        break
      if early:
        break
    self._profile(step, final=True)
    self.finished = step == total or early
    if self.finished:
      return self._best_or(state, step, values)
    return state, values

  def _track(self, step: int, state, values: dict[str, float]) -> bool:
    """Feeds an evaluation to early stopping; returns whether to stop now."""
    t = self.tracker
    if t is None:
      return False
    if t.update(step, values[t.metric]):
      evals = {k: v for k, v in values.items() if k.startswith(("eval/", "eval_ema/"))}
      self.best.save(step, {"train": state}, evals)
    values["early_stopping/best_step"] = float(t.best_step)
    return t.should_stop

  def _best_or(self, state, step: int, values: dict[str, float]):
    """The run's result: the best checkpoint's state and metrics, else the last."""
    t = self.tracker
    if (t is None or t.best_step is None
        or not self.settings.restore_best):
      return state, values
    self.best.wait()
    target = checkpoint_lib.abstract_like({"train": state})
    restored, metrics = self.best.restore(t.best_step, target)
    why = (f"{t.metric} did not improve in {t.wait} evaluations; stopped at step "
           f"{step}" if t.should_stop else f"finished at step {step}")
    self.writer.message(f"Early stopping: {why}. Restored the best checkpoint: step "
                        f"{t.best_step}, {t.metric} {t.best:.4f}")
    return restored["train"], {**metrics, "early_stopping/best_step": t.best_step,
                               "early_stopping/last_step": step}

  def _announce_stage(self, step: int) -> None:
    """Says when a run starts in, or enters, a stage of `train.stages`."""
    plan = self.exp.plan
    if plan is None or len(plan.stages) < 2 or plan.stage_index(step) == self._stage:
      return
    self._stage = i = plan.stage_index(step)
    stage = plan.stages[i]
    size = stage.image_size or "as the transforms give"
    self.writer.message(f"Stage {i + 1}/{len(plan.stages)} from step "
                        f"{stage.from_step}: batch {stage.batch_size}, image size "
                        f"{size}")

  @staticmethod
  def _every(step: int, period: int) -> bool:
    return bool(period) and step % period == 0

  def _periods(self) -> list[int]:
    s = self.settings
    return [p for p in (s.log_every, s.eval_every, s.checkpoint_every) if p]

  def _block_length(self, step: int, end: int) -> int:
    """Steps in the next dispatch: up to k, never past an event or the end."""
    k = self.settings.steps_per_dispatch
    n = min(k, end - step)
    for period in self._periods():
      n = min(n, period - step % period)
    start, stop = self.settings.profile_steps
    marks = [m for m in (start, stop) if stop > start]
    marks += list(self.exp.plan.boundaries) if self.exp.plan else []
    for mark in marks:
      if mark > step:
        n = min(n, mark - step)
    return n

  def _bound_in_flight(self, state, sums) -> None:
    """Lets the host run at most `MAX_IN_FLIGHT` dispatches ahead of the devices,
    and halts within that many dispatches of a step `train.on_nonfinite` stops at.

    Dispatch is asynchronous and, with fast input, nothing else stops the host from
    queueing hundreds of steps between log points. On XLA:CPU with several devices
    each queued SPMD step holds device threads at its all-reduce rendezvous; a deep
    queue starves one device's thread and XLA aborts the process after 40 s (seen
    with 8 simulated devices on 2 cores). A few scalars copied from each dispatch's
    output (the state and sums themselves are donated to the next dispatch) mark
    its completion and say whether it ran into a non-finite step or too many
    skipped ones, so the halt comes at that step, not at the next log point.
    """
    self._in_flight.append(_progress(state.step, sums))
    if len(self._in_flight) > MAX_IN_FLIGHT:
      step, skip_run, max_skip_run, bad_step = (
          int(v) for v in np.asarray(self._in_flight.popleft()))
      if self._halt_reason(step, skip_run, max_skip_run, bad_step, []) is not None:
        self._check_nonfinite(jax.device_get(sums), step, (skip_run, max_skip_run,
                                                             bad_step))

  def _watch(self, step: int, end: int) -> None:
    """Tells the preemption watcher what a signal now leads to (its first answer)."""
    self._next_stop = step + self._block_length(step, end) if step < end else step
    many = jax.process_count() > 1

    def describe() -> str:
      if many:
        return ("finishing the current step (every process stops at the same one) "
                "and saving a checkpoint")
      with self._stop_lock:
        return f"finishing step {self._next_stop} and saving a checkpoint"

    self.watcher.describe_stop = describe

  def _advance(self, state, sums, n: int):
    """Dispatches the next n steps; the first dispatch compiles, and says so."""
    if self._compiled:
      return self._dispatch(state, sums, n)
    self.writer.message("Compiling the train step...")
    before = self.clock.seconds
    state, sums = self._dispatch(state, sums, n)
    self._compiled = True
    if isinstance(self.clock, _NoClock):
      self.writer.message("Compiled; training.")
    else:
      self.writer.message(f"Compiled in {self.clock.seconds - before:.1f} s; training.")
    self.writer.message(self.flops.describe())
    return state, sums

  def _next_local(self):
    t = time.perf_counter()
    batch = next(self.data_iter)
    self.data_wait += time.perf_counter() - t
    return batch

  def _dispatch(self, state, sums, n: int):
    extra = self.fns.extra_args
    step = self.fns.train_step
    if self.fns.train_block is None:
      batch = pipeline.to_global(self._next_local(), self.fns.batch_sharding)
      self.flops.count(flops_meter.batch_key(batch), 1,
                       lambda: step.lower(state, sums, batch, *extra))
      return step(state, sums, batch, *extra)
    k = self.settings.steps_per_dispatch
    local = [self._next_local() for _ in range(n)]
    local += [local[-1]] * (k - n)  # masked out inside the block
    block = pipeline.to_global({key: np.stack([b[key] for b in local])
                                for key in local[0]}, self.fns.block_sharding)
    one = flops_meter.one_step_batch(block, self.fns.batch_sharding)
    self.flops.count(flops_meter.batch_key(one), n,
                     lambda: step.lower(state, sums, one, *extra))
    return self.fns.train_block(state, sums, block, np.int32(n), *extra)

  def _profile(self, step: int, final: bool = False) -> None:
    """Starts/stops a JAX profiler trace for steps [start, stop) of the run."""
    start, stop = self.settings.profile_steps
    if stop <= start or jax.process_index() != 0:
      return
    if step == start and not final and not self._tracing:
      jax.profiler.start_trace(self.profile_dir)
      self._tracing = True
      self.writer.message(f"Profiling steps {start}..{stop} into {self.profile_dir}")
    elif self._tracing and (step >= stop or final):
      jax.effects_barrier()
      jax.profiler.stop_trace()
      self._tracing = False

  def _start_window(self, step: int) -> None:
    """Starts timing the steps after `step` (after a write: an evaluation's time
    is no step's, and the rates count only the steps timed since)."""
    self._window = (time.perf_counter(), self.clock.seconds, step)
    self.data_wait = 0.0
    self.flops.reset()

  def _train_values(self, sums, step: int):
    # The clock stops after the fetch: the host dispatches ahead of the device,
    # and steps still queued at the log point belong to this window. Compile time
    # is left out: it is no measure of the step (nor of the time still to go).
    fetched = jax.device_get(sums)
    wall, compiling, last = self._window
    elapsed = max(time.perf_counter() - wall - (self.clock.seconds - compiling), 1e-6)
    self._check_nonfinite(fetched, step)
    window = {k: v for k, v in fetched.items() if k in _LOGGED}
    values = metrics_lib.averages(window, "train")
    values.update(step_diagnostics.averages(fetched))  # train.diagnostics
    rate = (step - last) / elapsed
    values["train/learning_rate"] = float(self.exp.lr_schedule(step - 1))
    values["train/steps_per_sec"] = rate
    plan = self.exp.plan
    rows = ((plan.rows_before(step) - plan.rows_before(last)) if plan
            else (step - last) * self.settings.batch_size)
    values["train/examples_per_sec"] = rows / elapsed
    values["train/data_wait_fraction"] = min(self.data_wait / elapsed, 1.0)
    values.update(self.flops.values(elapsed))
    return values

  def _check_nonfinite(self, fetched, step: int, progress=None) -> None:
    """Halts on a non-finite step (halt mode) or too many skips in a row (skip).

    `fetched` are the metric sums after `step` (for the parameter names);
    `progress` the (skip_run, max_skip_run, nonfinite_step) of an earlier
    dispatch ending at `step`, when the halt was found there.
    """
    if progress is None:
      progress = (int(fetched["skip_run"]), int(fetched["max_skip_run"]),
                  int(fetched["nonfinite_step"]))
    leaves = [n for n, bad in zip(self.leaf_names, fetched["nonfinite_leaves"]) if bad]
    reason = self._halt_reason(step, *progress, leaves)
    if reason is not None:
      raise TrainingHalted(reason)

  def _halt_reason(self, step: int, skip_run: int, max_skip_run: int,
                   bad_step: int, leaves: list[str]) -> str | None:
    """Why the run must stop, given the skip counters after `step`; None: go on.

    `skip_run` is the run of skipped steps ending at `step`, `max_skip_run` the
    longest since the last log step, `bad_step` the first non-finite step's index
    since then (`step_lib.NO_STEP`: none).
    """
    if bad_step == int(step_lib.NO_STEP):
      return None
    where = (f"non-finite gradients in {', '.join(leaves[:8])}" if leaves
             else "a non-finite loss")
    if self.settings.on_nonfinite == "halt":
      return (f"step {bad_step + 1} had {where}; its update was dropped and no "
              "checkpoint holds it. Lower optimizer.learning_rate or add "
              "optimizer.grad_clip_norm, or set train.on_nonfinite=skip")
    limit = self.settings.max_consecutive_skips
    if skip_run >= limit:  # the run goes on at `step`: it reached the limit here
      first = step - skip_run + 1
      last = first + limit - 1
      span = f"steps {first} to {last}"
    elif max_skip_run >= limit:  # it ended inside one dispatch of k > limit steps
      span = f"{max_skip_run} steps in a row between steps {bad_step + 1} and {step}"
      last = step
    else:
      return None
    return (f"{span} were skipped ({where}; train.max_consecutive_skips={limit}). "
            f"Halted at step {last}; no checkpoint holds it or a later step. Lower "
            "optimizer.learning_rate or add optimizer.grad_clip_norm, or check the "
            "data those steps read")
