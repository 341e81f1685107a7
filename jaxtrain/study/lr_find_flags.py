"""The flags of `jaxtrain lr-find` and its help text (plain argparse, no JAX).

Kept apart from `lr_find` so that building the command line parser imports neither
JAX, nor matplotlib, nor Orbax: `jaxtrain --help` and config errors stay fast.
"""
from __future__ import annotations

import argparse

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
  """The lr-find flags besides --config and the multi-host flags."""
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
