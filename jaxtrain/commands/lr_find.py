"""`jaxtrain lr-find`: the learning-rate range test (`jaxtrain.study.lr_find`).

Its flags and help are plain argparse: building the command line parser imports
neither JAX, nor matplotlib, nor Orbax (`jaxtrain --help` and config errors stay
fast); the test's modules are imported when it runs.
"""
from __future__ import annotations

import argparse
from typing import Any

from jaxtrain.commands import flags, multihost

DESCRIPTION = """\
Learning-rate range test (Smith 2017, arXiv 1506.01186): one short run whose
learning rate grows exponentially from --min_lr to --max_lr over --num_steps steps,
recording the train loss of every step, smoothed by a bias-corrected exponential
moving average (--smoothing). The test stops early on divergence: a non-finite step,
a smoothed loss above --divergence_factor times its minimum, or 20% above where it
started.

The suggested learning rate is the one at the minimum smoothed loss divided by 10:
one order of magnitude below where the loss stops improving. The learning rate of
the steepest descent of the smoothed loss is printed beside it. Both, and the
plot, are written to --workdir (lr_find.png, lr_find.csv)."""


def add_flags(p: argparse.ArgumentParser) -> None:
  """The lr-find flags besides --config."""
  p.add_argument("--workdir", required=True, metavar="DIR",
                 help="where lr_find.png and lr_find.csv go (local or gs://)")
  p.add_argument("--min_lr", type=float, default=1e-5, metavar="LR",
                 help="first learning rate (default: %(default)g)")
  p.add_argument("--max_lr", type=float, default=10.0, metavar="LR",
                 help="last learning rate (default: %(default)g)")
  p.add_argument("--num_steps", type=int, default=100, metavar="N",
                 help="steps from --min_lr to --max_lr (default: %(default)d)")
  p.add_argument("--smoothing", type=float, default=0.98, metavar="BETA",
                 help="EMA coefficient of the smoothed loss, in [0, 1) "
                 "(default: %(default)g)")
  p.add_argument("--divergence_factor", type=float, default=4.0, metavar="X",
                 help="stop when the smoothed loss exceeds X times its minimum "
                 "(default: %(default)g)")
  p.add_argument("--optimizer", default="", metavar="LABEL",
                 help="a study config's optimizer label, or an optimizer name "
                 "(default: the experiment's optimizer)")
  flags.add_multihost_flags(p)


def handle(args: argparse.Namespace, config: Any) -> int:
  """Runs the test in --workdir (held: one run per workdir); 1 when its first
  step already diverged."""
  multihost.join(args)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import compile_cache, lease, runner  # pylint: disable=g-import-not-at-top
  from jaxtrain.study import lr_find  # pylint: disable=g-import-not-at-top
  lr_find.check_smoothing(args.smoothing, args.divergence_factor)
  runner.check_workdir(args.workdir)
  test_config = lr_find.range_config(config, args.min_lr, args.max_lr,
                                     args.num_steps, args.optimizer)
  with lease.held(args.workdir):  # one run per workdir; exits 2 naming the holder
    with compile_cache.for_run(test_config.train.compilation_cache_dir,
                               args.workdir) as cache:
      result = lr_find.run_range_test(test_config, args.smoothing,
                                      args.divergence_factor)
    if cache is not None and jax.process_index() == 0:
      print(cache.summary())
    return _report(result, test_config, args.workdir)


def _report(result: Any, test_config: Any, workdir: str) -> int:
  """Prints the outcome; process 0 writes the plot and CSV."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain.study import lr_find  # pylint: disable=g-import-not-at-top
  if not result.learning_rates:
    print("jaxtrain: the first step already diverged; lower --min_lr")
    return 1
  if jax.process_index() != 0:  # the same result on every process; one writes it
    return 0
  png = lr_find.write(result, workdir)
  steps = len(result.learning_rates)
  end = (f"diverged at lr {result.learning_rates[-1]:.3g} after {steps} steps"
         if result.diverged else f"reached lr {result.learning_rates[-1]:.3g}")
  print(f"LR range test ({test_config.optimizer.name}, batch "
        f"{test_config.train.batch_size}): {end}")
  print(f"steepest descent at lr {result.steepest:.3g}; minimum smoothed loss at lr "
        f"{result.suggestion * 10:.3g}")
  print(f"suggested learning rate: {result.suggestion:.3g}")
  print(f"plot: {png}")
  return 0
