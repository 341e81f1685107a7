"""Multi-layer perceptron classifier (Rumelhart, Hinton & Williams 1986).

A baseline for small image sets: the image is flattened, passed through ReLU hidden
layers (Nair & Hinton 2010) with optional dropout (Srivastava et al. 2014,
JMLR 15:1929) and a linear head. Hidden kernels alternate ("embed", "mlp") and
("mlp", "embed") so that consecutive layers shard on alternating mesh axes
(Megatron-LM column/row parallelism, Shoeybi et al. 2019, arXiv:1909.08053).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxtrain import precision
from jaxtrain.models.registry import (
    CLASSES, EMBED, MLP_HIDDEN, constrain_batch, register)


@register("mlp")
class MLP(nn.Module):
  """Flatten -> [Dense -> ReLU -> Dropout] * len(hidden_sizes) -> Dense.

  Attributes:
    num_classes: size of the logits.
    hidden_sizes: width of each hidden layer.
    dropout_rate: dropout after each hidden layer (train only; needs a "dropout" rng).
    dtype: compute dtype; the logits are float32 whatever it is.
    param_dtype: parameter dtype.
  """
  num_classes: int
  hidden_sizes: Sequence[int] = (256, 256)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps a (B, ...) batch to (B, num_classes) float32 logits."""
    x = constrain_batch(jnp.asarray(x, self.dtype).reshape(x.shape[0], -1))
    in_axis, out_axis = EMBED, MLP_HIDDEN
    for i, width in enumerate(self.hidden_sizes):
      x = precision.Dense(
          width, dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.lecun_normal(), (in_axis, out_axis)),
          bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, (out_axis,)),
          name=f"hidden{i}")(x)
      x = nn.relu(x)
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      in_axis, out_axis = out_axis, in_axis
    logits = precision.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (in_axis, CLASSES)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (CLASSES,)),
        name="head")(x)
    return logits.astype(jnp.float32)
