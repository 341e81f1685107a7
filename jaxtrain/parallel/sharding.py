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

# Data parallel by default: examples over (data, fsdp), parameters replicated. FSDP
# and tensor parallelism are rule changes, e.g. ("embed", "fsdp"), ("mlp", "model").
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
)

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


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Named rule presets (`config.sharding.rules = sharding.RULES_FSDP_TP`). Rules apply in
# order and a mesh axis is used at most once per array, so `batch` comes first: the
# activations' `embed` then stays whole where the batch already takes `fsdp`.
# Data parallel: examples over (data, fsdp), every parameter replicated.
RULES_DP: tuple[tuple[str, Any], ...] = DEFAULT_RULES
# ZeRO-3 / FSDP (Rajbhandari et al. 2019, arXiv 1910.02054): parameters and optimizer
# state sharded over `fsdp` along their embedding / conv-output dimension, gathered
# per layer for compute; each device keeps its shard of the summed gradients (the
# partitioner's all-reduce + slice, a reduce-scatter where the backend fuses them).
RULES_FSDP: tuple[tuple[str, Any], ...] = DEFAULT_RULES + (
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
)
# Megatron-LM tensor parallelism (Shoeybi et al. 2019, arXiv 1909.08053): attention
# heads and MLP hidden units over `model` (column- then row-parallel kernels).
RULES_TP: tuple[tuple[str, Any], ...] = DEFAULT_RULES + (
    ("heads", "model"),
    ("mlp", "model"),
)
# Both: a kernel ("embed", "mlp") is sharded P("fsdp", "model").
RULES_FSDP_TP: tuple[tuple[str, Any], ...] = RULES_FSDP + RULES_TP[len(DEFAULT_RULES):]
