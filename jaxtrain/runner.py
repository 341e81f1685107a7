"""The thin training loop: mesh -> data -> state -> step -> eval/log/checkpoint.

Everything that can be wrong with a config is found by `build`, before anything
compiles. `train` then resumes from the newest complete checkpoint in the workdir (if
any), runs the jitted step, and logs, evaluates and saves on schedule.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath

from jaxtrain import checkpoint as checkpoint_lib
from jaxtrain import compile_cache
from jaxtrain import config as config_lib
from jaxtrain import console
from jaxtrain import early_stopping
from jaxtrain import init_from
from jaxtrain import lease as lease_lib
from jaxtrain import ema as ema_lib
from jaxtrain import metrics as metrics_lib
from jaxtrain import models, optim, precision, step as step_lib
from jaxtrain.data import batch_plan, pipeline, sources
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding
from jaxtrain import loop as loop_lib
from jaxtrain import preemption
from jaxtrain import resume_config
from jaxtrain import run_checks
from jaxtrain import teacher as teacher_lib
from jaxtrain.settings import Settings
from jaxtrain import writers
from jaxtrain.loop import TrainingHalted  # noqa: F401  (public: runner.TrainingHalted)
from jaxtrain.program import (  # noqa: F401  (public: runner.make_jitted_steps, ...)
    Program, block_sharding, compile_program, initial_state, make_jitted_block,
    make_jitted_steps)
from jaxtrain import state as state_lib
from jaxtrain.state import TrainState


@dataclasses.dataclass
class TrainResult:
  """The state a run ended with and the metrics of its last log/eval step.

  Attributes:
    state: the final `TrainState` (the best one with early stopping).
    metrics: ``train/...`` and ``eval/...`` values of the last log/eval step.
  """
  state: TrainState
  metrics: dict[str, float]


@dataclasses.dataclass
class Experiment:
  """The pieces of a run, built and checked, nothing compiled yet."""
  settings: Settings  # the validated config
  mesh: jax.sharding.Mesh
  model: nn.Module
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  train_source: Any
  eval_source: Any
  total_steps: int
  eval_batch_size: int
  plan: batch_plan.BatchPlan | None = None  # batch size/image size by step
  ema: ema_lib.EmaConfig | None = None
  teacher: teacher_lib.Teacher | None = None  # distillation (variables abstract)


def build(config: ml_collections.ConfigDict | Settings,
          devices: list[jax.Device] | None = None) -> Experiment:
  """Validates `config` (unless already validated) and builds everything that
  needs no compilation.

  Args:
    config: the experiment's settings (`config.validate`), or a config (a library
      call), validated here.
    devices: devices of the mesh (default: all devices of all processes).

  Returns:
    The `Experiment`: config, mesh, model, optax chain and LR schedule, data
    sources, total steps, eval batch size (and the distillation teacher).

  Raises:
    ConfigError: a bad field, a batch the mesh does not divide, a model that
      cannot take the data's image size, ...
  """
  settings = config_lib.settings_of(config)  # a library call: validated here
  mesh = mesh_lib.make_mesh(settings.mesh, devices)
  plan = _batch_plan(settings, mesh)  # checks every stage's batch (or train.batch_size)
  eval_batch = settings.train.eval_batch_size or settings.train.batch_size
  mesh_lib.check_batch("train.eval_batch_size", eval_batch, mesh)
  _check_bn_groups(settings, mesh)
  train_source = sources.get_source(settings.data, settings.data.train_split)
  eval_source = sources.get_source(settings.data, settings.data.eval_split)
  total = total_steps(settings, plan, len(train_source))
  run_checks.check_run_length(settings, total)
  run_checks.check_batches(settings, plan, len(train_source), len(eval_source),
                           mesh_lib.data_parallel_size(mesh))
  run_checks.check_host_memory(settings, plan, train_source.image_shape)
  policy = precision.make_policy(settings.precision.compute_dtype)
  kwargs = {k: v for k, v in settings.model.items() if k != "name"}
  model = models.get_model(settings.model.name, num_classes=train_source.num_classes,
                           dtype=policy.compute_dtype, **kwargs)
  run_checks.check_model(settings, model, train_source, eval_source, plan)
  tx, lr_schedule = optim.build(settings.optimizer, total, settings.train.batch_size)
  teacher = teacher_lib.build(settings, train_source.num_classes,
                              policy.compute_dtype, train_source.image_shape, mesh)
  exp = Experiment(settings, mesh, model, tx, lr_schedule, train_source, eval_source,
                   total, eval_batch, plan, ema_lib.EmaConfig.from_train(settings.train),
                   teacher)
  if settings.train.early_stopping.metric:
    _check_monitored_metric(exp)
  return exp


def total_steps(config: Settings, plan: batch_plan.BatchPlan,
                train_size: int) -> int:
  """`train.num_steps`, or with `train.num_epochs` > 0 the steps its rows take."""
  if config.train.num_epochs:
    return plan.steps_for_rows(config.train.num_epochs * train_size)
  return config.train.num_steps


def _batch_plan(config: Settings,
                mesh: jax.sharding.Mesh) -> batch_plan.BatchPlan:
  """`train.stages` and `data.aug_repeats` as a plan; every batch size checked."""
  repeats, stages = config.data.aug_repeats, config.train.stages
  plan = batch_plan.from_config(stages, config.train.batch_size)
  for i, stage in enumerate(plan.stages):
    field = f"train.stages[{i}]" if stages else "train.batch_size"
    mesh_lib.check_batch(field, stage.batch_size, mesh)
    if stage.batch_size % repeats:
      raise ConfigError("data.aug_repeats", repeats, f"must divide the global batch "
                        f"({field} = {stage.batch_size})")
  return dataclasses.replace(plan, aug_repeats=repeats)


def eval_metric_names(exp: Experiment) -> list[str]:
  """The metrics the eval step reports, e.g. ['accuracy', 'loss', ...] (traced with
  `jax.eval_shape` from the model's init, so nothing is compiled, not even a key)."""
  c = exp.settings
  shape = (exp.eval_batch_size, *exp.eval_source.eval_image_shape)
  batch = {"image": jax.ShapeDtypeStruct(shape, jnp.float32),
           "label": jax.ShapeDtypeStruct(shape[:1], jnp.int32),
           "mask": jax.ShapeDtypeStruct(shape[:1], jnp.float32)}

  def names(batch):  # traced: the init's key split must not run eagerly (it would compile)
    _, init_state = state_lib.init_functions(exp.model, None,
                                             exp.train_source.image_shape, c.seed)
    return step_lib.make_eval_step(exp.model)(init_state(), batch)

  with sharding.activate(exp.mesh, c.sharding.rules):
    return [n for n in jax.eval_shape(names, batch) if n != "count"]


def _check_monitored_metric(exp: Experiment) -> None:
  """The early-stopping metric must be one the eval step reports (traced only)."""
  prefixes = ("eval", "eval_ema") if exp.ema else ("eval",)
  known = [f"{p}/{n}" for p in prefixes for n in eval_metric_names(exp)]
  metric = exp.settings.train.early_stopping.metric
  if metric not in known:
    raise ConfigError("train.early_stopping.metric", metric,
                      "not a metric the evaluation reports", choices=known)


def _check_bn_groups(config: Settings,
                     mesh: jax.sharding.Mesh) -> None:
  """Batch-norm groups must tile the data-parallel replicas (checked again in BN)."""
  group = config.model.get("bn_group_size")
  replicas = mesh_lib.data_parallel_size(mesh)
  if group is not None and (group < 1 or (replicas > 1 and replicas % group)):
    raise ConfigError("model.bn_group_size", group, f"must divide the {replicas} "
                      "data-parallel replicas (mesh data x fsdp); None means all")


def check_workdir(workdir: str) -> None:
  """Fails early, naming --workdir, when checkpoints and logs cannot be written.

  A probe file is written and deleted. On an object store (gs://) that is the only
  way to find a missing bucket, missing credentials or no write permission before
  compilation rather than at the first write after it. No directory is made there:
  gcsfs's makedirs would create a missing bucket.
  """
  # Unique across processes and hosts: every process of a pod probes the workdir.
  name = f".write_probe_{os.getpid()}_{os.urandom(4).hex()}"
  if "://" in workdir:
    probe = epath.Path(workdir) / name
    try:
      probe.write_text("ok")
      probe.unlink()
    except Exception as e:  # pylint: disable=broad-except
      # gcsfs and google-auth raise many types (not found, forbidden, no
      # credentials): each means the run could not write its checkpoints.
      scheme, rest = workdir.split("://", 1)
      bucket = f"{scheme}://{rest.split('/')[0]}"
      raise ConfigError("--workdir", workdir, f"cannot write there ({type(e).__name__}:"
                        f" {str(e)[:200]}); check that the bucket {bucket} exists "
                        f"(gcloud storage buckets create {bucket}) and that this "
                        "machine's credentials may write to it") from None
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, name)
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError("--workdir", workdir, f"cannot write there ({e.strerror}); "
                      "choose a writable directory") from None


