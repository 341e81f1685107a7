"""The `init_from` config section: which weights a fresh run starts from.

Plain values, checked before JAX is imported (`jaxtrain.config.validate`). The
source is one of

- ``init_from.workdir`` (+ ``init_from.step``, 0: the newest): another jaxtrain
  run's checkpoint, opened read-only; its params (and model state, or its EMA);
- ``init_from.file`` + ``init_from.name_map``: a `.npz` / `.safetensors` file of
  published weights, its names and layouts mapped by a shipped map
  (`jaxtrain.pretrained.name_maps.NAME_MAPS`).

``init_from.reinit`` keeps variables whose path matches it freshly initialized (a
new classifier head: ``^params/head/``); ``init_from.strict`` refuses anything else
that does not load. `jaxtrain.init_from` reads the source and loads it.
"""
from __future__ import annotations

import re

import ml_collections

from jaxtrain.checks import check_int, check_keys
from jaxtrain.errors import ConfigError
from jaxtrain.pretrained import files, name_maps


def default_config() -> ml_collections.ConfigDict:
  """`config.init_from`, with nothing to load."""
  return ml_collections.ConfigDict(dict(
      workdir="",        # another run's workdir: start from its checkpoint (read-only)
      step=0,            # that run's checkpoint step; 0: its newest
      file="",           # or a weights file: .npz / .safetensors, local or gs://
      name_map="",       # the file's names and layouts, a key of name_maps.NAME_MAPS
      reinit="",         # regex over variable paths kept fresh, e.g. "^params/head/"
      strict=False,      # refuse anything that neither loads nor matches reinit
      model_state=True,  # also load batch-norm statistics; False: keep them fresh
      ema=False,         # workdir: load that run's EMA weights (train.ema_decay > 0)
  ))


def check(section: ml_collections.ConfigDict) -> None:
  """Refuses a bad `init_from` section, naming the field, the value and the fix."""
  check_keys(section, default_config(), "init_from.")
  for field in ("workdir", "file", "name_map", "reinit"):
    if not isinstance(section[field], str):
      raise ConfigError(f"init_from.{field}", section[field], "use a string "
                        "('' for none)")
  for field in ("strict", "model_state", "ema"):
    if not isinstance(section[field], bool):
      raise ConfigError(f"init_from.{field}", section[field], "use True or False")
  check_int("init_from.step", section.step, minimum=0)
  if section.workdir and section.file:
    raise ConfigError("init_from.file", section.file, f"init_from.workdir="
                      f"{section.workdir!r} is a source too; start from one: set "
                      "the other to ''")
  try:
    re.compile(section.reinit)
  except re.error as e:
    raise ConfigError("init_from.reinit", section.reinit, f"not a regular "
                      f"expression ({e}); e.g. '^params/head/'") from None
  if section.file:
    if not section.file.endswith(files.SUFFIXES):
      raise ConfigError("init_from.file", section.file,
                        "give a .npz or .safetensors file")
    if section.name_map not in name_maps.NAME_MAPS:
      raise ConfigError("init_from.name_map", section.name_map, "name the map of "
                        "the file's names and layouts", choices=name_maps.NAME_MAPS)
