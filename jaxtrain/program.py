"""One place that assembles a run's program: state, shardings and jitted functions.

`compile_program(exp)` turns a built `runner.Experiment` into a `Program`: the mesh,
the train state (created in its shards, or only described with `abstract=True` for
ahead-of-time compiles of devices this process cannot reach), its shardings, the
jitted train / block (`train.steps_per_dispatch`) / eval functions, the zeroed metric
sums, an example batch, the distillation teacher's arguments and the EMA setting.
`runner.train`, `aot`, the studies and the tests all get their program here.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain import ema as ema_lib
from jaxtrain import loop as loop_lib
from jaxtrain import losses, step as step_lib
from jaxtrain import step_diagnostics as step_diag
from jaxtrain import teacher as teacher_lib
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding
from jaxtrain.state import TrainState, abstract_train_state, materialize

if TYPE_CHECKING:
  from jaxtrain.runner import Experiment


@dataclasses.dataclass
class Program:
  """Everything a run needs, built but not yet compiled.

  Attributes:
    mesh: the device mesh.
    state: the fresh TrainState in its shards (None with `abstract=True`).
    abstract_state: the same state as sharded `jax.ShapeDtypeStruct`s.
    shardings: the TrainState's NamedShardings (with the EMA when configured).
    train_fn, block_fn, eval_fn, init_sums: see `make_jitted_steps` and
      `make_jitted_block` (`block_fn` is None when `train.steps_per_dispatch` is 1).
    example_batch: a global train batch (image, label) as sharded structs.
    teacher_args: () or (teacher variables,): the extra arguments of the train
      and block functions (restored arrays, or abstract with `abstract=True`).
    ema: the EMA setting (None without `train.ema_decay`).
    notes: what `train.diagnostics` cannot measure in this program, and why
      (`step_diagnostics`); a run prints them once.
  """
  mesh: jax.sharding.Mesh
  state: TrainState | None
  abstract_state: TrainState
  shardings: Any
  train_fn: Callable[..., Any]
  block_fn: Callable[..., Any] | None
  eval_fn: Callable[..., Any]
  init_sums: Callable[[], Any]
  example_batch: dict[str, jax.ShapeDtypeStruct]
  teacher_args: tuple[Any, ...]
  ema: ema_lib.EmaConfig | None
  notes: tuple[str, ...] = ()

  def functions(self) -> loop_lib.Functions:
    """The jitted pieces `loop.Loop` drives."""
    return loop_lib.Functions(self.train_fn, self.block_fn, self.eval_fn,
                              mesh_lib.batch_sharding(self.mesh),
                              block_sharding(self.mesh), self.teacher_args)


def compile_program(exp: Experiment, abstract: bool = False) -> Program:
  """The run's `Program` (jitted, not compiled: `.lower()` or call the functions
  under `sharding.activate(exp.mesh, config.sharding.rules)`).

  Args:
    exp: from `runner.build`.
    abstract: describe the state and the teacher's variables without allocating
      or reading anything (`jaxtrain compile`); `Program.state` is then None.
  """
  state, abstract_state, shardings = _state(exp, abstract)
  state, abstract_state, shardings, notes = _with_noise_scale(
      exp, state, abstract_state, shardings)
  teacher: tuple[Any, ...] = ()
  if exp.teacher is not None:
    teacher = ((exp.teacher.variables,) if abstract else
               (teacher_lib.restore(exp.teacher).variables,))
  with sharding.activate(exp.mesh, exp.settings.sharding.rules):
    train_fn, eval_fn, init_sums = make_jitted_steps(exp, abstract_state, shardings)
  return Program(exp.mesh, state, abstract_state, shardings, train_fn,
                 make_jitted_block(exp, shardings), eval_fn, init_sums,
                 example_batch(exp), teacher, exp.ema, notes)


def initial_state(exp: Experiment) -> tuple[TrainState, Any]:
  """A fresh TrainState in its shards (with the EMA when configured) and its
  NamedShardings (the second argument of `make_jitted_steps`)."""
  state, _, shardings = _state(exp, abstract=False)
  return state, shardings


def _state(exp: Experiment, abstract: bool) -> tuple[TrainState | None, TrainState,
                                                     Any]:
  """(state or None, abstract state, shardings), with the EMA when configured."""
  c = exp.settings
  state_args = (exp.model, exp.tx, exp.train_source.image_shape, c.seed, exp.mesh,
                c.sharding.rules)
  abstract_state, shardings = abstract_train_state(*state_args)
  state = None if abstract else materialize(*state_args, shardings)
  if exp.ema is not None:  # the weight average is a second copy of params + stats
    shardings = ema_lib.shardings(shardings)
    abstract_state = sharding.abstract(jax.eval_shape(ema_lib.init, abstract_state),
                                       shardings)
    if state is not None:
      state = jax.jit(ema_lib.init, out_shardings=shardings)(state)
  return state, abstract_state, shardings


def _with_noise_scale(exp: Experiment, state: TrainState | None,
                      abstract_state: TrainState, shardings: Any):
  """(state, abstract state, shardings, notes): with `train.diagnostics`, the state
  gets noise-scale averages where the program can measure the scale; the notes
  say what diagnostics cannot measure here."""
  settings = step_diag.Settings.from_config(exp.settings)
  if settings is None:
    return state, abstract_state, shardings, ()
  why = step_diag.noise_scale_note(exp.mesh.abstract_mesh, abstract_state.model_state)
  if why is not None:
    return state, abstract_state, shardings, settings.notes + (why,)
  shardings = step_diag.noise_scale_shardings(shardings,
                                              sharding.replicated(exp.mesh))
  abstract_state = sharding.abstract(
      jax.eval_shape(step_diag.init_noise_scale, abstract_state), shardings)
  if state is not None:
    state = jax.jit(step_diag.init_noise_scale, out_shardings=shardings)(state)
  return state, abstract_state, shardings, settings.notes


def example_batch(exp: Experiment, rows: dict[str, Any] | None = None
                  ) -> dict[str, jax.ShapeDtypeStruct]:
  """A global train batch (`train.batch_size` rows) as batch-sharded structs.

  Args:
    exp: from `runner.build`.
    rows: a few rows from the source: then every key, shape and dtype the
      pipeline feeds; by default only the image and label.
  """
  batch_sh = mesh_lib.batch_sharding(exp.mesh)
  size = exp.settings.train.batch_size
  if rows is not None:
    return {k: jax.ShapeDtypeStruct((size, *v.shape[1:]), v.dtype, sharding=batch_sh)
            for k, v in rows.items()}
  return {"image": jax.ShapeDtypeStruct((size, *exp.train_source.image_shape),
                                        jnp.float32, sharding=batch_sh),
          "label": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=batch_sh)}


def _train_step(exp: Experiment, teacher_variables: Any = None
                ) -> step_lib.TrainStep:
  """The run's step: loss step (with the teacher's logits), then the EMA update."""
  teacher_fn = None
  if exp.teacher is not None:
    teacher_fn = exp.teacher.logits_fn(teacher_variables)
  train_step = step_lib.make_train_step(exp.model, exp.tx,
                                        loss=losses.from_config(exp.settings),
                                        teacher_fn=teacher_fn,
                                        weight_grad_dtype=exp.settings.precision
                                        .weight_grad_dtype,
                                        diagnostics=step_diag.Settings.from_config(
                                            exp.settings))
  if exp.ema is None:
    return train_step

  def step(state, batch):
    state, metrics = train_step(state, batch)
    if state.ema is not None:  # None in a state built without it
      state = ema_lib.update(state, exp.ema)
    return state, metrics

  return step


def make_jitted_steps(exp: Experiment, state: TrainState, shardings: Any):
  """The run's jitted functions, built but not yet compiled.

  Args:
    exp: from `runner.build`.
    state: a TrainState (arrays or `jax.ShapeDtypeStruct`s with shardings).
    shardings: the TrainState's NamedShardings (`Program.shardings`).

  Returns:
    (train_fn, eval_fn, init_sums): `train_fn(state, sums, batch) -> (state, sums)`
    donates state and sums (with a distillation teacher, `train_fn(state, sums,
    batch, teacher_variables)`); `eval_fn(state, batch) -> metric sums`;
    `init_sums()` gives the zeroed metric sums. Call or `.lower()` them under
    `sharding.activate(exp.mesh, config.sharding.rules)`. A new batch or image
    size (a stage of `train.stages`) compiles `train_fn` once more.
  """
  def train_and_sum(state, total, batch, *teacher):
    state, m = _train_step(exp, *teacher)(state, batch)
    return state, step_lib.accumulate(total, m)

  replicated = sharding.replicated(exp.mesh)
  batch_sh = mesh_lib.batch_sharding(exp.mesh)
  teacher = (exp.teacher.variables,) if exp.teacher is not None else ()
  teacher_sh = (exp.teacher.shardings,) if exp.teacher is not None else ()
  train_fn = jax.jit(train_and_sum, donate_argnums=(0, 1),
                     in_shardings=(shardings, replicated, batch_sh, *teacher_sh),
                     out_shardings=(shardings, replicated))
  eval_fn = make_jitted_eval(exp, shardings)
  shapes = jax.eval_shape(lambda s, b, *t: _train_step(exp, *t)(s, b), state,
                          example_batch(exp), *teacher)[1]

  def init_sums():
    # Built when called, not here: under a TPU topology's mesh (`jaxtrain compile`
    # without the TPU) an array made now would be placed on a device that is absent.
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.device_put(step_lib.reset(zeros), replicated)

  return train_fn, eval_fn, init_sums


def make_jitted_eval(exp: Experiment, shardings: Any):
  """`eval_fn(state, batch) -> metric sums`, jitted for states in `shardings`.

  `shardings` may leave out what evaluation does not read (`opt_state`, `rng`,
  `ema` None, as `jaxtrain eval` restores them): jit drops unused arguments, so
  both compile the same program and give the same numbers.
  """
  return jax.jit(step_lib.make_eval_step(exp.model),
                 in_shardings=(shardings, mesh_lib.batch_sharding(exp.mesh)),
                 out_shardings=sharding.replicated(exp.mesh))


def block_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A block of batches (steps, batch, ...): the batch axis over the data axes."""
  return NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES))


