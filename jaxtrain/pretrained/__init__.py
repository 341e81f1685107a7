"""Starting from published weights: read a file, map its names, load the arrays.

`files.read_arrays` reads a `.npz` / `.safetensors` file; `name_maps.convert` maps
its names and layouts onto a model's variables (`variables.shapes`) with a shipped
map (`name_maps.NAME_MAPS`: torchvision/timm ResNets, timm and big_vision ViTs) and
reports what was loaded, missing, unexpected, mismatched or dropped;
`merge.merge` loads them into a fresh model, keeping `init_from.reinit`'s matches
fresh, and reports every variable's outcome. `section` is the ``init_from`` config
section (plain values); `jaxtrain.init_from` starts a run from it.

The submodules load on first use: the config imports `section` (and through it
`files` and `name_maps`, numpy only) without importing JAX.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["files", "merge", "name_maps", "section", "variables"]


def __getattr__(name: str) -> Any:
  if name in __all__:
    return importlib.import_module(f"jaxtrain.pretrained.{name}")
  raise AttributeError(f"module 'jaxtrain.pretrained' has no attribute {name!r}")
