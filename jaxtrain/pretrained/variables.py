"""A model's variables as ``"/"``-joined paths, and loading arrays into them."""
from __future__ import annotations

from typing import Any, Mapping

import flax
import flax.linen as nn
import numpy as np


def shapes(variables: Any) -> dict[str, tuple[int, ...]]:
  """``{"params/stem_conv/kernel": (7, 7, 3, 64), ...}`` of a variables tree.

  Args:
    variables: a Flax variables dict (arrays or `jax.ShapeDtypeStruct`s, boxed
      with logical axis names or not), e.g. from `jax.eval_shape(model.init, ...)`.

  Returns:
    Every leaf's path and shape.
  """
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(variables), sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def replace(variables: Any, arrays: Mapping[str, np.ndarray]) -> Any:
  """`variables` (unboxed) with the leaves named in `arrays` replaced.

  Args:
    variables: a Flax variables dict.
    arrays: ``{path: array}``, e.g. `name_maps.Conversion.arrays`; each path must
      exist in `variables` with the array's shape.

  Returns:
    A new variables dict of plain arrays; leaves not in `arrays` are kept.
  """
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(variables), sep="/")
  for path, array in arrays.items():
    if path not in flat or tuple(flat[path].shape) != tuple(array.shape):
      raise ValueError(f"{path}: not a variable of shape {np.shape(array)}")
    flat[path] = np.asarray(array, flat[path].dtype)
  return flax.traverse_util.unflatten_dict(flat, sep="/")
