"""`jaxtrain compile`: the train step compiled for a TPU topology, without it.

Prints memory per device against the chip's HBM, FLOPs per step and the step time
each chip would need at 50% MFU (`jaxtrain.peak_flops`), and collectives
(`jaxtrain.aot`); exits 1 when the step does not fit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from jaxtrain.errors import ConfigError


def add_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--topology", required=True, metavar="NAME",
                 help="TPU topology, e.g. v4:8x8x16, v5p:8x8x16, v3:16x32, "
                 "v5e:16x16 (needs jaxtrain[tpu]), or cpu:N for N local CPU devices "
                 "(jaxtrain sets the device count itself: no XLA_FLAGS needed)")
  p.add_argument("--memory_gib", type=float, metavar="GIB",
                 help="memory per device to fit in (default: the chip's HBM)")
  p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def _cpu_device_count(topology: str) -> None:
  """`--topology=cpu:N`: gives this process N CPU devices, before JAX starts them.

  Same effect as XLA_FLAGS=--xla_force_host_platform_device_count=N, which it takes
  precedence over. Once JAX has started its backends (a library caller) the count
  cannot change; `aot` then reports a count that is too small.
  """
  count = topology[len("cpu:"):]
  if not topology.startswith("cpu:") or not count.isdigit():
    return
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update("jax_num_cpu_devices", int(count))
  except RuntimeError:  # backends already started
    pass


def _check_flags(memory_gib: float | None, json_path: str | None) -> None:
  if memory_gib is not None and not memory_gib > 0:
    raise ConfigError("--memory_gib", memory_gib, "use a size > 0 in GiB")
  if json_path:  # before compiling, not after
    folder = os.path.dirname(os.path.abspath(json_path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
      raise ConfigError("--json", json_path, f"cannot write into {folder}; name a "
                        "file in an existing, writable directory")


def handle(args: argparse.Namespace, config: Any) -> int:
  """Prints the report; 1 when the step does not fit."""
  _cpu_device_count(args.topology)
  from jaxtrain import aot  # pylint: disable=g-import-not-at-top
  target = aot.get_target(args.topology)
  _check_flags(args.memory_gib, args.json)
  if args.memory_gib is not None:
    target.memory_bytes = int(args.memory_gib * aot.GIB)
  print(f"jaxtrain compile: {args.config} for {args.topology} "
        f"({len(target.devices)} devices) ...", flush=True)
  report, _ = aot.compile_train_step(config, target)
  print(aot.format_report(report), flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report.to_json(), f, indent=1)
  if report.fits:
    return 0
  print(f"jaxtrain: compile: the train step does not fit: it needs "
        f"{aot.fmt_bytes(report.memory['total'])} per device, the target has "
        f"{aot.fmt_bytes(target.memory_bytes)}; lower train.batch_size, shard the "
        "state (mesh.fsdp and sharding.rules) or use bfloat16", file=sys.stderr)
  return 1