def _restore(exp: Experiment, ckpt: checkpoint_lib.Checkpointer, state, sums,
             data_iter, writer: metrics_lib.Writer,
             resume: resume_config.Resume | None) -> tuple[TrainState, Any]:
  mode = exp.settings.checkpoint.restore
  target = checkpoint_lib.abstract_like({"train": state, "metrics": sums})
  changed = resume.describe() if resume else ""
  found = None if mode == "never" else ckpt.restore_latest(target, data_iter,
                                                           writer.message, changed)
  if found is None:
    unusable = (f"no usable checkpoint in {ckpt.directory} (steps "
                f"{', '.join(map(str, ckpt.set_aside))} cannot be read)"
                if ckpt.set_aside else None)
    if mode == "required":
      raise ConfigError("checkpoint.restore", mode,
                        f"{unusable or 'no checkpoint in ' + ckpt.directory}; use "
                        "'auto' to start fresh")
    if unusable:
      writer.message(f"{unusable[0].upper()}{unusable[1:]}; starting from scratch")
    return state, sums
  restored, step = found
  writer.message(f"Resumed from the checkpoint at step {step} in {ckpt.directory}")
  if resume is not None:
    for line in resume.log_lines():
      writer.message(line)
  return restored["train"], restored["metrics"]


def _truncate_log(workdir: str, step: int, keep_old: bool = False) -> str | None:
  """Drops log lines after `step`: a resumed run writes them again.

  With `keep_old` (a run starting from scratch because no checkpoint could be
  read) the whole log is moved aside to `metrics.jsonl.<time>.old` instead, and
  its new name returned.
  """
  path = epath.Path(workdir) / "metrics.jsonl"
  if jax.process_index() != 0 or not path.exists():
    return None
  if keep_old and step == 0:
    # Copied, then emptied: the metrics writer already holds the file open.
    old = path.with_name(f"metrics.jsonl.{time.strftime('%Y%m%d-%H%M%S')}.old")
    old.write_text(path.read_text())
    path.write_text("")
    return str(old)
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError):  # a line cut short by a crash
      continue
  path.write_text("".join(kept))
  return None


