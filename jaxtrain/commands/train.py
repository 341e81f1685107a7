"""`jaxtrain train`: train (or resume) an experiment in --workdir."""
from __future__ import annotations

import argparse
from typing import Any

from jaxtrain.commands import flags, multihost


def add_flags(p: argparse.ArgumentParser) -> None:
  flags.add_workdir_flag(p)
  flags.add_multihost_flags(p)
  p.add_argument("--allow_config_change", default="", metavar="FIELD,...",
                 help="resume although these config fields (or sections, e.g. "
                 "optimizer) differ from the checkpoint's config, e.g. "
                 "train.num_steps to train longer; other changed fields that alter "
                 "the result are refused")


def handle(args: argparse.Namespace, config: Any) -> int:
  multihost.join(args)
  from jaxtrain import runner  # pylint: disable=g-import-not-at-top
  allow = [f for f in args.allow_config_change.split(",") if f]
  runner.train(config, args.workdir, name=args.config, allow_config_change=allow)
  return 0
