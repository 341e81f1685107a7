"""`jaxtrain eval`: evaluation only of a checkpoint of a run in --workdir.

Prints top-1 / top-5 / loss and writes them to `DIR/eval_<step>.json`
(`jaxtrain.evaluate_checkpoint`); the run's checkpoints, metrics.jsonl and
TensorBoard files are only read.
"""
from __future__ import annotations

import argparse
from typing import Any

from jaxtrain.commands import flags, multihost

DESCRIPTION = """\
Evaluate a checkpoint of a run, once over a split, without touching the run:
the newest step (or --step), the config's eval split (or --split), the raw
weights (or the EMA with --ema), with any --config.* overrides of the eval side,
e.g. --config.data.eval_transforms='resize(10)' for another resolution.
Prints top-1 / top-5 / loss and writes DIR/eval_<step>[_ema][_<split>].json
(the split in the name only when --split is given)."""


def add_flags(p: argparse.ArgumentParser) -> None:
  flags.add_workdir_flag(p, help="the run's workdir (its checkpoints are only read; "
                         "the result is written there as eval_<step>.json)")
  p.add_argument("--step", type=int, metavar="N",
                 help="the checkpoint's step (default: the newest)")
  p.add_argument("--split", metavar="SPLIT",
                 help="the split to evaluate (default: the config's "
                 "data.eval_split), e.g. train or test[:50%%]")
  p.add_argument("--ema", action="store_true",
                 help="evaluate the EMA weights (runs with train.ema_decay > 0)")
  flags.add_multihost_flags(p)


def handle(args: argparse.Namespace, config: Any) -> int:
  multihost.join(args, log_stem="eval")  # the run's jaxtrain.log stays as it was
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import compile_cache  # pylint: disable=g-import-not-at-top
  from jaxtrain import evaluate_checkpoint as ec  # pylint: disable=g-import-not-at-top
  ec.checkpoints_of(args.workdir)  # before the cache makes a directory there
  with compile_cache.for_run(config.train.compilation_cache_dir,
                             args.workdir) as cache:
    result = ec.evaluate_checkpoint(config, args.workdir, args.step, args.split,
                                    args.ema)
  path = ec.output_path(args.workdir, result, bool(args.split))
  ec.write_json(path, result, args.config, getattr(args, "config_overrides", []))
  if jax.process_index() == 0:
    print(_line(result))
    if cache is not None:
      print(cache.summary())
    print(f"Wrote {path}")
  return 0


def _line(result: Any) -> str:
  """'Step 40, test (360 examples), EMA: top-1 0.9861, top-5 1.0000, loss 0.0521'."""
  prefix = "eval_ema" if result.ema else "eval"
  m = result.metrics
  parts = [f"top-1 {m[f'{prefix}/accuracy']:.4f}"]
  if f"{prefix}/top5_accuracy" in m:
    parts.append(f"top-5 {m[f'{prefix}/top5_accuracy']:.4f}")
  parts.append(f"loss {m[f'{prefix}/loss']:.4f}")
  weights = ", EMA" if result.ema else ""
  return (f"Step {result.step}, {result.split} ({result.examples} examples)"
          f"{weights}: {', '.join(parts)}")
