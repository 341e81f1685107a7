"""`jaxtrain report DIR`: a sweep's plots and report.md, regenerated from DIR."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from jaxtrain.errors import ConfigError


def add_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("dir", metavar="DIR", help="a sweep's --workdir")


def handle(args: argparse.Namespace, config: Any) -> int:
  """Prints the Markdown summary; 2 when DIR holds no sweep's results."""
  del config
  from jaxtrain.study import report  # pylint: disable=g-import-not-at-top
  try:
    text = report.write(args.dir)
  except FileNotFoundError as e:
    print(f"jaxtrain: error: DIR={args.dir!r}: {e}", file=sys.stderr)
    return 2
  except ConfigError as e:  # a results.json that is not one
    print(f"jaxtrain: error: DIR={args.dir!r}: {str(e).split(': ', 1)[1]}",
          file=sys.stderr)
    return 2
  print(text, end="")
  print(f"Plots and report.md written to {args.dir}")
  return 0
