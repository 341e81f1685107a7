"""Logical axis names -> mesh axes, and shardings for a whole train state.

Models name the axes of their parameters and activations (`nn.with_logical_partitioning`,
`nn.with_logical_constraint`); `config.sharding.rules` maps each logical name to mesh
axes (MaxText's scheme). A name without a rule is not sharded. Optimizer state that
mirrors the parameters takes the parameters' shardings (`optax.tree_map_params`);
counters and other scalars are replicated.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# The rule presets are plain data (jaxtrain.parallel.rules, read by base_config before
# JAX is imported), and are used from here: `sharding.RULES_FSDP`.
from jaxtrain.parallel.rules import (  # noqa: F401
    DEFAULT_RULES, RULES_DP, RULES_FSDP, RULES_FSDP_TP, RULES_TP)

Rules = Sequence[tuple[str, Any]]


def _is_spec(x: Any) -> bool:
  return isinstance(x, P)


def logical_specs(abstract_tree: Any) -> Any:
  """Logical PartitionSpecs of a tree whose leaves may be `nn.LogicallyPartitioned`."""
  return nn.get_partition_spec(abstract_tree)


def opt_state_specs(tx: optax.GradientTransformation, abstract_opt_state: Any,
                    param_specs: Any) -> Any:
  """Specs for the optimizer state: parameter-shaped parts follow `param_specs`."""
  return optax.tree_map_params(
      tx, lambda _, spec: spec, abstract_opt_state, param_specs,
      transform_non_params=lambda _: P(), is_leaf=_is_spec)


def to_shardings(specs: Any, mesh: Mesh, rules: Rules) -> Any:
  """Logical specs -> NamedShardings on `mesh` through the rule table."""
  return nn.logical_to_mesh_sharding(specs, mesh, [tuple(r) for r in rules])


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Makes `mesh` and `rules` visible to traced code (logical constraints, BN)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules([tuple(r) for r in rules]):
    yield


def abstract(tree: Any, shardings: Any) -> Any:
  """`tree`'s leaves as `jax.ShapeDtypeStruct`s carrying `shardings` (same
  structure): what `jit(...).lower` and Orbax's restore take for sharded arrays."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
