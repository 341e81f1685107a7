"""The thin training loop: mesh -> data -> state -> step -> eval/log/checkpoint.

Everything that can be wrong with a config is found by `build`, before anything
compiles. `train` then resumes from the newest complete checkpoint in the workdir (if
any), runs the jitted step, and logs, evaluates and saves on schedule.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain import checkpoint as checkpoint_lib
from jaxtrain import config as config_lib
from jaxtrain import metrics as metrics_lib
from jaxtrain import losses, models, optim, precision, step as step_lib
from jaxtrain.data import pipeline, sources
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding
from jaxtrain import loop as loop_lib
from jaxtrain import preemption
from jaxtrain.loop import TrainingHalted  # noqa: F401  (public: runner.TrainingHalted)
from jaxtrain.state import TrainState, create_train_state


@dataclasses.dataclass
class TrainResult:
  """The state a run ended with and the metrics of its last log/eval step."""
  state: TrainState
  metrics: dict[str, float]


@dataclasses.dataclass
class Experiment:
  """The pieces of a run, built and checked, nothing compiled yet."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: nn.Module
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  train_source: Any
  eval_source: Any
  total_steps: int
  eval_batch_size: int


def build(config: ml_collections.ConfigDict,
          devices: list[jax.Device] | None = None) -> Experiment:
  """Validates `config` and builds everything that needs no compilation."""
  config_lib.validate(config)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  mesh_lib.check_batch("train.batch_size", config.train.batch_size, mesh)
  eval_batch = config.train.eval_batch_size or config.train.batch_size
  mesh_lib.check_batch("train.eval_batch_size", eval_batch, mesh)
  _check_bn_groups(config, mesh)
  train_source = sources.get_source(config.data, config.data.train_split)
  eval_source = sources.get_source(config.data, config.data.eval_split)
  total = config.train.num_steps
  if config.train.num_epochs:
    total = math.ceil(config.train.num_epochs * len(train_source)
                      / config.train.batch_size)
  policy = precision.make_policy(config.precision.compute_dtype)
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  model = models.get_model(config.model.name, num_classes=train_source.num_classes,
                           dtype=policy.compute_dtype, **kwargs)
  tx, lr_schedule = optim.build(config.optimizer, total, config.train.batch_size)
  return Experiment(config, mesh, model, tx, lr_schedule, train_source, eval_source,
                    total, eval_batch)


def _check_bn_groups(config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh) -> None:
  """Batch-norm groups must tile the data-parallel replicas (checked again in BN)."""
  group = config.model.get("bn_group_size")
  replicas = mesh_lib.data_parallel_size(mesh)
  if group is not None and (group < 1 or (replicas > 1 and replicas % group)):
    raise ConfigError("model.bn_group_size", group, f"must divide the {replicas} "
                      "data-parallel replicas (mesh data x fsdp); None means all")


