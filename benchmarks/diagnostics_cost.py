"""What `train.diagnostics` costs: train step time with it on over off, in one run.

For each model, the runner's own jitted step (`program.compile_program`) is built
twice, diagnostics off and on, on the same data-parallel mesh of --devices CPU
devices, and timed interleaved (off, on, on, off, ...) so machine load affects
both alike; the cost is the median of the per-round ratios on / off (with
quartiles), printed with the load average before and after, for wall-clock time
and for this process's CPU time (less sensitive to other processes on a shared
machine; XLA:CPU's threads spin little, so it tracks the work done).

  digits    the registry's `cnn` (experiments/digits_cnn.py: 2 conv layers, no batch
            norm), batch 64 of 8x8 digits, momentum: update norms and, with more
            than one device, the gradient noise scale (per-replica gradients).
  resnet50  ResNet-50 v1.5 at 224x224, batch --resnet_batch, LARS: update norms and
            trust ratios (batch norm: no noise scale).

float32 on CPU. The issue's budget is <= 5% (ratio <= 1.05).

  python benchmarks/diagnostics_cost.py [--devices=8] [--models=digits,resnet50]
      [--rounds=7] [--digits_steps=20] [--resnet_batch=8]
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

if __name__ == "__main__":
  # The device count is fixed when JAX starts: read --devices before importing it.
  _args = " ".join(sys.argv[1:]).replace("--devices ", "--devices=").split()
  _n = next((int(a.split("=")[1]) for a in _args if a.startswith("--devices=")), 8)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                             f"platform_device_count={_n}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxtrain import loop, program as program_lib, runner  # noqa: E402
from jaxtrain.config import base_config  # noqa: E402
from jaxtrain.parallel import mesh as mesh_lib, sharding  # noqa: E402


def digits_config(batch: int):
  c = base_config()
  c.data.source = "arrays"
  c.model.name = "cnn"
  c.optimizer.name = "momentum"
  c.train.batch_size = batch
  c.precision.compute_dtype = "float32"
  return c


def resnet_config(batch: int):
  c = base_config()
  c.model.name = "resnet50"
  c.data.source = "synthetic"
  c.data.synthetic.image_shape = (224, 224, 3)
  c.data.synthetic.num_classes, c.data.synthetic.num_examples = 1000, batch
  c.optimizer.name = "lars"
  c.optimizer.weight_decay = 1e-4
  c.train.batch_size = batch
  c.precision.compute_dtype = "float32"
  return c


def timed_step(config, diagnostics: bool):
  """A call running one compiled train step (state and sums carried), and the
  notes of what the program cannot measure."""
  c = config.copy_and_resolve_references()
  c.train.diagnostics = diagnostics
  exp = runner.build(c)
  with sharding.activate(exp.mesh, c.sharding.rules):
    program = program_lib.compile_program(exp)
  rng = np.random.default_rng(0)
  shape = (c.train.batch_size, *exp.train_source.image_shape)
  batch = jax.device_put(
      {"image": rng.standard_normal(shape).astype(np.float32),
       "label": rng.integers(0, 10, shape[0]).astype(np.int32)},
      mesh_lib.batch_sharding(exp.mesh))
  carry = [program.state, program.init_sums()]

  def call(steps: int = 1):
    # As the loop does (`Loop._bound_in_flight`): at most MAX_IN_FLIGHT steps
    # queued; a deeper queue of SPMD steps on more simulated devices than cores
    # starves a device's thread at the all-reduce and XLA aborts after 40 s.
    in_flight = collections.deque()
    with sharding.activate(exp.mesh, c.sharding.rules):
      for _ in range(steps):
        carry[0], carry[1] = program.train_fn(carry[0], carry[1], batch)
        in_flight.append(carry[0].step + 0)  # the state itself is donated
        if len(in_flight) > loop.MAX_IN_FLIGHT:
          jax.block_until_ready(in_flight.popleft())
    jax.block_until_ready(carry[1])
  call(2)  # compile, warm up
  return call, program.notes


def measure(name: str, config, rounds: int, steps: int) -> None:
  """Prints the median step times and on/off ratio; each round times `steps`
  steps of each program."""
  off, _ = timed_step(config, False)
  on, notes = timed_step(config, True)
  ratios = {"wall": [], "cpu": []}
  times = {(c, label): [] for c in ratios for label in ("off", "on")}
  load = os.getloadavg()[0]
  for r in range(rounds):
    pair = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
    for label, fn in pair:
      wall, cpu = time.perf_counter(), time.process_time()
      fn(steps)
      times["wall", label].append((time.perf_counter() - wall) / steps)
      times["cpu", label].append((time.process_time() - cpu) / steps)
    for clock in ratios:
      ratios[clock].append(times[clock, "on"][-1] / times[clock, "off"][-1])
  print(f"{name} ({rounds} rounds of {steps} steps each; load average {load:.2f} -> "
        f"{os.getloadavg()[0]:.2f}):")
  for clock, values in ratios.items():
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    print(f"  {clock:4s} time per step off {statistics.median(times[clock, 'off']) * 1e3:8.1f}"
          f" ms, on {statistics.median(times[clock, 'on']) * 1e3:8.1f} ms; on/off "
          f"{statistics.median(values):.3f} (quartiles {q[0]:.3f}..{q[2]:.3f})")
  for note in notes:
    print(f"  {note}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--models", default="digits,resnet50")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--digits_steps", type=int, default=20,
                      help="digits steps per timed round (a step is ~ms)")
  parser.add_argument("--resnet_batch", type=int, default=8)
  args = parser.parse_args()
  print(f"{jax.device_count()} CPU devices, float32; {os.cpu_count()} cores")
  models = args.models.split(",")
  if "digits" in models:
    measure("digits cnn, batch 64", digits_config(64), args.rounds, args.digits_steps)
  if "resnet50" in models:
    measure(f"resnet50 224px, batch {args.resnet_batch}",
            resnet_config(args.resnet_batch), args.rounds, 1)


if __name__ == "__main__":
  main()