def _summarize(exp: Experiment, workdir: str, writer: metrics_lib.Writer,
               ckpt: checkpoint_lib.Checkpointer, best: Any,
               metrics: dict[str, float], seconds: float,
               compile_seconds: float) -> None:
  """Prints how a finished run ended (process 0): `console.summary`."""
  if jax.process_index() != 0:
    return
  es = exp.settings.train.early_stopping
  best_eval = console.best_eval(writer.rows(), es.metric, es.mode)
  step = ckpt.latest_step()
  checkpoint = f"{ckpt.directory}/{step}"
  best_step = metrics.get("early_stopping/best_step")
  if best is not None and es.restore_best and best_step is not None:
    checkpoint = (f"{best.directory}/{int(best_step)} (the best; the last is "
                  f"{checkpoint})")
  for line in console.summary(step, exp.total_steps, seconds, compile_seconds,
                              metrics, best_eval, checkpoint, workdir,
                              "tensorboard" in exp.settings.logging.writers):
    writer.message(line)


@dataclasses.dataclass
class _Services:
  """What a run writes to and listens on: checkpoints (and the best one), the
  metrics writer, the preemption watcher, and the host state they save."""
  host: checkpoint_lib.HostState
  ckpt: checkpoint_lib.Checkpointer
  best: checkpoint_lib.BestCheckpointer | None
  writer: metrics_lib.Writer
  watcher: preemption.PreemptionWatcher
  owned: bool  # the watcher is this run's (a library caller's), closed at the end

  @classmethod
  def open(cls, exp: Experiment, workdir: str, data_iter: Any) -> "_Services":
    config = exp.settings
    tracker = early_stopping.Tracker.from_config(config.train.early_stopping)
    best = None if tracker is None else checkpoint_lib.BestCheckpointer(
        workdir, tracker.metric, tracker.mode, config.checkpoint.async_save)
    host = checkpoint_lib.HostState(data_iter, tracker)
    ckpt = checkpoint_lib.Checkpointer(workdir, config.checkpoint.every,
                                       config.checkpoint.keep,
                                       config.checkpoint.async_save)
    writer = metrics_lib.Writer(
        workdir, exp.total_steps, tensorboard="tensorboard" in config.logging.writers,
        # Process 0 alone tracks; a resumed run continues its tracked runs.
        trackers=(writers.make_trackers(config, workdir)
                  if jax.process_index() == 0 else ()))
    # The CLI installs the watcher at start-up; a library caller gets one for this run.
    owned = preemption.installed() is None
    watcher = preemption.PreemptionWatcher() if owned else preemption.installed()
    watcher.announce = jax.process_index() == 0
    watcher.multiprocess = jax.process_count() > 1
    return cls(host, ckpt, best, writer, watcher, owned)

  def __enter__(self) -> "_Services":
    return self

  def __exit__(self, *exc: Any) -> None:
    if self.owned:
      self.watcher.close()
    self.ckpt.close()
    if self.best is not None:
      self.best.close()
    self.writer.close()

  def loop(self, exp: Experiment, program: Program, workdir: str,
           clock: console.CompileClock) -> loop_lib.Loop:
    """The training loop driving `program` with these services."""
    return loop_lib.Loop(exp, program.functions(), self.host, self.ckpt, self.writer,
                         self.watcher, os.path.join(workdir, "profile"), self.best,
                         clock)


