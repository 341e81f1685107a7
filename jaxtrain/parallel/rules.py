"""Logical-axis sharding rules: the default and the named presets (plain data).

A rule maps a logical axis name (see `jaxtrain.models`) to mesh axes;
`jaxtrain.parallel.sharding` applies them. Kept free of JAX so that
`config.base_config()` can read the default before JAX is imported.
"""
from __future__ import annotations

from typing import Any

# Data parallel by default: examples over (data, fsdp), parameters replicated. FSDP
# and tensor parallelism are rule changes, e.g. ("embed", "fsdp"), ("mlp", "model").
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
)


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

MESH_AXES = ("data", "fsdp", "model")


def check(rules: Any, field: str = "sharding.rules") -> None:
  """Raises ConfigError unless `rules` is a sequence of (logical name, mesh axes)
  pairs, the mesh axes None, one of MESH_AXES, or a tuple of distinct ones."""
  from jaxtrain.errors import ConfigError  # pylint: disable=g-import-not-at-top
  fix = ("use ((logical_name, mesh_axes), ...) with mesh_axes None, one of "
         f"{', '.join(MESH_AXES)} or a tuple of them, e.g. {DEFAULT_RULES}")
  if not isinstance(rules, (tuple, list)):
    raise ConfigError(field, rules, fix)
  for rule in rules:
    if (not isinstance(rule, (tuple, list)) or len(rule) != 2
        or not isinstance(rule[0], str) or not rule[0]):
      raise ConfigError(field, tuple(rules), f"rule {rule!r} is not a "
                        f"(logical_name, mesh_axes) pair; {fix}")
    axes = rule[1]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    if (not isinstance(axes, (tuple, list)) or len(set(axes)) != len(axes)
        or any(a not in MESH_AXES for a in axes)):
      raise ConfigError(field, tuple(rules), f"rule {tuple(rule)!r} names mesh "
                        f"axes {rule[1]!r}; the mesh has {', '.join(MESH_AXES)} "
                        "(each at most once per rule)")
