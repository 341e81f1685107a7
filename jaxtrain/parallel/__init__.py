"""Parallelism: meshes, sharding rules and cross-replica layers.

`DistributedBatchNorm` is loaded on first use: `jaxtrain.parallel.rules` (plain data)
is read while a config is loaded, before JAX is imported.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["DistributedBatchNorm"]

if TYPE_CHECKING:
  from jaxtrain.parallel.batchnorm import DistributedBatchNorm


def __getattr__(name: str) -> Any:
  if name == "DistributedBatchNorm":
    return importlib.import_module("jaxtrain.parallel.batchnorm").DistributedBatchNorm
  raise AttributeError(f"module 'jaxtrain.parallel' has no attribute {name!r}")
