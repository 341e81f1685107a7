"""The sweep runner: every trial of a study, steps-to-target, results that resume.

    jaxtrain sweep --config=experiments/scaling/digits_cnn.py --workdir=/tmp/scaling

Trials are run in groups (`grid.groups`): trials that differ only in hyperparameters
share one vectorized program (`vectorized.GroupProgram`). Every `eval_every` steps a
trial's train metrics (averaged since the last check) and eval metrics are logged to
its learning curve and checked: a non-finite step or a train loss above
`study.divergence_loss` marks it diverged (and ends it); the first step meeting the
target is its steps-to-target (Shallue et al. 2018, arXiv 1811.03600), and with
`study.stop_at_target` ends it. A group ends when all its trials have ended or at the
step budget.

After each group `DIR/results.json` (with learning curves) and `DIR/results.csv` are
rewritten (`study.results`: atomically, by process 0 only; DIR may be a local
directory or gs://BUCKET/PATH). A re-run with the same study and workdir skips every
trial already there (a trial's id hashes its whole config); a group interrupted by
SIGTERM/SIGINT is run again from its start. A re-run with another target recomputes
steps-to-target from the stored curves; one with another experiment, other outcome
rules or a grid that drops stored trials is refused (`rerun`).
"""
from __future__ import annotations

import json
import math
import time
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxtrain import compile_cache, runner, writers
from jaxtrain.data import pipeline, sources
from jaxtrain.errors import ConfigError
from jaxtrain.study import grid, rerun, results, targets, vectorized
from jaxtrain.study.results import Record

class _Track:
  """One trial's progress inside a running group."""

  def __init__(self, trial: grid.Trial):
    self.trial, self.curve = trial, []
    self.diverged, self.pruned, self.done_at, self.reached = False, False, None, None


def _check(track: _Track, row: dict[str, float], target: targets.Target,
           divergence_loss: float, stop_at_target: bool, elapsed: float) -> None:
  """Updates a trial with one evaluated step: divergence, target, done."""
  track.curve.append(row)
  loss = row.get("train/loss", 0.0)
  if row.get("train/nonfinite") or not math.isfinite(loss) or loss > divergence_loss:
    track.diverged, track.done_at = True, elapsed
  elif track.reached is None and target.holds(row.get(target.metric)):
    track.reached = row["step"]
    if stop_at_target:
      track.done_at = elapsed


def _open_trackers(trials: Sequence[grid.Trial], workdir: str) -> list[list]:
  """Each trial's trackers (`logging.writers`), on process 0: one tracked run per
  trial, named by its id, its run ids in ``WORKDIR/trackers/<id>``, grouped under
  the sweep's name (the workdir's last part)."""
  out = []
  for t in trials:
    if (not workdir or jax.process_index() != 0 or
        not set(t.config.logging.writers) & set(writers.TRACKERS)):
      out.append([])
      continue
    where = epath.Path(workdir) / "trackers" / t.id
    where.mkdir(parents=True, exist_ok=True)
    out.append(writers.make_trackers(t.config, str(where),
                                     group=epath.Path(workdir).name, name=t.id))
  return out


def run_group(trials: Sequence[grid.Trial], target: targets.Target,
              study: ml_collections.ConfigDict, devices=None,
              watcher=None, workdir: str = "") -> list[Record] | None:
  """Runs one group of trials to the end; None if `watcher` asked to stop.

  With `workdir`, every evaluated row of a trial also goes to the trackers its
  `logging.writers` lists (`_open_trackers`).
  """
  t0 = time.perf_counter()
  program = vectorized.build_group([t.config for t in trials], devices)
  exp = program.exp
  batch_size, num_steps = trials[0].batch_size, trials[0].num_steps
  every = trials[0].eval_every
  limit = study.divergence_loss or 10 * math.log(exp.train_source.num_classes)
  iters = [pipeline.train_iterator(exp.train_source, batch_size, seed)
           for seed in program.seeds]
  tracks = [_Track(t) for t in trials]
  step = 0
  tracked = _open_trackers(trials, workdir)
  try:
    while step < num_steps and any(t.done_at is None for t in tracks):
      program.step([next(it) for it in iters])
      step += 1
      if watcher is not None and watcher.should_stop(step):
        return None
      if step % every and step != num_steps:
        continue
      train, evals = program.train_metrics(), program.evaluate()
      elapsed = time.perf_counter() - t0
      for track, tr, ev, trackers in zip(tracks, train, evals, tracked):
        if track.done_at is None:
          _check(track, {"step": step, **tr, **ev}, target, limit,
                 study.stop_at_target, elapsed)
          for tracker in trackers:
            tracker.write(step, {**tr, **ev})
      if study.prune and any(t.reached for t in tracks):
        for t in tracks:  # They can no longer be the fastest of the group.
          if t.reached is None and t.done_at is None:
            t.pruned, t.done_at = True, elapsed
  finally:
    for it in iters:
      it.close()
    for tracker in (t for trackers in tracked for t in trackers):
      tracker.close()
  elapsed = time.perf_counter() - t0
  return [_record(t, step, elapsed, trials, target) for t in tracks]


