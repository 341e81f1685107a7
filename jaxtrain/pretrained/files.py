"""Reading published weights: `.npz` and `.safetensors` files, local or `gs://`.

Both formats are flat: a name per array (``layer1.0.conv1.weight``), no model
structure. `jaxtrain.pretrained.name_maps` turns the names and layouts into
jaxtrain's variables. `.safetensors` (Hugging Face's format: a JSON header of names,
dtypes and offsets, then raw little-endian bytes; github.com/huggingface/safetensors)
is read with the `safetensors` package (`pip install 'jaxtrain[weights]'`); `.npz`
with numpy, without pickles (`allow_pickle=False`: a weights file runs no code).
"""
from __future__ import annotations

import io

import numpy as np
from etils import epath

from jaxtrain.errors import ConfigError

SUFFIXES = (".npz", ".safetensors")


def read_arrays(path: str, field: str = "init_from.file") -> dict[str, np.ndarray]:
  """Every array of a weights file, by name.

  Args:
    path: a `.npz` or `.safetensors` file, local or on `gs://`.
    field: the config field that named `path`, for errors.

  Returns:
    ``{name: array}`` in the file's own names, dtypes and layouts.

  Raises:
    ConfigError: naming `field` when the file is missing, of another format,
      damaged, or needs a package that is not installed.
  """
  suffix = next((s for s in SUFFIXES if str(path).endswith(s)), None)
  if suffix is None:
    raise ConfigError(field, path, "give a .npz or .safetensors file")
  file = epath.Path(path)
  if not file.exists():
    raise ConfigError(field, path, "no such file")
  data = file.read_bytes()
  try:
    if suffix == ".npz":
      with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
    return _read_safetensors(data, path, field)
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (zip, JSON, header errors)
    raise ConfigError(field, path, f"cannot read it as {suffix} "
                      f"({type(e).__name__}: {e})") from e


def _read_safetensors(data: bytes, path: str, field: str) -> dict[str, np.ndarray]:
  try:
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(field, path, "reading .safetensors needs the safetensors "
                      "package: pip install 'jaxtrain[weights]'") from e
  return dict(st_numpy.load(data))
