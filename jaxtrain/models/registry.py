"""Model registry and the models' contract with the config.

Two things the config refers to by name live here: the registered model names with
their accepted options (``config.model``), and the logical axis names that models put
on their parameters and activations (the vocabulary of ``config.sharding.rules``).
Models register themselves with `@register("name")`; `jaxtrain.models` imports them.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from typing import Any, Callable, Mapping, TypeVar

import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec

from jaxtrain.checks import is_int
from jaxtrain.errors import ConfigError

# Logical axis names (see the jaxtrain.models docstring for the rule table).
BATCH = "batch"
CONV_KERNEL = ("conv_height", "conv_width", "conv_in", "conv_out")
CONV_BIAS = ("conv_out",)
EMBED, MLP_HIDDEN, CLASSES = "embed", "mlp", "classes"
NORM = ("norm",)

# Fields every flax Module has that are not model options.
_MODULE_FIELDS = frozenset({"parent", "name"})
_DTYPE_FIELDS = frozenset({"dtype", "param_dtype"})


class _Required:
  """Marker default of a model option that has no default (e.g. num_classes)."""

  def __repr__(self) -> str:
    return "REQUIRED"


REQUIRED = _Required()

_REGISTRY: dict[str, type[nn.Module]] = {}
ModuleT = TypeVar("ModuleT", bound=type)


def register(name: str) -> Callable[[ModuleT], ModuleT]:
  """Class decorator: makes a linen Module constructible as `get_model(name)`."""
  def wrap(cls: ModuleT) -> ModuleT:
    if name in _REGISTRY:
      raise ValueError(f"model name {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls
  return wrap


def model_names() -> list[str]:
  """All registered model names, sorted."""
  return sorted(_REGISTRY)


def _lookup(name: str) -> type[nn.Module]:
  if name not in _REGISTRY:
    raise ConfigError("model.name", name, "choose a registered model",
                      choices=_REGISTRY)
  return _REGISTRY[name]


def model_class(name: str) -> type[nn.Module]:
  """The Module class registered as `name` (raises ConfigError naming model.name)."""
  return _lookup(name)


def model_kwargs(name: str) -> dict[str, Any]:
  """Options accepted by model `name`, mapped to their defaults (or `REQUIRED`)."""
  fields = dataclasses.fields(_lookup(name))
  return {
      f.name: REQUIRED if f.default is dataclasses.MISSING else f.default
      for f in fields if f.name not in _MODULE_FIELDS and f.init}


def check_model_config(name: str, kwargs: Mapping[str, Any]) -> None:
  """Validates a ``config.model`` section (name + options) before anything compiles.

  Raises:
    ConfigError: unknown name (field ``model.name``), unknown option (``model.<key>``)
      or a missing required option.
  """
  accepted = model_kwargs(name)
  for key, value in kwargs.items():
    if key not in accepted:
      raise ConfigError(f"model.{key}", value,
                        f"not an option of model {name!r}", choices=accepted)
  for key, default in accepted.items():
    if default is REQUIRED and key not in kwargs:
      raise ConfigError(f"model.{key}", None, f"required by model {name!r}")


def _expects(hint: Any) -> tuple[str, Any] | None:
  """(what the option takes, a test of a value) for the annotation `hint`."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is bool:
    return "true or false", lambda v: isinstance(v, bool)
  if hint is int:  # every int option is a size, a depth or a count
    return "an integer >= 1", lambda v: is_int(v, 1)
  if origin in (typing.Union, types.UnionType) and set(args) == {int, type(None)}:
    return "an integer >= 1 or None", lambda v: v is None or is_int(v, 1)
  if hint is float:
    return "a finite number >= 0", lambda v: (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        and v >= 0)
  if hint is str:
    return "a string", lambda v: isinstance(v, str)
  if origin in (collections.abc.Sequence, tuple) and args in ((int,), (int, ...)):
    return "a tuple of integers >= 1", lambda v: (
        isinstance(v, (tuple, list)) and all(is_int(x, 1) for x in v))
  return None


# Options whose range is narrower than their type's (same meaning in every model).
_RANGES = {
    "bn_momentum": (lambda v: 0 <= v < 1, "a running-average decay in [0, 1), e.g. "
                    "0.9"),
    "bn_epsilon": (lambda v: v > 0, "a number > 0, e.g. 1e-05"),
}


def check_option_values(name: str, options: Mapping[str, Any],
                        prefix: str = "model.") -> None:
  """Checks each option's value against its annotation on the model's class.

  Int options are sizes (>= 1), float options finite and >= 0, sequences of ints
  sizes too; the modules check finer ranges (dropout < 1, ...) when built.

  Raises:
    ConfigError: naming `prefix + option`, the value and an example.
  """
  cls = _lookup(name)
  try:
    hints = typing.get_type_hints(cls)
  except Exception:  # pylint: disable=broad-except
    return  # annotations that do not resolve: the module checks its own options
  defaults = model_kwargs(name)
  for key, value in options.items():
    expected = _expects(hints.get(key))
    if expected is not None and not expected[1](value):
      example = "" if defaults.get(key) is REQUIRED else (
          f", e.g. {defaults.get(key)!r}")
      raise ConfigError(f"{prefix}{key}", value, f"model {name!r} takes "
                        f"{expected[0]} here{example}")
    if key in _RANGES and not _RANGES[key][0](value):
      raise ConfigError(f"{prefix}{key}", value, f"use {_RANGES[key][1]}")


def _normalize_option(key: str, value: Any) -> Any:
  # Config values arrive as lists and strings; modules want tuples and dtypes.
  if isinstance(value, list):
    return tuple(value)
  if key in _DTYPE_FIELDS and isinstance(value, str):
    return jnp.dtype(value)
  return value


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the registered model `name` with options `kwargs` (validated).

  Args:
    name: a registered model name (`model_names()`).
    kwargs: the model's options, e.g. ``num_classes=1000, bn_group_size=8``.

  Returns:
    The Flax linen module.

  Raises:
    ConfigError: unknown name or option, or a missing required one.
  """
  check_model_config(name, kwargs)
  options = {k: _normalize_option(k, v) for k, v in kwargs.items()}
  return _lookup(name)(**options)


def constrain_batch(x: Any) -> Any:
  """Marks axis 0 of `x` as the logical batch axis, other axes left to the compiler.

  A no-op unless logical axis rules are active (``nn.logical_axis_rules``) and a mesh
  is set; then it pins the batch sharding so GSPMD cannot drift from data parallelism.
  """
  spec = (BATCH,) + (PartitionSpec.UNCONSTRAINED,) * (x.ndim - 1)
  return nn.with_logical_constraint(x, spec)