def make_jitted_steps(exp: Experiment, state: TrainState, shardings: Any):
  """The run's jitted functions, built but not yet compiled.

  Args:
    exp: from `build`.
    state: a TrainState (arrays or `jax.ShapeDtypeStruct`s with shardings).
    shardings: the TrainState's NamedShardings (from `create_train_state`).

  Returns:
    (train_fn, eval_fn, init_sums): `train_fn(state, sums, batch) -> (state, sums)`
    donates state and sums; `eval_fn(state, batch) -> metric sums`; `init_sums()`
    gives the zeroed metric sums. Call or `.lower()` them under
    `sharding.activate(exp.mesh, config.sharding.rules)`.
  """
  train_step = step_lib.make_train_step(exp.model, exp.tx,
                                        loss=losses.from_config(exp.config))

  def train_and_sum(state, total, batch):
    state, m = train_step(state, batch)
    return state, step_lib.accumulate(total, m)

  replicated = sharding.replicated(exp.mesh)
  batch_sh = mesh_lib.batch_sharding(exp.mesh)
  train_fn = jax.jit(train_and_sum, donate_argnums=(0, 1),
                     in_shardings=(shardings, replicated, batch_sh),
                     out_shardings=(shardings, replicated))
  eval_fn = jax.jit(step_lib.make_eval_step(exp.model),
                    in_shardings=(shardings, batch_sh), out_shardings=replicated)
  batch = exp.config.train.batch_size
  example = {"image": jax.ShapeDtypeStruct((batch, *exp.train_source.image_shape),
                                           jnp.float32, sharding=batch_sh),
             "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sh)}
  shapes = jax.eval_shape(train_step, state, example)[1]
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  init_sums = lambda: jax.device_put(step_lib.reset(zeros), replicated)  # noqa: E731
  return train_fn, eval_fn, init_sums


def block_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A block of batches (steps, batch, ...): the batch axis over the data axes."""
  return NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES))


def make_jitted_block(exp: Experiment, shardings: Any):
  """`train.steps_per_dispatch` steps as one program (None when that is 1).

  `block(state, sums, batches, n)` runs `lax.scan` over the leading axis of
  `batches` (k stacked global batches) and applies the first `n` of them; the
  rest are masked by `lax.cond`, so a short block runs the same compiled code.
  """
  k = exp.config.train.steps_per_dispatch
  if k == 1:
    return None
  train_step = step_lib.make_train_step(exp.model, exp.tx,
                                        loss=losses.from_config(exp.config))

  def block(state, total, batches, n):
    def body(carry, xs):
      i, batch = xs

      def apply(c):
        new_state, m = train_step(c[0], batch)
        return new_state, step_lib.accumulate(c[1], m)

      return jax.lax.cond(i < n, apply, lambda c: c, carry), None

    (state, total), _ = jax.lax.scan(body, (state, total), (jnp.arange(k), batches))
    return state, total

  replicated = sharding.replicated(exp.mesh)
  return jax.jit(block, donate_argnums=(0, 1),
                 in_shardings=(shardings, replicated, block_sharding(exp.mesh),
                               replicated),
                 out_shardings=(shardings, replicated))


def check_workdir(workdir: str) -> None:
  """Fails early, naming --workdir, when checkpoints and logs cannot be written."""
  if "://" in workdir:  # gs:// and other object stores: Orbax/TensorStore checks.
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError("--workdir", workdir, f"cannot write there ({e.strerror}); "
                      "choose a writable directory") from None


def _restore(exp: Experiment, ckpt: checkpoint_lib.Checkpointer, state, sums,
             data_iter, writer: metrics_lib.Writer) -> tuple[TrainState, Any]:
  mode = exp.config.checkpoint.restore
  target = checkpoint_lib.abstract_like({"train": state, "metrics": sums})
  found = None if mode == "never" else ckpt.restore_latest(target, data_iter,
                                                           writer.message)
  if found is None:
    if mode == "required":
      raise ConfigError("checkpoint.restore", mode, f"no checkpoint in "
                        f"{ckpt.directory}; use 'auto' to start fresh")
    return state, sums
  restored, step = found
  writer.message(f"Resumed from the checkpoint at step {step} in {ckpt.directory}")
  return restored["train"], restored["metrics"]


def _truncate_log(workdir: str, step: int) -> None:
  """Drops log lines after `step`: a resumed run writes them again."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if jax.process_index() != 0 or not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError):  # a line cut short by a crash
      continue
  path.write_text("".join(kept))


def train(config: ml_collections.ConfigDict, workdir: str,
          devices: list[jax.Device] | None = None,
          stop_at: int | None = None) -> TrainResult:
  """Trains (or resumes) the experiment in `workdir`.

  Args:
    config: the experiment config (validated here).
    workdir: checkpoints, metrics.jsonl and TensorBoard files; resumed if present.
    devices: devices of the mesh (default: all).
    stop_at: stop after this step with a checkpoint, as a preempted run would.
  """
  exp = build(config, devices)
  check_workdir(workdir)
  rules = config.sharding.rules
  state, shardings = create_train_state(
      exp.model, exp.tx, exp.train_source.image_shape, config.seed, exp.mesh, rules)
  data_iter = pipeline.train_iterator(exp.train_source, config.train.batch_size,
                                      config.seed)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.checkpoint.every,
                                     config.checkpoint.keep,
                                     config.checkpoint.async_save)
  writer = metrics_lib.Writer(workdir, exp.total_steps)
  # The CLI installs the watcher at start-up; a library caller gets one for this run.
  owned = preemption.installed() is None
  watcher = preemption.PreemptionWatcher() if owned else preemption.installed()
  try:
    with sharding.activate(exp.mesh, rules):
      train_fn, eval_fn, init_sums = make_jitted_steps(exp, state, shardings)
      state, sums = _restore(exp, ckpt, state, init_sums(), data_iter, writer)
      _truncate_log(workdir, int(state.step))
      fns = loop_lib.Functions(
          train_fn, make_jitted_block(exp, shardings), eval_fn,
          mesh_lib.batch_sharding(exp.mesh), block_sharding(exp.mesh))
      loop = loop_lib.Loop(exp, fns, data_iter, ckpt, writer, watcher,
                           os.path.join(workdir, "profile"))
      state, metrics = loop.run(state, sums, stop_at)
    ckpt.wait()  # the last save is complete (or its failure reported) on return
    return TrainResult(state, metrics)
  finally:
    if owned:
      watcher.close()
    ckpt.close()
    writer.close()
