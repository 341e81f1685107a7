"""Start-up of a command that runs on every host: join the others, capture tracebacks.

Imports JAX only when called (the parser stays light).
"""
from __future__ import annotations

import argparse


def join(args: argparse.Namespace, log_stem: str = "jaxtrain") -> None:
  """Joins the other processes of a multi-host run (explicit flags, or the
  launcher's variables: SLURM, Open MPI, Kubernetes, Cloud TPU; see
  `jaxtrain.parallel.cluster`), then sends library tracebacks to the workdir's log
  file, not the console; on many hosts, a process that dies is named by the others
  (`parallel.peers`). `log_stem` names the log file (`diagnostics.log_path`)."""
  from jaxtrain.parallel import cluster  # pylint: disable=g-import-not-at-top
  cluster.initialize(cluster.Flags(args.coordinator_address, args.num_processes,
                                   args.process_id))
  capture_diagnostics(args.workdir, log_stem)


def capture_diagnostics(workdir: str, log_stem: str = "jaxtrain") -> None:
  """Library tracebacks go to `workdir`'s log file; a dead peer is named."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import checkpoint, diagnostics  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import peers  # pylint: disable=g-import-not-at-top
  diagnostics.capture(workdir, jax.process_index(), log_stem)
  peers.watch(lambda: checkpoint.describe_intact(workdir))
