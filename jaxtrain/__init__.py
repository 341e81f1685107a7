"""jaxtrain: a JAX functional training toolkit for TPU/GPU scale-out.

The public API, loaded on first use (so `jaxtrain --help` and the CLI's signal
handlers start before JAX is imported):

  Runs:        train, build, TrainResult, TrainingHalted
  Evaluation:  evaluate_checkpoint, CheckpointEval (`jaxtrain eval`)
  Config:      base_config, load_config, apply_overrides, validate (-> Settings),
               Settings, ConfigError
  State/steps: TrainState, create_train_state, make_train_step, make_eval_step,
               cross_entropy, get_loss (and `jaxtrain.losses`)
  Precision:   Policy, make_policy
  Scale-out:   make_mesh, DistributedBatchNorm
  Models:      get_model (and `jaxtrain.models`)
  Checkpoints: Checkpointer
  Data:        BatchPlan (stage schedules, repeated augmentation; `jaxtrain.data`)
  Optimizers:  `jaxtrain.optim` (usable on its own)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "train": "jaxtrain.runner", "build": "jaxtrain.runner",
    "TrainResult": "jaxtrain.runner", "TrainingHalted": "jaxtrain.loop",
    "base_config": "jaxtrain.config", "apply_overrides": "jaxtrain.config",
    "validate": "jaxtrain.config", "ConfigError": "jaxtrain.errors",
    "Settings": "jaxtrain.settings",
    "TrainState": "jaxtrain.state", "create_train_state": "jaxtrain.state",
    "make_train_step": "jaxtrain.step", "make_eval_step": "jaxtrain.step",
    "cross_entropy": "jaxtrain.step", "get_loss": "jaxtrain.losses",
    "Policy": "jaxtrain.precision",
    "make_policy": "jaxtrain.precision", "make_mesh": "jaxtrain.parallel.mesh",
    "DistributedBatchNorm": "jaxtrain.parallel.batchnorm",
    "get_model": "jaxtrain.models", "Checkpointer": "jaxtrain.checkpoint",
    "BatchPlan": "jaxtrain.data.batch_plan",
    "evaluate_checkpoint": "jaxtrain.evaluate_checkpoint",
    "CheckpointEval": "jaxtrain.evaluate_checkpoint",
}
_RENAMED = {"load_config": ("jaxtrain.config", "load")}

__all__ = sorted([*_EXPORTS, *_RENAMED])

if TYPE_CHECKING:
  from jaxtrain.checkpoint import Checkpointer
  from jaxtrain.config import apply_overrides, base_config, validate
  from jaxtrain.config import load as load_config
  from jaxtrain.data.batch_plan import BatchPlan
  from jaxtrain.errors import ConfigError
  from jaxtrain.evaluate_checkpoint import CheckpointEval, evaluate_checkpoint
  from jaxtrain.losses import get_loss
  from jaxtrain.loop import TrainingHalted
  from jaxtrain.models import get_model
  from jaxtrain.parallel.batchnorm import DistributedBatchNorm
  from jaxtrain.parallel.mesh import make_mesh
  from jaxtrain.precision import Policy, make_policy
  from jaxtrain.runner import TrainResult, build, train
  from jaxtrain.settings import Settings
  from jaxtrain.state import TrainState, create_train_state
  from jaxtrain.step import cross_entropy, make_eval_step, make_train_step


def __getattr__(name: str) -> Any:
  if name == "optim":  # `@jaxtrain.optim.register(...)` in a file importing jaxtrain
    return importlib.import_module("jaxtrain.optim")
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  if name in _RENAMED:
    module, attr = _RENAMED[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'jaxtrain' has no attribute {name!r}")


def __dir__() -> list[str]:
  return __all__
