"""The simple gradient noise scale B_simple = tr(Sigma) / |G|^2, from data parallelism.

McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training",
2018, arXiv 1812.06162, appendix A. A minibatch gradient G_B of batch size B has
E|G_B|^2 = |G|^2 + tr(Sigma) / B, where G is the true gradient and Sigma the
per-example gradient covariance. Two batch sizes that data parallelism already has,
B_small (one replica's batch) and B_big (the all-reduced batch), give the unbiased
estimates

  |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
  tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each is noisy (either can be negative on one step), so each is smoothed with its own
exponential moving average and B_simple is the ratio of the two averages, as in the
paper. The per-replica |G_small|^2 used here is the mean over replicas of each
replica's squared gradient norm: still unbiased, with less variance than one
replica's.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _sq_norm(tree: Any) -> jax.Array:
  """Sum of squares of every leaf, in float32."""
  leaves = jax.tree.leaves(tree)
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def estimates(small_sq_norm: jax.typing.ArrayLike, big_sq_norm: jax.typing.ArrayLike,
              b_small: float, b_big: float) -> tuple[jax.Array, jax.Array]:
  """One step's unbiased estimates of |G|^2 and tr(Sigma) (appendix A).

  Args:
    small_sq_norm: |G_small|^2, the squared norm of a gradient over b_small
      examples (or the mean of several such).
    big_sq_norm: |G_big|^2, the squared norm of the gradient over b_big examples.
    b_small: the small batch size (per replica).
    b_big: the big batch size (all replicas); must be > b_small.

  Returns:
    (|G|^2 estimate, tr(Sigma) estimate); either may be negative on one step.

  Raises:
    ValueError: b_big <= b_small or b_small <= 0.
  """
  if not 0 < b_small < b_big:
    raise ValueError(f"noise scale needs 0 < b_small < b_big, got b_small={b_small}, "
                     f"b_big={b_big} (one replica: no second batch size)")
  g2 = (b_big * big_sq_norm - b_small * small_sq_norm) / (b_big - b_small)
  trace = (small_sq_norm - big_sq_norm) / (1.0 / b_small - 1.0 / b_big)
  return jnp.asarray(g2, jnp.float32), jnp.asarray(trace, jnp.float32)


class NoiseScaleState(NamedTuple):
  """EMAs of the two estimates (a pytree: jit- and checkpoint-friendly).

  Attributes:
    g2: EMA of the |G|^2 estimates, not bias-corrected.
    trace: EMA of the tr(Sigma) estimates, not bias-corrected.
    count: number of updates, for the bias correction.
  """
  g2: jax.Array
  trace: jax.Array
  count: jax.Array


def init() -> NoiseScaleState:
  """An empty state (both averages 0, count 0)."""
  zero = jnp.zeros([], jnp.float32)
  return NoiseScaleState(g2=zero, trace=zero, count=jnp.zeros([], jnp.int32))


def update(state: NoiseScaleState, small_sq_norm: jax.typing.ArrayLike,
           big_sq_norm: jax.typing.ArrayLike, b_small: float, b_big: float,
           decay: float = 0.99) -> NoiseScaleState:
  """Adds one step's estimates to the moving averages.

  Args:
    state: the current state.
    small_sq_norm, big_sq_norm, b_small, b_big: as in `estimates`.
    decay: EMA decay in [0, 1).

  Returns:
    The new state.
  """
  g2, trace = estimates(small_sq_norm, big_sq_norm, b_small, b_big)
  return NoiseScaleState(g2=decay * state.g2 + (1.0 - decay) * g2,
                         trace=decay * state.trace + (1.0 - decay) * trace,
                         count=state.count + 1)


def averages(state: NoiseScaleState, decay: float = 0.99
             ) -> tuple[jax.Array, jax.Array]:
  """Bias-corrected EMAs (|G|^2, tr(Sigma)), as Adam corrects its moments.

  Args:
    state: the state after at least one `update`.
    decay: the decay `update` used.

  Returns:
    (|G|^2, tr(Sigma)) averages.
  """
  correction = 1.0 - jnp.asarray(decay, jnp.float32) ** state.count
  return state.g2 / correction, state.trace / correction


def simple_noise_scale(state: NoiseScaleState) -> jax.Array:
  """B_simple = EMA tr(Sigma) / EMA |G|^2 (the bias corrections cancel).

  NaN before the first update; can be negative or huge while the |G|^2 average is
  near zero (noise-dominated), which is itself the signal that B_simple is large.
  """
  return state.trace / state.g2


def data_parallel_sq_norms(grads: Any, axis_name: str | tuple[str, ...]
                           ) -> tuple[jax.Array, jax.Array]:
  """|G_small|^2 and |G_big|^2 inside a data-parallel step (under `shard_map`).

  Under `shard_map` with its default `check_vma=True`, `jax.grad` with respect to
  replicated params already sums the gradient over the batch axis (the transpose
  of the implicit broadcast), so there is no per-replica gradient left: take the
  gradient with respect to `jax.lax.pcast(params, axis_name, to="varying")`. Such
  already-reduced gradients are refused here rather than giving |G_small| =
  |G_big| (an estimate of 0 noise).

  Args:
    grads: this replica's gradient, the mean over its own examples (before the
      all-reduce).
    axis_name: the mesh axis (or axes) the batch is split over.

  Returns:
    (mean over replicas of each replica's squared gradient norm, squared norm of
    the all-reduced (mean) gradient); identical on every replica.

  Raises:
    ValueError: `grads` are known not to vary over `axis_name`.
  """
  _check_per_replica(grads, axis_name)
  small = jax.lax.pmean(_sq_norm(grads), axis_name)
  big = _sq_norm(jax.lax.pmean(grads, axis_name))
  return small, big


def _varying_axes(x: Any) -> frozenset | None:
  """The manual mesh axes `x` varies over under shard_map, None if not tracked."""
  aval = jax.typeof(x)
  axes = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
  return getattr(aval, "vma", None) if axes is None else axes


def _check_per_replica(grads: Any, axis_name: str | tuple[str, ...]) -> None:
  """Raises if vma tracking is on and a gradient leaf does not vary over the axes."""
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  tracked = _varying_axes(jax.lax.axis_index(names))
  if not tracked or not set(names) <= set(tracked):
    return  # check_vma=False (or an older JAX): nothing to check against
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    if not set(names) <= set(_varying_axes(leaf) or ()):
      raise ValueError(
          f"noise scale: gradient {jax.tree_util.keystr(path)} does not vary over "
          f"{names}: shard_map already all-reduced it (grad of replicated params). "
          f"Differentiate with respect to jax.lax.pcast(params, {axis_name!r}, "
          "to='varying') to keep per-replica gradients")


def stacked_sq_norms(per_replica_grads: Any) -> tuple[jax.Array, jax.Array]:
  """The same two norms from per-replica gradients stacked on a leading axis.

  Args:
    per_replica_grads: a pytree whose leaves have shape [n_replicas, ...], each
      slice one replica's mean gradient over an equal number of examples.

  Returns:
    (mean over replicas of the squared norms, squared norm of their mean).
  """
  per_replica = jax.vmap(_sq_norm)(per_replica_grads)
  mean_grad = jax.tree.map(lambda g: jnp.mean(g.astype(jnp.float32), axis=0),
                           per_replica_grads)
  return jnp.mean(per_replica), _sq_norm(mean_grad)


def per_replica_gradients(loss_fn: Callable[..., tuple[jax.Array, Any]], params: Any,
                          batch: dict[str, jax.Array], rng: jax.Array,
                          axes: tuple[str, ...]
                          ) -> tuple[Any, Any, tuple[jax.Array, jax.Array, int, int]]:
  """The all-reduced gradient and the two squared norms, in one backward pass.

  Data parallelism's own computation, spelled out with `jax.shard_map` over the
  batch axes of the active mesh (the others stay automatic): each replica
  differentiates the mean loss of its own examples, with respect to parameters
  cast to vary over the replicas (`jax.lax.pcast`, so the gradient is this
  replica's, not already summed), takes its squared norm, and the gradients'
  mean over replicas is the all-reduce. The replicas' examples must not depend
  on one another (no cross-replica batch statistics: `DistributedBatchNorm`
  refuses to run here); the model's logical constraints apply to the other axes.

  Args:
    loss_fn: ``(params, batch, rng) -> (mean loss, aux)``, every leaf of aux per
      example (batch-leading).
    params: the parameters (replicated over `axes`).
    batch: the global batch, sharded over `axes`.
    rng: replica r uses ``fold_in(rng, r)``.
    axes: the mesh axes the batch is split over (> 1 replica in all).

  Returns:
    (mean gradient, aux of the whole batch, (|G_small|^2 averaged over replicas,
    |G_big|^2, b_small, b_big)) for `update`.
  """
  size = jax.tree.leaves(batch)[0].shape[0]
  mesh = jax.sharding.get_abstract_mesh()
  replicas = math.prod(mesh.shape[a] for a in axes)

  # Inside, the batch axes are manual: the model's logical constraints name the
  # automatic axes only.
  rules = _without_axes(nn.get_logical_axis_rules(), axes)

  def replica(params, batch, rng):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axes))
    own = jax.lax.pcast(params, axes, to="varying")
    with nn.logical_axis_rules(rules):
      grads, aux = jax.grad(loss_fn, has_aux=True)(own, batch, rng)
    small = jax.lax.pmean(_sq_norm(grads), axes)
    grads = jax.lax.pmean(grads, axes)
    return grads, aux, small, _sq_norm(grads)

  spec = P(axes)
  grads, aux, small, big = jax.shard_map(
      replica, in_specs=(P(), spec, P()), out_specs=(P(), spec, P(), P()),
      axis_names=set(axes))(params, batch, rng)
  return grads, aux, (small, big, size // replicas, size)


def _without_axes(rules: Any, axes: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
  """Logical axis rules with the mesh axes `axes` taken out of every target."""
  out = []
  for name, target in rules:
    kept = tuple(a for a in ((target,) if isinstance(target, str) else target or ())
                 if a not in axes)
    out.append((name, kept[0] if len(kept) == 1 else (kept or None)))
  return tuple(out)