def _record(track: _Track, step: int, elapsed: float, group: Sequence[grid.Trial],
            target: targets.Target) -> Record:
  trial = track.trial
  reached = targets.steps_to_target(track.curve, target)
  status = ("reached" if reached is not None else "diverged" if track.diverged
            else "pruned" if track.pruned else "not_reached")
  last = track.curve[-1] if track.curve else {}
  return {**trial.coordinates(), "status": status, "steps_to_target": reached,
          "examples_to_target": None if reached is None else reached * trial.batch_size,
          "diverged": track.diverged,
          "steps_run": int(last.get("step", step)),
          "wall_time_s": round(track.done_at or elapsed, 3),
          "group_size": len(group),
          "group": group[0].id,  # pruning acts within a group (rerun.reuse)
          "final": {k: v for k, v in last.items() if k != "step"},
          "curve": track.curve}


def _describe(group: Sequence[grid.Trial]) -> str:
  t = group[0]
  lrs = sorted({g.learning_rate for g in group})
  lr = f"lr {lrs[0]:.3g}" + (f"..{lrs[-1]:.3g}" if len(lrs) > 1 else "")
  return (f"batch {t.batch_size}, {t.optimizer}, {len(group)} trial"
          f"{'s' if len(group) > 1 else ''} ({lr}), {t.num_steps} steps max")


def _outcome(r: Record) -> str:
  if r["status"] == "reached":
    return (f"reached at step {r['steps_to_target']} "
            f"({r['examples_to_target']} examples)")
  return r["status"].replace("_", " ") + f" after {r['steps_run']} steps"


def _finished(trials: Sequence[grid.Trial], done: dict[str, Record]) -> list[bool]:
  """Which trials are in the results; on many hosts, process 0's view for all."""
  finished = np.asarray([t.id in done for t in trials])
  if jax.process_count() > 1:  # Only process 0 writes results; all run the same.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    finished = multihost_utils.broadcast_one_to_all(finished)
  return [bool(f) for f in finished]


def _check_target_metric(trial: grid.Trial, target: targets.Target,
                         devices=None) -> None:
  """The target's metric must be one the trials log (traced, nothing compiled)."""
  names = runner.eval_metric_names(runner.build(trial.config, devices))
  known = [*(f"eval/{n}" for n in names), *(f"train/{n}" for n in names),
           "train/skipped", "train/nonfinite"]
  if target.metric not in known:
    raise ConfigError("study.target", str(target), f"the trials report no metric "
                      f"'{target.metric}'; name one they do", choices=known)
  if target.metric.endswith("accuracy") and not (
      0 <= target.value <= 1 and not (target.value == 1 and target.op == ">")
      and not (target.value == 0 and target.op == "<")):
    raise ConfigError("study.target", str(target), "an accuracy is in [0, 1], so "
                      "no trial could meet this; e.g. 'eval/accuracy >= 0.95'")


def _agree(check: Callable[[], None]) -> None:
  """Runs `check` (which may raise ConfigError); on many hosts process 0's verdict
  holds for all (only it writes results.json; the others may have none)."""
  error = None
  try:
    check()
  except ConfigError as e:
    error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    refused = bool(multihost_utils.broadcast_one_to_all(np.asarray(error is not None)))
    if refused and error is None:
      raise ConfigError("--workdir", "", "process 0 refused to reuse its "
                        "results.json (its message says why)")
    error = error if refused else None
  if error is not None:
    raise error


def _watch(watcher, workdir: str) -> None:
  """Tells the preemption watcher what a signal leads to (its first answer)."""
  if watcher is None:
    return
  watcher.announce = jax.process_index() == 0
  watcher.multiprocess = jax.process_count() > 1
  path = epath.Path(workdir) / results.RESULTS_JSON
  watcher.describe_stop = lambda: (
      f"stopping after the current step; the finished trials are kept in {path} "
      "and the group in progress runs again on a re-run")