def make_jitted_block(exp: Experiment, shardings: Any):
  """`train.steps_per_dispatch` steps as one program (None when that is 1).

  `block(state, sums, batches, n[, teacher_variables])` runs `lax.scan` over the
  leading axis of `batches` (k stacked global batches) and applies the first `n` of
  them; the rest are masked by `lax.cond`, so a short block runs the same compiled
  code.
  """
  k = exp.settings.train.steps_per_dispatch
  if k == 1:
    return None

  def block(state, total, batches, n, *teacher):
    train_step = _train_step(exp, *teacher)

    def body(carry, xs):
      i, batch = xs

      def apply(c):
        new_state, m = train_step(c[0], batch)
        return new_state, step_lib.accumulate(c[1], m)

      return jax.lax.cond(i < n, apply, lambda c: c, carry), None

    (state, total), _ = jax.lax.scan(body, (state, total), (jnp.arange(k), batches))
    return state, total

  replicated = sharding.replicated(exp.mesh)
  teacher_sh = (exp.teacher.shardings,) if exp.teacher is not None else ()
  return jax.jit(block, donate_argnums=(0, 1),
                 in_shardings=(shardings, replicated, block_sharding(exp.mesh),
                               replicated, *teacher_sh),
                 out_shardings=(shardings, replicated))
