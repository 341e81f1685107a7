"""Per-parameter structure from regexes over parameter paths, and the small
transforms that use it (LR multipliers, freezing, L1/L2 penalties, parameter EMA).

A parameter's path is its pytree key path joined by "/", e.g. `Conv_0/kernel` for
`params["Conv_0"]["kernel"]`. Patterns are matched with `re.search`, so `bias`
matches every `.../bias`; anchor with `^...$` to match a whole path. This follows
big_vision's regex masks (`big_vision/optax.py`).
"""
from __future__ import annotations

import re
import sys
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

_NO_PARAMS = "this transformation needs params: tx.update(updates, state, params)"


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_paths(tree: Any) -> Any:
  """The "/"-joined key path of every leaf, e.g. `Conv_0/kernel`.

  Args:
    tree: any pytree, e.g. the params.

  Returns:
    A pytree like `tree` whose leaves are the path strings.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "/".join(_key_name(k) for k in path), tree)


def regex_mask(patterns: str | Sequence[str],
               default: Optional[Callable[[str, Any], bool]] = None
               ) -> Callable[[Any], Any]:
  """A mask function params -> pytree of bools: True where a pattern matches.

  Args:
    patterns: one regex or a sequence of regexes (any match counts). An empty
      string or empty sequence means "use `default`".
    default: (path, leaf) -> bool used when no pattern is given; None means False.

  Returns:
    A function usable as an Optax mask (`optax.masked(..., mask=fn)`).
  """
  if isinstance(patterns, str):
    patterns = [patterns] if patterns else []
  compiled = [re.compile(p) for p in patterns]

  def leaf_mask(path: str, leaf: Any) -> bool:
    if not compiled:
      return bool(default(path, leaf)) if default else False
    return any(p.search(path) for p in compiled)

  def mask_fn(params: Any) -> Any:
    return jax.tree.map(leaf_mask, param_paths(params), params)
  return mask_fn


def refuse_scheduled_mask(name: str) -> None:
  """Raises if optax.inject_hyperparams is using a mask function as a schedule.

  Without `static_args`, `optax.inject_hyperparams` calls every callable argument
  with the step count and passes the result to the factory: a mask function then
  yields one bool (`exclude_ndim_le_1(count)` is True, the scalar count has
  ndim 0), which a factory taking optax's mask forms would read as "every tensor",
  silently. Call this from the factory: it looks one frame up, at
  inject_hyperparams' init/update function, for its schedule table (`sched_hps`,
  optax 0.2.x); when that layout is not found it does nothing.

  Args:
    name: the factory's mask argument, e.g. "exclude".

  Raises:
    TypeError: `name` is being scheduled by optax.inject_hyperparams.
  """
  caller = sys._getframe(2)  # pylint: disable=protected-access
  scheduled = caller.f_locals.get("sched_hps")
  if isinstance(scheduled, dict) and name in scheduled:
    raise TypeError(
        f"{name}: optax.inject_hyperparams called this mask function with the step "
        f"count, as a schedule; pass static_args=({name!r},) to "
        "inject_hyperparams")


def ndim_above_1(path: str, leaf: Any) -> bool:
  """Default weight-decay rule: decay kernels/embeddings, not biases or norms."""
  del path
  return jnp.ndim(leaf) > 1


def multiplier_for(path: str,
                   rules: Sequence[tuple[str, float]]) -> float:
  """The multiplier of the first (regex, multiplier) rule matching `path`, else 1."""
  for pattern, mult in rules:
    if re.search(pattern, path):
      return float(mult)
  return 1.0


def scale_by_lr_multipliers(
    rules: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
  """Multiplies each update by the multiplier of its path (first match wins).

  Placed after the learning-rate scaling, so it scales that tensor's effective
  learning rate; for LARS (LR inside the momentum buffer) this is exact because the
  buffer is linear in a constant LR factor.

  Args:
    rules: sequence of (regex, multiplier).

  Returns:
    A stateless `GradientTransformation`.
  """
  rules = [(re.compile(p).pattern, float(m)) for p, m in rules]

  def update_fn(updates, state, params=None):
    del params
    def scale(path, u):
      mult = multiplier_for("/".join(_key_name(k) for k in path), rules)
      return u if mult == 1.0 else (u * mult).astype(u.dtype)
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def add_l1_l2(l1: float, l2: float,
              mask: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Adds the gradient of l1 * ||w||_1 + l2 / 2 * ||w||^2 (coupled regularisation).

  Args:
    l1: L1 coefficient (adds l1 * sign(w)).
    l2: L2 coefficient (adds l2 * w).
    mask: params -> pytree of bools, which tensors are penalised.

  Returns:
    A stateless `GradientTransformation`; it needs params.
  """
  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_NO_PARAMS)
    def add(g, w):
      return (g + l1 * jnp.sign(w) + l2 * w).astype(g.dtype)
    return jax.tree.map(add, updates, params), state

  return optax.masked(
      optax.GradientTransformation(optax.init_empty_state, update_fn), mask)


class ParamsEmaState(NamedTuple):
  """State of `track_params_ema`.

  Attributes:
    ema: the exponential moving average of the params, a pytree like them.
  """
  ema: optax.Params


def track_params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps ema <- decay * ema + (1 - decay) * new_params; updates pass through.

  Must be last in a chain: new_params = params + updates (the final updates). The
  average starts at the initial params, so it needs no bias correction. Read it with
  `ema_params(opt_state)`. Inside `optax.MultiSteps` it advances once per applied
  update, not per micro-step.

  Args:
    decay: EMA decay in [0, 1).

  Returns:
    A `GradientTransformation` that needs params.

  References:
    Polyak & Juditsky, Acceleration of Stochastic Approximation by Averaging, 1992.
  """
  def init_fn(params):
    # A copy, not an alias: the train state is donated, and one buffer may not be
    # donated twice.
    return ParamsEmaState(ema=jax.tree.map(lambda p: jnp.array(p, copy=True),
                                           params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_NO_PARAMS)
    def step(e, u, w):
      new_w = w + u
      return (decay * e + (1.0 - decay) * new_w).astype(e.dtype)
    ema = jax.tree.map(step, state.ema, updates, params)
    return updates, ParamsEmaState(ema=ema)

  return optax.GradientTransformation(init_fn, update_fn)


def ema_params(opt_state: optax.OptState) -> Optional[optax.Params]:
  """The parameter EMA kept by `track_params_ema` inside `opt_state`, or None.

  Works on the state of any chain / MultiSteps / masked wrapper containing it, so the
  runner does not need to know the chain's layout.

  Args:
    opt_state: an optimizer state, e.g. from `build(...)[0].init(params)`.

  Returns:
    The EMA params pytree, or None if the optimizer keeps no EMA.
  """
  found = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
           if isinstance(x, ParamsEmaState)]
  if len(found) > 1:
    raise ValueError(f"found {len(found)} parameter EMAs in the optimizer state")
  return found[0].ema if found else None
