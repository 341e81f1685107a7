"""jaxtrain.optim: Optax optimizers, schedules and the config -> optimizer builder.

Every optimizer is an Optax `GradientTransformation` (it drops into `optax.chain`,
`optax.masked`, `optax.inject_hyperparams`, `optax.MultiSteps`). Modules:

  sign, sign_decay      AddSign / PowerSign and their sign-decay functions
  lars                  LARS in the TPU / MLPerf form
  lr_schedules          learning-rate schedules Optax lacks, warmup wrapper
  lr_scaling            batch-size learning-rate scaling rules
  masks                 regex masks over parameter paths and the transforms using
                        them (LR multipliers, L1/L2, parameter EMA)
  schedule_config       config.optimizer.schedule -> schedule
  unread_fields         fields the chosen optimizer/schedule does not read: refused
  plugins               plug-in optimizers: `optimizer.name` naming a registered
                        factory or "package.module:factory" (`register`)
  weight_decay          decoupled weight decay after a plug-in's update
  build                 config.optimizer -> (tx, lr_schedule)
  defaults              the config.optimizer section (plain data, no JAX)

Usable without the rest of jaxtrain: it imports only `jaxtrain.errors`. Names are
loaded on first use, like `jaxtrain`'s own: `optim.default_config()` needs neither
JAX nor Optax, so a config can be loaded and checked before they are imported.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# name -> module of jaxtrain.optim defining it
_EXPORTS = {
    "build": "build",
    "default_config": "defaults",
    "mask_summary": "build",
    "OPTIMIZERS": "build",
    "register": "plugins",
    "registered_names": "plugins",
    "decoupled_weight_decay": "weight_decay",
    "exclude_ndim_le_1": "lars",
    "lars": "lars",
    "LarsState": "lars",
    "scale_lr": "lr_scaling",
    "inverse_time_decay_schedule": "lr_schedules",
    "linear_cosine_decay_schedule": "lr_schedules",
    "mlperf_polynomial_schedule": "lr_schedules",
    "noisy_linear_cosine_decay_schedule": "lr_schedules",
    "sgdr_warm_restarts_schedule": "lr_schedules",
    "warmup_polynomial_schedule": "lr_schedules",
    "with_linear_warmup": "lr_schedules",
    "add_l1_l2": "masks",
    "ema_params": "masks",
    "param_paths": "masks",
    "ParamsEmaState": "masks",
    "regex_mask": "masks",
    "scale_by_lr_multipliers": "masks",
    "track_params_ema": "masks",
    "SCHEDULES": "schedule_config",
    "addsign": "sign",
    "powersign": "sign",
    "scale_by_addsign": "sign",
    "scale_by_powersign": "sign",
    "ScaleBySignState": "sign",
    "cosine_decay_fn": "sign_decay",
    "linear_decay_fn": "sign_decay",
    "restart_decay_fn": "sign_decay",
}

__all__ = (
    "OPTIMIZERS", "SCHEDULES", "LarsState", "ParamsEmaState", "ScaleBySignState",
    "add_l1_l2", "addsign", "build", "cosine_decay_fn", "decoupled_weight_decay",
    "default_config", "register", "registered_names",
    "ema_params", "exclude_ndim_le_1", "inverse_time_decay_schedule", "lars",
    "linear_cosine_decay_schedule", "linear_decay_fn", "mask_summary",
    "mlperf_polynomial_schedule", "noisy_linear_cosine_decay_schedule",
    "param_paths", "powersign", "regex_mask", "restart_decay_fn",
    "scale_by_addsign", "scale_by_lr_multipliers", "scale_by_powersign",
    "scale_lr", "sgdr_warm_restarts_schedule", "track_params_ema",
    "warmup_polynomial_schedule", "with_linear_warmup",
)

if TYPE_CHECKING:
  from jaxtrain.optim.build import build
  from jaxtrain.optim.defaults import default_config
  from jaxtrain.optim.build import mask_summary
  from jaxtrain.optim.build import OPTIMIZERS
  from jaxtrain.optim.plugins import register
  from jaxtrain.optim.plugins import registered_names
  from jaxtrain.optim.weight_decay import decoupled_weight_decay
  from jaxtrain.optim.lars import exclude_ndim_le_1
  from jaxtrain.optim.lars import lars
  from jaxtrain.optim.lars import LarsState
  from jaxtrain.optim.lr_scaling import scale_lr
  from jaxtrain.optim.lr_schedules import inverse_time_decay_schedule
  from jaxtrain.optim.lr_schedules import linear_cosine_decay_schedule
  from jaxtrain.optim.lr_schedules import mlperf_polynomial_schedule
  from jaxtrain.optim.lr_schedules import noisy_linear_cosine_decay_schedule
  from jaxtrain.optim.lr_schedules import sgdr_warm_restarts_schedule
  from jaxtrain.optim.lr_schedules import warmup_polynomial_schedule
  from jaxtrain.optim.lr_schedules import with_linear_warmup
  from jaxtrain.optim.masks import add_l1_l2
  from jaxtrain.optim.masks import ema_params
  from jaxtrain.optim.masks import param_paths
  from jaxtrain.optim.masks import ParamsEmaState
  from jaxtrain.optim.masks import regex_mask
  from jaxtrain.optim.masks import scale_by_lr_multipliers
  from jaxtrain.optim.masks import track_params_ema
  from jaxtrain.optim.schedule_config import SCHEDULES
  from jaxtrain.optim.sign import addsign
  from jaxtrain.optim.sign import powersign
  from jaxtrain.optim.sign import scale_by_addsign
  from jaxtrain.optim.sign import scale_by_powersign
  from jaxtrain.optim.sign import ScaleBySignState
  from jaxtrain.optim.sign_decay import cosine_decay_fn
  from jaxtrain.optim.sign_decay import linear_decay_fn
  from jaxtrain.optim.sign_decay import restart_decay_fn


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f"jaxtrain.optim.{_EXPORTS[name]}"), name)
    globals()[name] = value  # once: later lookups skip this function
    return value
  raise AttributeError(f"module 'jaxtrain.optim' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
  """Keeps `optim.build` and `optim.lars` the functions once their modules load.

  Loading a submodule binds it to its name in the package; two submodules share
  their names with the public functions they define.
  """

  def __setattr__(self, name: str, value: Any) -> None:
    if (isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name
        and value.__name__ == f"{__name__}.{name}"):
      value = getattr(value, name)
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
