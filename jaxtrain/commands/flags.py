"""Flags several commands share (plain argparse: building the parser imports no JAX)."""
from __future__ import annotations

import argparse


def add_config_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", required=True, metavar="FILE[:ARG]",
                 help="experiment module defining get_config(arg=None), e.g. "
                 "experiments/digits_cnn.py; ':ARG' is passed to get_config")


def add_workdir_flag(p: argparse.ArgumentParser,
                     help: str = "where checkpoints, metrics.jsonl and TensorBoard "  # pylint: disable=redefined-builtin
                     "files go; re-using it resumes the run") -> None:
  p.add_argument("--workdir", required=True, metavar="DIR", help=help)


def add_multihost_flags(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("multi-host (omit on one machine; detected under srun, "
                           "mpirun, indexed Kubernetes Jobs and on Cloud TPU)")
  g.add_argument("--coordinator_address", metavar="HOST:PORT",
                 help="address of process 0, for jax.distributed.initialize")
  g.add_argument("--num_processes", type=int, metavar="N",
                 help="total number of processes")
  g.add_argument("--process_id", type=int, metavar="I",
                 help="this process's index, 0..N-1")
