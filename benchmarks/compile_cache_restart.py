"""Restart compile time with JAX's persistent compilation cache: cold vs warm.

A restarted run (preemption, `jaxtrain eval` after `train`) compiles the same
programs again; `train.compilation_cache_dir` (`jaxtrain.compile_cache`) lets it read
them from disk. Each round starts two fresh processes, as a restart does (nothing in
memory): the first with an empty cache directory (cold: it compiles and writes),
the second with the same directory (warm: it reads). Each process builds the run
as `runner.train` does (`runner.build`, `program.compile_program`, abstract state)
and times tracing + lowering + compiling its train step and eval step, inside
`compile_cache.scoped`. Printed: per round the cold and warm seconds and the
cache's hits, then the median ratio cold / warm, with the load average (the
machine may be shared: say it with the figure).

  python benchmarks/compile_cache_restart.py [--model resnet18] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "digits_cnn.py")


def _child(cache_dir: str, model: str, batch: int) -> dict:
  """One process's compile of the run's train and eval steps (in a subprocess)."""
  from jaxtrain import compile_cache, runner  # pylint: disable=g-import-not-at-top
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import sharding  # pylint: disable=g-import-not-at-top
  from jaxtrain.program import compile_program  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = config_lib.load(EXPERIMENT)
  config.model.name, config.train.batch_size = model, batch
  exp = runner.build(config)
  with compile_cache.scoped(cache_dir) as use:
    start = time.perf_counter()
    program = compile_program(exp, abstract=True)
    sums = jax.eval_shape(program.init_sums)
    batch_spec = program.example_batch
    eval_batch = {**batch_spec, "mask": jax.ShapeDtypeStruct(
        batch_spec["label"].shape, jnp.float32, sharding=batch_spec["label"].sharding)}
    with sharding.activate(exp.mesh, config.sharding.rules):
      program.train_fn.lower(program.abstract_state, sums, batch_spec).compile()
      program.eval_fn.lower(program.abstract_state, eval_batch).compile()
    seconds = time.perf_counter() - start
  return {"seconds": seconds, "hits": use.hits, "misses": use.misses,
          "saved": use.seconds_saved}


def _run_child(cache_dir: str, model: str, batch: int) -> dict:
  out = subprocess.run(
      [sys.executable, __file__, "--child", cache_dir, "--model", model,
       "--batch", str(batch)], check=True, capture_output=True, text=True,
      env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--child", metavar="CACHE_DIR", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_child(args.child, args.model, args.batch)))
    return
  ratios = []
  print(f"digits, {args.model}, batch {args.batch}: train + eval step, "
        "trace + lower + compile, fresh processes")
  for r in range(args.rounds):
    with tempfile.TemporaryDirectory() as cache_dir:
      cold = _run_child(cache_dir, args.model, args.batch)
      warm = _run_child(cache_dir, args.model, args.batch)
    ratios.append(cold["seconds"] / warm["seconds"])
    print(f"round {r + 1}: cold {cold['seconds']:.2f} s ({cold['misses']} programs "
          f"compiled), warm {warm['seconds']:.2f} s ({warm['hits']} read from the "
          f"cache, {warm['saved']:.1f} s saved by JAX's estimate): "
          f"{ratios[-1]:.1f}x", flush=True)
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  print(f"warm restart compiles {statistics.median(ratios):.1f}x faster than cold "
        f"(median of {args.rounds}); load average {load} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
  main()
