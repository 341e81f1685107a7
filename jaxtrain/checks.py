"""Field checks shared by every config validator: ints, choices, known keys.

Each raises `ConfigError(field, value, fix)` with the same words wherever it is
used (`config.py`, `study/grid.py`, `data/sources.py`, `losses`). Plain Python (no
JAX): config errors are reported before anything heavy is imported.
"""
from __future__ import annotations

import difflib
from typing import Any, Sequence

import ml_collections

from jaxtrain.errors import ConfigError

MAX_INT = 2**31 - 1  # steps, sizes and seeds are int32 somewhere downstream


def is_int(value: Any, minimum: int, maximum: int | None = None) -> bool:
  """Whether `value` is an int (not a bool) in [minimum, maximum]."""
  return (isinstance(value, int) and not isinstance(value, bool) and value >= minimum
          and (maximum is None or value <= maximum))


def check_int(field: str, value: Any, minimum: int, maximum: int = MAX_INT) -> None:
  """Raises ConfigError unless `value` is an int (not a bool) in [minimum, maximum]."""
  if not is_int(value, minimum):
    raise ConfigError(field, value, f"use an integer >= {minimum}")
  if value > maximum:
    raise ConfigError(field, value, f"use an integer <= {maximum}")


def check_choice(field: str, value: Any, choices: Sequence[str]) -> None:
  """Raises ConfigError listing `choices` unless `value` is one of them."""
  if value not in choices:
    raise ConfigError(field, value, "not a known choice", choices=choices)


# Fields that moved: the old spelling is refused, naming the new one (no aliases).
MOVED = {"train.label_smoothing": "loss.label_smoothing"}


def unknown(key: str, known: list[str], value: Any = None) -> None:
  """Raises ConfigError for the unknown dotted `key`, suggesting the closest of
  `known` (difflib's ratio, as Python's own "did you mean"), or naming the field
  it moved to (`MOVED`)."""
  if key in MOVED:
    raise ConfigError(key, value, f"this field moved: set {MOVED[key]} instead")
  leaf = key.rsplit(".", 1)[-1]
  close = difflib.get_close_matches(leaf, known, n=1)
  hint = f"did you mean '{close[0]}'?" if close else "no such field"
  raise ConfigError(key, value, f"unknown key; {hint}", choices=known)


def keys_of(node: Any) -> list[str]:
  """The keys of a ConfigDict section; [] for a value."""
  return list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []


def check_keys(node: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
               prefix: str, skip: Sequence[str] = (), complete: bool = True) -> None:
  """Every key of `node` is one of `base` (recursively, sections stay sections).

  Args:
    node: the section given.
    base: the section's defaults (every allowed key).
    prefix: dotted path of `node` in error messages ("optimizer.").
    skip: keys of `node` not checked here (checked by their own validator).
    complete: also refuse a key of `base` missing from `node` (a config built
      from `base_config()` has every field).
  """
  if complete:
    for key in base.keys():
      if key not in node:
        raise ConfigError(prefix + key, None, "missing; an experiment's get_config() "
                          "starts from jaxtrain.config.base_config(), which has every "
                          "field")
  for key in node.keys():
    if key in skip:
      continue
    if key not in base:
      unknown(prefix + key, keys_of(base), node[key])
    if isinstance(base[key], ml_collections.ConfigDict):
      if not isinstance(node[key], ml_collections.ConfigDict):
        raise ConfigError(prefix + key, node[key], "this is a section, not a value")
      check_keys(node[key], base[key], prefix + key + ".", complete=complete)
