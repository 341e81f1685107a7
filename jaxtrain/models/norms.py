"""Normalization layers by name (``model.normalization``), for NHWC feature maps.

Each normalizes x to (x - mean) / sqrt(var + eps) * scale_c + bias_c with per-channel
scale and bias; they differ in the set the mean and (biased) variance are taken over
(Wu & He 2018, "Group Normalization", arXiv 1803.08494, Fig. 2):

  ========  =====================================================  =================
  name      statistics over                                        source
  ========  =====================================================  =================
  batch     (N, H, W) per channel; N = a group of replicas'        Ioffe & Szegedy
            examples (`DistributedBatchNorm`); running averages    2015
            for eval
  layer     (H, W, C) per example                                  Ba et al. 2016
  group     (H, W, C / G) per example and group of channels        Wu & He 2018
  instance  (H, W) per example and channel                         Ulyanov et al. 2016
  ========  =====================================================  =================

Only batch norm has state (``batch_stats``) and differs between train and eval.
The others are `flax.linen.GroupNorm` with 1 group (layer), G groups, or groups of
one channel (instance); statistics in float32.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from flax import linen as nn

from jaxtrain.errors import ConfigError
from jaxtrain.models.registry import NORM
from jaxtrain.parallel.batchnorm import DistributedBatchNorm

NORMALIZATIONS = ("batch", "layer", "group", "instance")


def check(name: Any, num_groups: Any, channels: int,
          field: str = "model.normalization") -> None:
  """Raises ConfigError for an unknown kind, or groups that do not tile `channels`.

  `channels` is a channel count every normalized layer is a multiple of.
  """
  if name not in NORMALIZATIONS:
    raise ConfigError(field, name, "not a known normalization",
                      choices=NORMALIZATIONS)
  if name == "group" and (isinstance(num_groups, bool)
                          or not isinstance(num_groups, int) or num_groups < 1
                          or channels % num_groups):
    raise ConfigError("model.norm_groups", num_groups,
                      f"use a positive divisor of the width ({channels} channels)")


def make(name: str, *, train: bool, epsilon: float, dtype: Any, param_dtype: Any,
         bn_momentum: float = 0.9, bn_group_size: int | None = None,
         num_groups: int = 32, impl: str = "reference") -> Callable[..., nn.Module]:
  """A factory `norm(name=..., scale_init=...)` for layers of kind `name`.

  Scale and bias carry the logical name ``norm``; `scale_init` may be overridden
  per layer (zero-initialised last scale of a residual block).
  """
  common = dict(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, NORM),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, NORM))
  if name == "batch":
    return functools.partial(
        DistributedBatchNorm, use_running_average=not train, momentum=bn_momentum,
        group_size=bn_group_size, impl=impl, **common)
  groups = {"layer": dict(num_groups=1),
            "group": dict(num_groups=num_groups),
            "instance": dict(num_groups=None, group_size=1)}[name]
  return functools.partial(nn.GroupNorm, **groups, **common)
