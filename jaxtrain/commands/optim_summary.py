"""`jaxtrain optim-summary`: per parameter, what the optimizer config applies to it."""
from __future__ import annotations

import argparse
from typing import Any


def add_flags(p: argparse.ArgumentParser) -> None:
  del p  # only --config and its overrides


def handle(args: argparse.Namespace, config: Any) -> int:
  del args
  from jaxtrain import optim_summary  # pylint: disable=g-import-not-at-top
  optim_summary.print_summary(config)
  return 0
