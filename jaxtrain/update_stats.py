"""What happens inside an update: norms of gradients, parameters and updates.

Per step, computed on device inside the train step (a few reductions over trees the
step already holds, no extra pass over the data): the global L2 norm of the
gradient, the parameters and the update the optimizer applied, the update/parameter
ratio ||u|| / ||w|| (how far one step moves the weights, relative to their size:
the quantity LARS and LAMB control per layer; You et al. 2017, arXiv 1708.03888,
and 2019, arXiv 1904.00962), and the same per layer group. big_vision logs the
global gradient, parameter and update norms (``l2_grads``, ``l2_params``,
``l2_updates``); MaxText the gradient norm.

Groups: a parameter's group is the first component of its path with a trailing
block number dropped (``stage2_block3/conv1/kernel`` -> ``stage2``; ``block7/...``
-> ``block7``; ``head/kernel`` -> ``head``), i.e. ResNet stages, ViT blocks, stem,
embeddings and head. The per-layer ratio ||u_l|| / ||w_l|| is summarised by its
minimum, median and maximum over the parameter tensors ("layers") with more than
one element, since biases and norm scales start at exact constants.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

_BLOCK = re.compile(r"_block\d+$")
EPS = 1e-12  # a zero tensor's ratio is 0, not NaN


def group_of(path: tuple[Any, ...]) -> str:
  """The layer group of a parameter path (see the module docstring)."""
  first = path[0]
  name = str(getattr(first, "key", getattr(first, "name", first)))
  return _BLOCK.sub("", name)


def _sq(tree: Any) -> list[tuple[str, jax.Array, int]]:
  """(group, sum of squares in float32, size) of every leaf."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(group_of(p), jnp.sum(jnp.square(x.astype(jnp.float32))), x.size)
          for p, x in leaves]


def update_stats(grads: Any, params: Any, updates: Any) -> dict[str, jax.Array]:
  """Norms and ratios of one update, as float32 scalars keyed for metrics.jsonl.

  Args:
    grads: the gradient tree as the optimizer receives it (before its clipping).
    params: the parameters before the update.
    updates: what the optimizer returned (``new_params - params``).

  Returns:
    ``grad_norm``, ``param_norm``, ``update_norm``, ``update_ratio`` (global);
    ``<group>/grad_norm``, ``<group>/update_ratio`` per group; and
    ``layer_update_ratio_{min,median,max}`` over tensors of more than one element.
  """
  g, w, u = _sq(grads), _sq(params), _sq(updates)
  out = {"grad_norm": jnp.sqrt(sum(s for _, s, _ in g)),
         "param_norm": jnp.sqrt(sum(s for _, s, _ in w)),
         "update_norm": jnp.sqrt(sum(s for _, s, _ in u))}
  out["update_ratio"] = out["update_norm"] / (out["param_norm"] + EPS)
  for name in sorted({grp for grp, _, _ in g}):
    pick = lambda xs: sum(s for grp, s, _ in xs if grp == name)  # noqa: E731
    out[f"{name}/grad_norm"] = jnp.sqrt(pick(g))
    out[f"{name}/update_ratio"] = jnp.sqrt(pick(u)) / (jnp.sqrt(pick(w)) + EPS)
  ratios = jnp.stack([jnp.sqrt(su) / (jnp.sqrt(sw) + EPS)
                      for (_, su, n), (_, sw, _) in zip(u, w) if n > 1])
  out["layer_update_ratio_min"] = jnp.min(ratios)
  out["layer_update_ratio_median"] = jnp.median(ratios)
  out["layer_update_ratio_max"] = jnp.max(ratios)
  return out
