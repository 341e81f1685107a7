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
minimum, median and maximum over the weight matrices and kernels ("layers": tensors
of two or more dimensions): biases and norm scales start at exact constants (a zero
bias has no ratio), and weight decay's default mask leaves them out for the same
reason.
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
  """(group, sum of squares in float32, number of dimensions) of every leaf."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(group_of(p), jnp.sum(jnp.square(x.astype(jnp.float32))), x.ndim)
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
    ``layer_update_ratio_{min,median,max}`` over tensors of two or more dimensions.
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
                      for (_, su, nd), (_, sw, _) in zip(u, w) if nd > 1])
  out["layer_update_ratio_min"] = jnp.min(ratios)
  out["layer_update_ratio_median"] = jnp.median(ratios)
  out["layer_update_ratio_max"] = jnp.max(ratios)
  return out


def lars_trust_ratios(grads: Any, params: Any, excluded: Any, *,
                      trust_coefficient: float, weight_decay: float,
                      eps: float) -> list[tuple[str, jax.Array]]:
  """(group, trust ratio) of every tensor LARS scales, from the formula.

  tr = c * ||w|| / (||g|| + wd * ||w|| + eps), 1 where ||w|| or ||g|| is 0 (You et
  al. 2017, arXiv 1708.03888; `jaxtrain.optim.lars`, TPU/MLPerf form). Exact for
  the gradient LARS receives: pass that one (no clipping or noise in between).

  Args:
    grads, params: the gradient LARS receives and the parameters before the update.
    excluded: a tree of Python bools like `params`, True where LARS applies no
      trust ratio (and no weight decay).
    trust_coefficient, weight_decay, eps: LARS's hyperparameters.
  """
  out = []
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, w), g, skip in zip(leaves, jax.tree.leaves(grads),
                                jax.tree.leaves(excluded)):
    if skip:
      continue
    w_norm = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32))))
    g_norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    out.append((group_of(path), jnp.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)))
  return out


def lamb_trust_ratios(adam_state: Any, params: Any, decayed: Any, *, b1: float,
                      b2: float, eps: float, weight_decay: float
                      ) -> list[tuple[str, jax.Array]]:
  """(group, trust ratio) of every tensor, LAMB's, from its updated Adam moments.

  LAMB (You et al. 2019, arXiv 1904.00962; `optax.lamb`): the Adam direction
  d = m_hat / (sqrt(v_hat) + eps) plus wd * w (where `decayed`), scaled per tensor
  by tr = ||w|| / ||d + wd * w|| (1 where either norm is 0, as in
  `optax.scale_by_trust_ratio`). m_hat and v_hat are the bias-corrected moments of
  `adam_state` after this step's update (`optax.ScaleByAdamState`).

  Args:
    adam_state: LAMB's `optax.ScaleByAdamState` after the update.
    params: the parameters before the update.
    decayed: a tree of Python bools like `params`, True where weight decay applies.
    b1, b2, eps, weight_decay: LAMB's hyperparameters.
  """
  count = adam_state.count.astype(jnp.float32)
  c1, c2 = 1.0 - b1 ** count, 1.0 - b2 ** count
  out = []
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, w), m, v, wd in zip(leaves, jax.tree.leaves(adam_state.mu),
                                 jax.tree.leaves(adam_state.nu),
                                 jax.tree.leaves(decayed)):
    w = w.astype(jnp.float32)
    d = (m.astype(jnp.float32) / c1) / (jnp.sqrt(v.astype(jnp.float32) / c2) + eps)
    if wd:
      d = d + weight_decay * w
    w_norm, d_norm = jnp.sqrt(jnp.sum(w * w)), jnp.sqrt(jnp.sum(d * d))
    ratio = w_norm / jnp.where(d_norm > 0, d_norm, 1.0)
    out.append((group_of(path), jnp.where((w_norm > 0) & (d_norm > 0), ratio, 1.0)))
  return out


def trust_ratio_stats(ratios: list[tuple[str, jax.Array]]) -> dict[str, jax.Array]:
  """``trust_ratio_{min,median,max}`` over tensors and ``<group>/trust_ratio``
  (the median over the group's tensors), from (group, ratio) pairs."""
  if not ratios:
    return {}
  values = jnp.stack([r for _, r in ratios])
  out = {"trust_ratio_min": jnp.min(values), "trust_ratio_median": jnp.median(values),
         "trust_ratio_max": jnp.max(values)}
  for name in sorted({grp for grp, _ in ratios}):
    out[f"{name}/trust_ratio"] = jnp.median(
        jnp.stack([r for grp, r in ratios if grp == name]))
  return out
