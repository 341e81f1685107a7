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

import collections.abc
import re
from typing import Any, Iterator

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

_BLOCK = re.compile(r"_block\d+$")
EPS = 1e-12  # a zero tensor's ratio is 0, not NaN


def group_of(path: tuple[Any, ...]) -> str:
  """The layer group of a parameter path (see the module docstring)."""
  first = path[0]
  name = str(getattr(first, "key", getattr(first, "name", first)))
  return _BLOCK.sub("", name)


@flax.struct.dataclass
class NamedValues(collections.abc.Mapping):
  """float32 scalars by name, held as one vector (a pytree; the names are static).

  The train step's diagnostics ride in the metric sums as one of these, not as a
  dict of scalars, where XLA gives every scalar its own output buffer, add and
  kernel (digits CNN step: 143 fusions with diagnostics this way, 160 as scalars,
  99 without; the step-time difference on a CPU is within noise,
  `benchmarks/diagnostics_cost.py`). A read-only mapping from name to
  ``array[..., i]`` (a leading axis, e.g. a sweep's trials, may come first).
  """
  array: jax.Array
  names: tuple[str, ...] = flax.struct.field(pytree_node=False)

  @classmethod
  def of(cls, scalars: dict[str, jax.typing.ArrayLike]) -> NamedValues:
    """From a dict of scalars (in its order)."""
    return cls(jnp.stack([jnp.asarray(v, jnp.float32) for v in scalars.values()]),
               tuple(scalars))

  def __getitem__(self, name: str) -> jax.Array:
    if name not in self.names:
      raise KeyError(name)
    return self.array[..., self.names.index(name)]

  def __iter__(self) -> Iterator[str]:
    return iter(self.names)

  def __len__(self) -> int:
    return len(self.names)

  def __add__(self, other: NamedValues) -> NamedValues:
    if other.names != self.names:
      raise ValueError(f"cannot add NamedValues of {other.names} to {self.names}")
    return self.replace(array=self.array + other.array)

  def __or__(self, other: NamedValues) -> NamedValues:
    """Both, self's names first."""
    return NamedValues(jnp.concatenate([self.array, other.array], axis=-1),
                       self.names + other.names)


def _sq(tree: Any) -> jax.Array:
  """Sum of squares of every leaf, in float32: a vector over the leaves."""
  return jnp.stack([jnp.sum(jnp.square(x.astype(jnp.float32)))
                    for x in jax.tree.leaves(tree)])


def _group_matrix(groups: list[str]) -> tuple[list[str], np.ndarray]:
  """(sorted group names, bool matrix [group, leaf]): every group's sum as one
  masked reduction (not a matmul: TPUs multiply float32 in bfloat16 passes by
  default)."""
  names = sorted(set(groups))
  return names, np.array([[g == n for g in groups] for n in names])


def update_stats(grads: Any, params: Any, updates: Any) -> NamedValues:
  """Norms and ratios of one update, float32, named for metrics.jsonl.

  Computed as a few vector operations over the per-leaf sums of squares (one
  reduction per leaf and tree), not one small op per group and statistic.

  Args:
    grads: the gradient tree as the optimizer receives it (before its clipping).
    params: the parameters before the update.
    updates: what the optimizer returned (``new_params - params``).

  Returns:
    ``grad_norm``, ``param_norm``, ``update_norm``, ``update_ratio`` (global);
    ``<group>/grad_norm``, ``<group>/update_ratio`` per group; and
    ``layer_update_ratio_{min,median,max}`` over tensors of two or more dimensions.
  """
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  groups, member = _group_matrix([group_of(p) for p, _ in paths])
  layers = np.flatnonzero([x.ndim > 1 for _, x in paths])
  g, w, u = _sq(grads), _sq(params), _sq(updates)
  total = jnp.sqrt(jnp.stack([g.sum(), w.sum(), u.sum()]))  # grad, param, update
  per_group = jnp.sqrt(jnp.sum(jnp.where(member[:, :, None],
                                         jnp.stack([g, w, u], axis=1), 0.0), axis=1))
  ratios = (jnp.sqrt(u) / (jnp.sqrt(w) + EPS))[layers]
  values = jnp.concatenate([
      total, total[2:] / (total[1:2] + EPS), per_group[:, 0],
      per_group[:, 2] / (per_group[:, 1] + EPS),
      jnp.stack([jnp.min(ratios), jnp.median(ratios), jnp.max(ratios)])])
  names = (("grad_norm", "param_norm", "update_norm", "update_ratio")
           + tuple(f"{n}/grad_norm" for n in groups)
           + tuple(f"{n}/update_ratio" for n in groups)
           + tuple(f"layer_update_ratio_{k}" for k in ("min", "median", "max")))
  return NamedValues(values, names)


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


def trust_ratio_stats(ratios: list[tuple[str, jax.Array]]) -> NamedValues | None:
  """``trust_ratio_{min,median,max}`` over tensors and ``<group>/trust_ratio``
  (the median over the group's tensors), from (group, ratio) pairs; None if none.

  Every group's median comes from one sort: the groups' ratios as rows padded with
  +inf, then the mean of each row's two middle entries (one entry for an odd count).
  """
  if not ratios:
    return None
  values = jnp.stack([r for _, r in ratios])
  groups = sorted({grp for grp, _ in ratios})
  members = [[i for i, (grp, _) in enumerate(ratios) if grp == name] for name in groups]
  width = max(len(m) for m in members)
  index = np.array([m + [len(ratios)] * (width - len(m)) for m in members])
  rows = jnp.sort(jnp.append(values, jnp.inf)[index], axis=1)
  low = np.array([(len(m) - 1) // 2 for m in members])
  high = np.array([len(m) // 2 for m in members])
  rank = np.arange(len(groups))
  medians = (rows[rank, low] + rows[rank, high]) / 2
  out = jnp.concatenate([jnp.stack([jnp.min(values), jnp.median(values),
                                    jnp.max(values)]), medians])
  return NamedValues(out, ("trust_ratio_min", "trust_ratio_median", "trust_ratio_max")
                     + tuple(f"{name}/trust_ratio" for name in groups))
