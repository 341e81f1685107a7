"""Activation functions by name (``model.activation``).

  ==========  ==========================================  ================================
  name        f(x)                                        source
  ==========  ==========================================  ================================
  relu        max(x, 0)                                   Nair & Hinton 2010
  leaky_relu  x if x >= 0 else 0.01 x                     Maas et al. 2013
  prelu       x if x >= 0 else a_c x, a_c learned per     He et al. 2015, arXiv 1502.01852
              channel, initialised to 0.25
  elu         x if x > 0 else exp(x) - 1                  Clevert et al. 2015, 1511.07289
  gelu        x Phi(x) (exact, erf)                       Hendrycks & Gimpel 2016,
  gelu_tanh   their tanh approximation of x Phi(x)        arXiv 1606.08415
  silu/swish  x sigmoid(x)                                Elfwing et al. 2017, 1702.03118;
                                                          Ramachandran et al. 2017 (beta 1)
  mish        x tanh(softplus(x))                         Misra 2019, arXiv 1908.08681
  ==========  ==========================================  ================================

`apply(name, x, module_name)` is called inside a linen module's compact method;
only ``prelu`` creates parameters (a submodule called `module_name`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxtrain.errors import ConfigError
from jaxtrain.models.registry import NORM

PRELU_INIT = 0.25  # He et al. 2015, Sec. 2.1


def _mish(x: jax.Array) -> jax.Array:
  return x * jnp.tanh(jax.nn.softplus(x))


_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01),
    "elu": lambda x: nn.elu(x, alpha=1.0),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": _mish,
}
ACTIVATIONS = (*_FUNCTIONS, "prelu")


def check(name: Any, field: str = "model.activation") -> None:
  """Raises ConfigError naming `field` unless `name` is a known activation."""
  if name not in ACTIVATIONS:
    raise ConfigError(field, name, "not a known activation", choices=ACTIVATIONS)


class PReLU(nn.Module):
  """Parametric ReLU with one learned slope per channel (last axis).

  Attributes:
    axis_names: logical name of the channel axis of the slope parameter.
    param_dtype: dtype of the slopes; the output keeps the input's dtype.
  """
  axis_names: tuple[str | None, ...] = NORM
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param(
        "negative_slope",
        nn.with_logical_partitioning(nn.initializers.constant(PRELU_INIT),
                                     self.axis_names),
        (x.shape[-1],), self.param_dtype)
    # The slope meets x in float32 so its gradient is reduced across replicas in
    # float32 (`jaxtrain.precision`); the output keeps x's dtype.
    return jnp.where(x >= 0, x, (slope * x).astype(x.dtype))


def apply(name: str, x: jax.Array, module_name: str, *,
          axis_names: tuple[str | None, ...] = NORM,
          param_dtype: Any = jnp.float32) -> jax.Array:
  """`name`(x); inside a compact method (``prelu`` adds submodule `module_name`)."""
  if name == "prelu":
    return PReLU(axis_names, param_dtype, name=module_name)(x)
  return _FUNCTIONS[name](x)
