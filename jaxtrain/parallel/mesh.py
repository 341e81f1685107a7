"""The device mesh: axes `data`, `fsdp`, `model`, built from `config.mesh`.

Sizes of -1 fill what the other axes leave of the device count. Axis types are Auto
(classic GSPMD propagation): this JAX's default, Explicit, rejects reshapes of sharded
dimensions unless every output sharding is spelled out (see shared/NOTES.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.experimental import mesh_utils
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxtrain import settings
from jaxtrain.errors import ConfigError

AXES = ("data", "fsdp", "model")
# Axes a batch is split over: data parallelism and FSDP both see distinct examples.
BATCH_AXES = ("data", "fsdp")


def resolve_shape(mesh_config: settings.Mesh | ml_collections.ConfigDict,
                  num_devices: int) -> tuple[int, int, int]:
  """Turns (data, fsdp, model) with at most one -1 into sizes that use every device."""
  sizes = [getattr(mesh_config, a) for a in AXES]
  fills = [a for a, s in zip(AXES, sizes) if s == -1]
  if len(fills) > 1:
    raise ConfigError(f"mesh.{fills[1]}", -1, "only one mesh axis may be -1 (fill)")
  fixed = math.prod(s for s in sizes if s != -1)
  if fills:
    if num_devices % fixed:
      raise ConfigError(f"mesh.{fills[0]}", -1, f"the other axes' product {fixed} "
                        f"does not divide the {num_devices} devices")
    sizes[AXES.index(fills[0])] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ConfigError("mesh", dict(zip(AXES, sizes)), f"the axes' product "
                      f"{math.prod(sizes)} must equal the {num_devices} devices; set "
                      "one axis to -1 to fill")
  return tuple(sizes)


def make_mesh(mesh_config: settings.Mesh | ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh over `devices` (default: all devices of all processes).

  Args:
    mesh_config: ``config.mesh``: sizes of the ``data``, ``fsdp`` and ``model``
      axes, one of them -1 to fill the remaining devices.
    devices: the devices to arrange.

  Returns:
    A `jax.sharding.Mesh` with axes (data, fsdp, model).

  Raises:
    ConfigError: sizes whose product is not the device count, naming ``mesh.*``.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_shape(mesh_config, len(devices))
  if len(devices) == len(jax.devices()):
    # Orders devices so neighbours on the physical interconnect are neighbours here.
    array = mesh_utils.create_device_mesh(shape, devices)
  else:
    array = np.asarray(devices).reshape(shape)
  return Mesh(array, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch(field: str, batch_size: int, mesh: Mesh) -> None:
  replicas = data_parallel_size(mesh)
  if batch_size % replicas:
    raise ConfigError(field, batch_size, f"the global batch must divide over the "
                      f"{replicas} data-parallel replicas (mesh data x fsdp); use a "
                      f"multiple of {replicas}")