def _print_header(exp: Experiment, workdir: str, name: str) -> None:
  if jax.process_index() == 0:
    print("\n".join(console.header(exp, workdir, name)), flush=True)


def _set_log_back(workdir: str, step: int, run: _Services) -> None:
  """The metrics log from `step` on (a resumed run writes those lines again)."""
  old_log = _truncate_log(workdir, step, keep_old=bool(run.ckpt.set_aside))
  if old_log:
    run.writer.message(f"The previous metrics.jsonl is kept as {old_log}")


def train(config: ml_collections.ConfigDict | Settings, workdir: str,
          devices: list[jax.Device] | None = None,
          stop_at: int | None = None, name: str = "",
          allow_config_change: Sequence[str] = ()) -> TrainResult:
  """Trains (or resumes) the experiment in `workdir`.

  Process 0 prints a header before anything compiles, progress lines, and a summary
  at the end (final and best metrics, the checkpoint, how to open TensorBoard).

  Args:
    config: the experiment's settings, or a config (validated here).
    workdir: checkpoints, metrics.jsonl and TensorBoard files; resumed if present.
    devices: devices of the mesh (default: all).
    stop_at: stop after this step with a checkpoint, as a preempted run would.
    name: what the header calls the experiment (the CLI: the --config file).
    allow_config_change: fields (or sections) that may differ from the config
      saved in the checkpoint being resumed (`jaxtrain.resume_config`).

  Returns:
    The final state and metrics; with `train.early_stopping` (and `restore_best`)
    the best checkpoint's state and eval metrics (`early_stopping/best_step`).
  """
  start = time.perf_counter()
  exp = build(config, devices)  # settings -> mesh, model, optimizer, data sources
  check_workdir(workdir)
  with lease_lib.held(workdir), compile_cache.for_run(
      exp.settings.train.compilation_cache_dir, workdir) as cache:
    # Before the header: a refused resume is the run's only output.
    resume = resume_config.check_workdir(exp, workdir, allow_config_change)
    # A fresh start's weights, checked before compiling; a resume never reads them.
    source = None if resume else init_from.prepare(exp)
    _print_header(exp, workdir, name)
    clock = console.CompileClock()
    try:
      program = compile_program(exp)  # state in its shards, jitted steps, teacher
      data_iter = pipeline.train_iterator(exp.train_source, exp.settings.train.batch_size,
                                          exp.settings.seed, plan=exp.plan)
      with _Services.open(exp, workdir, data_iter) as run:
        for note in program.notes:  # what train.diagnostics cannot measure here
          run.writer.message(note)
        with sharding.activate(exp.mesh, exp.settings.sharding.rules):
          state, sums = _restore(exp, run.ckpt, program.state, program.init_sums(),
                                 run.host, run.writer, resume)
          state = init_from.start(exp, program, state, source, run.writer.message)
          _set_log_back(workdir, int(state.step), run)
          loop = run.loop(exp, program, workdir, clock)
          state, metrics = loop.run(state, sums, stop_at)
        run.ckpt.wait()  # the last save is complete (or its failure reported)
        if cache is not None:  # a restarted run: what the cache saved it
          run.writer.message(cache.summary())
        if loop.finished:
          _summarize(exp, workdir, run.writer, run.ckpt, run.best, metrics,
                     time.perf_counter() - start, clock.seconds)
        return TrainResult(state, metrics)
    finally:
      clock.close()
