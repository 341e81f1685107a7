"""`jaxtrain sweep`: run (or resume) a scaling study, then its plots and report.md."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from jaxtrain.commands import flags, multihost


def add_flags(p: argparse.ArgumentParser) -> None:
  flags.add_workdir_flag(p, "where the study's results go: results.json and "
                         "results.csv (one record per trial, with its learning "
                         "curve), plots, report.md and, for a local DIR, a "
                         "compilation cache; local or gs://. Re-using it skips the "
                         "trials already in results.json")
  flags.add_multihost_flags(p)


def load_study(spec: str, overrides: Sequence[str], require_study: bool = True
               ) -> Any:
  """The study config (experiment + `study`), validated (`study.grid.load`)."""
  from jaxtrain.study import grid  # pylint: disable=g-import-not-at-top
  return grid.load(spec, overrides, require_study)


def handle(args: argparse.Namespace, config: Any) -> int:
  """Runs the study in --workdir (held: one run per workdir), then reports it."""
  multihost.join(args)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import lease, preemption, runner  # pylint: disable=g-import-not-at-top
  from jaxtrain.study import report, sweep  # pylint: disable=g-import-not-at-top
  runner.check_workdir(args.workdir)
  watcher = preemption.installed()
  with lease.held(args.workdir):  # one run per workdir; exits 2 naming the holder
    records = sweep.run_study(config, args.workdir, watcher=watcher)
  if watcher is not None and watcher.stopped_at is not None:
    # A stop has little time (a preemption notice): the report can wait.
    if jax.process_index() == 0:
      print(f"`jaxtrain report {args.workdir}` reports the finished trials.")
    return 0  # the CLI exits 128 + the signal number
  # Only process 0 wrote results.json: on a pod with a local --workdir the other
  # workers have none to report from.
  if records and jax.process_index() == 0:
    print(report.write(args.workdir), end="")
    print(f"Results, plots and report.md are in {args.workdir}")
  return 0
