"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth", arXiv
1603.09382): during training a residual branch is dropped at random, so the block
is the identity (its shortcut) for that example.

Survival probabilities decay linearly with depth (the paper's Eq. 4): for block
l = 1..L, p_l = 1 - (l / L) (1 - p_L), i.e. drop rate ``rate * l / L`` with
``rate = 1 - p_L`` (`drop_path_rates`). Two details follow timm's ``DropPath``, what
current recipes ("ResNet strikes back", DeiT) use: the branch is dropped per
example rather than per mini-batch, and a kept branch is divided by its survival
probability during training (so evaluation is the identity, where the paper instead
multiplies by p_l at test time: the same expectation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxtrain.errors import ConfigError


def check_rate(value, field: str) -> None:
  """Drop rates are in [0, 1): a rate of 1 would divide by a zero survival."""
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not 0.0 <= value < 1.0):
    raise ConfigError(field, value, "use a rate in [0, 1)")


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
  """Drop rate of blocks 1..L: ``rate * l / L`` (the last block drops at `rate`)."""
  return [rate * (l + 1) / num_blocks for l in range(num_blocks)]


class DropPath(nn.Module):
  """Zeroes the whole input per example with probability `rate` (train only).

  Kept examples are scaled by 1 / (1 - rate), so E[output] = input. Needs a
  ``"dropout"`` rng when not deterministic.
  """
  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, mask_shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
