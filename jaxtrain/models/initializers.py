"""Weight initializers by name (``model.kernel_init``).

Variance scaling draws w with Var[w] = scale / fan, where for a kernel of shape
(..., fan_in_axis, fan_out_axis) the receptive field is the product of the leading
(spatial) axes, fan_in = field * in and fan_out = field * out:

  ======================  ======  ===========================  ===========================
  name                    scale   fan                          source
  ======================  ======  ===========================  ===========================
  glorot_normal/_uniform  1       (fan_in + fan_out) / 2       Glorot & Bengio 2010
  he_normal/_uniform      2       fan_in                       He et al. 2015, 1502.01852
  he_*_fan_out            2       fan_out (backward case,      He et al. 2015, Sec. 2.2;
                                  torchvision's ResNet init)   torchvision
  lecun_normal/_uniform   1       fan_in                       LeCun et al. 1998
  *_truncated_normal      as the  (Flax's he_normal etc.:      Flax / TF
                          name    normal truncated at 2 std,
                                  rescaled to the variance)
  orthogonal              -       kernel reshaped to           Saxe et al. 2013,
                                  (field * in, out) has        arXiv 1312.6120
                                  orthonormal columns (rows)
  ======================  ======  ===========================  ===========================

``normal`` is the untruncated Gaussian of the papers; ``uniform`` is
U(-sqrt(3 scale / fan), +sqrt(3 scale / fan)), the same variance.
"""
from __future__ import annotations

from typing import Any

from flax import linen as nn

from jaxtrain.errors import ConfigError

Initializer = Any

_VARIANCE_SCALING = {
    "glorot": (1.0, "fan_avg"), "he": (2.0, "fan_in"),
    "he_fan_out": (2.0, "fan_out"), "lecun": (1.0, "fan_in")}


def _table() -> dict[str, tuple[float, str, str]]:
  out = {}
  for family, (scale, mode) in _VARIANCE_SCALING.items():
    base, _, suffix = family.partition("_")
    for dist in ("normal", "uniform", "truncated_normal"):
      name = f"{base}_{dist}" + (f"_{suffix}" if suffix else "")
      out[name] = (scale, mode, dist)
  return out


_SCALED = _table()
INITIALIZERS = (*_SCALED, "orthogonal")


def check(name: Any, field: str = "model.kernel_init") -> None:
  """Raises ConfigError naming `field` unless `name` is a known initializer."""
  if name not in INITIALIZERS:
    raise ConfigError(field, name, "not a known initializer", choices=INITIALIZERS)


def get(name: str) -> Initializer:
  """The initializer `name` (see the table), for kernels with fans on axes -2, -1."""
  check(name)
  if name == "orthogonal":
    return nn.initializers.orthogonal()
  return nn.initializers.variance_scaling(*_SCALED[name])