def _refuse_init_from(section: ml_collections.ConfigDict) -> None:
  """Trials start from their own seeds' init: `init_from` would not be read."""
  for field in ("workdir", "file"):
    if section[field]:
      raise ConfigError(f"init_from.{field}", section[field], "a sweep trains "
                        "every trial from scratch and does not read init_from; "
                        "set it to '' (jaxtrain train and lr-find read it)")


def run_study(config: ml_collections.ConfigDict, workdir: str, devices=None,
              watcher=None, log: Callable[[str], None] = print) -> list[Record]:
  """Runs (or resumes) the study in `workdir`; returns its trial records.

  Args:
    config: a study config (experiment + `study`), validated by `grid.load`.
    workdir: results.json, results.csv, plots and report.md go here.
    devices: devices of each trial's mesh (default: all).
    watcher: has `should_stop(step) -> bool` (the preemption watcher); when it
      says stop, finished trials are kept and the run returns early.
    log: progress lines.

  Its programs are cached as `train.compilation_cache_dir` says (by default in
  `workdir/compile_cache`): groups of the same size compile identical
  initialization and evaluation programs, and a resumed sweep recompiles nothing
  it compiled before.
  """
  experiment, _ = grid.split(config)
  _refuse_init_from(experiment.init_from)
  runner.check_workdir(workdir)
  with compile_cache.for_run(experiment.train.compilation_cache_dir,
                             workdir) as cache:
    records = _run_trials(config, workdir, devices, watcher, log)
  if cache is not None and jax.process_index() == 0:
    log(cache.summary())
  return records


def _run_trials(config: ml_collections.ConfigDict, workdir: str, devices,
                watcher, log: Callable[[str], None]) -> list[Record]:
  """`run_study`'s work: the trials not yet in results.json, group by group."""
  experiment, study = grid.split(config)
  target = targets.parse(study.target)
  train_source = sources.get_source(experiment.data, experiment.data.train_split)
  trials = grid.make_trials(config, len(train_source))
  for label in study.optimizers:
    dropped = grid.dropped_fields(experiment, study, label)
    if dropped:
      log(f"Trials of {label!r} leave out {', '.join(dropped)} (set for the "
          "experiment's optimizer, not read by this one)")
  _check_target_metric(trials[0], target, devices)
  # JSON round trip: compared with a stored header as it reads back.
  header = json.loads(json.dumps({
      "target": str(target), "study": study.to_dict(),
      "experiment": grid.result_config(experiment).to_dict(),
      "num_train_examples": len(train_source)}))
  stored, previous = results.load_results(workdir)
  where = str(epath.Path(workdir) / results.RESULTS_JSON)
  _agree(lambda: rerun.check_same_study(stored, header, previous,
                                        [t.id for t in trials], where))
  done = rerun.reuse(stored, previous, target, study.stop_at_target, study.prune,
                     log)
  todo = [t for t, finished in zip(trials, _finished(trials, done)) if not finished]
  if len(todo) < len(trials):
    log(f"Resuming: {len(trials) - len(todo)} of {len(trials)} trials already in "
        f"{epath.Path(workdir) / results.RESULTS_JSON}")
  max_size = study.max_trials_per_group if study.vectorize else 1
  group_list = grid.groups(
      todo, max_size, lambda t: vectorized.supports_trial(t.config))
  for group in group_list:  # a plug-in that cannot vary: refused before compiling
    vectorized.check_group([t.config for t in group], group[0].num_steps)
  _watch(watcher, workdir)
  for i, group in enumerate(group_list):
    log(f"[{i + 1}/{len(group_list)}] {_describe(group)}")
    records = run_group(group, target, study, devices, watcher, workdir)
    if records is None:
      watcher.stopped_at = len(done)  # the command exits 128 + the signal number
      log("Stopped by a signal; finished trials are saved. Re-run the same "
          "command to resume.")
      break
    for r in records:
      done[r["trial"]] = r
      log(f"  {r['trial']}: {_outcome(r)}, {r['wall_time_s']:.1f} s")
    results.write_results(workdir, header, [done[t.id] for t in trials if t.id in done])
  records = [done[t.id] for t in trials if t.id in done]
  results.write_results(workdir, header, records)
  return records
