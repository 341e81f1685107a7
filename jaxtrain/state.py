"""The train state: one pytree that is sharded, donated and checkpointed whole."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxtrain.errors import ConfigError
from jaxtrain.parallel import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue bit for bit.

  Attributes:
    step: number of updates applied so far (int32 scalar).
    params: model parameters (float32).
    model_state: non-trained model variables, e.g. `{"batch_stats": ...}`.
    opt_state: the optax state.
    rng: base PRNG key (raw uint32); step k uses `fold_in(rng, k)`, so resuming at
      step k draws the same dropout masks as an uninterrupted run.
    ema: None, or the exponential moving average of the weights,
      {"params": ..., "model_state": ...} (`jaxtrain.ema`, `train.ema_decay`).
    noise_scale: None, or the moving averages of the gradient noise scale's two
      estimates (`jaxtrain.noise_scale.NoiseScaleState`, `train.diagnostics`).
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  ema: Any = None
  noise_scale: Any = None


def init_functions(model: Any, tx: Any, input_shape: tuple[int, ...], seed: int):
  """(init_variables, init_state): the functions that build a fresh state (with
  `tx` None, one without optimizer state: the vectorized sweep adds its own, and
  `runner.eval_metric_names` traces one without compiling anything).

  Returns:
    (init_variables, init_state): zero-argument functions returning the model's
    variables and a fresh TrainState.
  """
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  dummy = jnp.zeros((1, *input_shape), jnp.float32)

  def init_variables():
    return model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)

  def init_state():
    variables = dict(nn.meta.unbox(init_variables()))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=variables,
                      opt_state=None if tx is None else tx.init(params), rng=state_rng)

  return init_variables, init_state


def abstract_train_state(model: Any, tx: Any, input_shape: tuple[int, ...], seed: int,
                         mesh: Any, rules: Any) -> tuple[TrainState, Any]:
  """The TrainState `create_train_state` builds, as sharded ShapeDtypeStructs.

  Same shapes (`jax.eval_shape` of the same init) and shardings (the model's
  logical axis names through `rules`), but nothing is initialized, so it also
  works for devices this process cannot reach (ahead-of-time pod compiles).

  Returns:
    (abstract_state, shardings).

  Raises:
    ConfigError: a sharded dimension does not divide over its mesh axes (see
      `check_divisible`).
  """
  init_variables, init_state = init_functions(model, tx, input_shape, seed)
  var_specs = dict(sharding.logical_specs(jax.eval_shape(init_variables)))
  param_specs = var_specs.pop("params")
  abstract = jax.eval_shape(init_state)
  specs = TrainState(
      step=P(), params=param_specs, model_state=var_specs, rng=P(),
      opt_state=sharding.opt_state_specs(tx, abstract.opt_state, param_specs))
  shardings = sharding.to_shardings(specs, mesh, rules)
  check_divisible(abstract, specs, shardings, rules)
  return sharding.abstract(abstract, shardings), shardings


_KINDS = {"params": "parameter", "opt_state": "optimizer state",
          "model_state": "model state"}


def _mesh_axes(entry: Any) -> tuple[str, ...]:
  """A PartitionSpec entry (None, 'fsdp' or ('data', 'fsdp')) as a tuple of axes."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def check_divisible(abstract: Any, logical_specs: Any, shardings: Any,
                    rules: Any) -> None:
  """Every sharded dimension of the state must split evenly over its mesh axes.

  `jit` cannot place an array whose dimension is not a multiple of the devices it
  is split over, and says so only by sharding and shape, after tracing. This
  names the leaf (e.g. ``params/hidden1/kernel``), its logical axis, the mesh
  axes and the fix, before anything compiles.

  Raises:
    ConfigError: on `sharding.rules`, with the rule that maps the logical axis.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(abstract)
  logical = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P))
  for (path, leaf), names, named in zip(leaves, logical, jax.tree.leaves(shardings)):
    for dim, (size, entry) in enumerate(zip(leaf.shape, named.spec)):
      axes = _mesh_axes(entry)
      parts = math.prod(named.mesh.shape[a] for a in axes)
      if size % parts == 0:
        continue
      name = names[dim] if dim < len(names) else None
      rule = next((tuple(r) for r in rules if r[0] == name), name)
      where = jax.tree_util.keystr(path, simple=True, separator="/")
      kind = _KINDS.get(where.split("/")[0], "state")
      split = (f"mesh axis {axes[0]!r} of size {parts}" if len(axes) == 1 else
               f"mesh axes {' x '.join(map(repr, axes))} ({parts} parts)")
      raise ConfigError(
          "sharding.rules", rule,
          f"{kind} {where} of shape {tuple(leaf.shape)}: dimension {dim} (logical "
          f"axis {name!r}, size {size}) is split over {split}, which does not "
          f"divide it; map {name!r} to other mesh axes (or none) in "
          f"sharding.rules, or change the mesh sizes "
          f"({', '.join(f'mesh.{a}' for a in axes)}) so that {parts} divides {size}")


def create_train_state(model: Any, tx: Any, input_shape: tuple[int, ...], seed: int,
                       mesh: Any, rules: Any) -> tuple[TrainState, Any]:
  """Initializes a TrainState directly in its shards (never whole on one host).

  Shapes come from `jax.eval_shape`; shardings from the model's logical axis names
  and `rules`; then one jitted init writes each shard on its device (big_vision).

  Args:
    model: the Flax linen model.
    tx: the optax transformation (its state is created sharded like the params).
    input_shape: shape of one example, (height, width, channels), e.g.
      ``(224, 224, 3)``; the init runs on a batch of one.
    seed: seed of the init and of the state's rng.
    mesh: the device mesh.
    rules: logical axis rules (``config.sharding.rules``).

  Returns:
    (state, shardings): the state and a TrainState-shaped tree of NamedShardings.
  """
  _, shardings = abstract_train_state(model, tx, input_shape, seed, mesh, rules)
  return materialize(model, tx, input_shape, seed, mesh, rules, shardings), shardings


def materialize(model: Any, tx: Any, input_shape: tuple[int, ...], seed: int,
                mesh: Any, rules: Any, shardings: Any) -> TrainState:
  """The fresh state `abstract_train_state` describes, written in its shards by one
  jitted init (`shardings` from `abstract_train_state`, so it is traced once)."""
  _, init_state = init_functions(model, tx, input_shape, seed)
  with sharding.activate(mesh, rules):
    return jax.jit(init_state, out_shardings=shardings)()
