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
