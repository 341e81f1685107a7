"""Vectorized trials: trials differing only in hyperparameters as one jitted program.

Trials that share model, data, batch size, optimizer and schedule shape but differ in
learning rate, momentum (b1 for Adam), weight decay, warmup length or seed are
stacked on a leading trial axis: parameters, optimizer state and hyperparameters are
`jax.vmap`ped, so a learning-rate grid at one batch size is one compile and one loop.
The hyperparameters live in the optimizer state (`optax.inject_hyperparams`); the
learning-rate schedule is evaluated from them in traced form (`traced_schedule`,
which reproduces `jaxtrain.optim.schedule_config.schedule_from_config`). Each trial
keeps its own seed: its own initialization, dropout and data order, so trial i of a
group trains exactly as `jaxtrain train` would with its config.

A group of one trial runs the runner's own program (`program.compile_program`).

Cost note: on XLA:CPU, convolutions whose inputs and weights both carry the trial
axis lower to grouped convolutions, much slower per FLOP than plain ones; on CPU
vectorizing mainly saves compiles and per-step overhead. On TPU/GPU the stacked
convolutions and matmuls run at full width.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtrain import losses, noise_scale, step_diagnostics
from jaxtrain import metrics as metrics_lib
from jaxtrain import optim, runner, step as step_lib
from jaxtrain import program as program_lib
from jaxtrain.data import pipeline
from jaxtrain.errors import ConfigError
from jaxtrain.optim import defaults as optim_defaults
from jaxtrain.optim.build import plugin_optimizer
from jaxtrain.optim import masks
from jaxtrain.optim import plugins
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding
from jaxtrain import state as state_lib
from jaxtrain.state import TrainState, abstract_train_state

VECTOR_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lars")
VECTOR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear", "warmup_linear",
                    "polynomial", "warmup_polynomial")
# Optimizer features the vectorized chain does not rebuild: trials using them run
# one at a time through `optim.build`.
_OFF_FEATURES = ("l1", "l2", "grad_noise_eta", "ema_decay", "lr_multipliers",
                 "freeze")
HPARAMS = ("learning_rate", "warmup_steps", "momentum", "b1", "weight_decay")
_TRAIN_KEYS = ("loss", "accuracy", "top5_accuracy", "count", "skipped")


def supports_trial(config: ml_collections.ConfigDict) -> bool:
  """Whether a trial's experiment config can run in a vectorized group: its
  optimizer `supports`, and it has no distillation teacher (the vmapped step has
  no teacher argument). A weight average (`train.ema_decay`) is not carried by
  either kind of group: studies evaluate the raw weights, which it never changes.
  """
  loss = getattr(config, "loss", None) or {}
  return supports(config.optimizer) and loss.get("name") != "distillation"


def _check_vectorizable(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises ConfigError for a trial a vectorized group cannot run."""
  for c in configs:
    if not supports(c.optimizer):
      raise ConfigError("optimizer", c.optimizer.to_dict(), "its optimizer, schedule "
                        "or features are outside the vectorized chain; build a "
                        "group of one per trial")
    if not supports_trial(c):
      raise ConfigError("loss.name", c.loss.name, "a distillation teacher does not "
                        "fit a vectorized group; build a group of one per trial")


def supports(opt_config: ml_collections.ConfigDict) -> bool:
  """Whether trials with this optimizer section can share a vectorized program."""
  c = optim_defaults.merged_section(opt_config)
  defaults = optim.default_config()
  return ((c.name in VECTOR_OPTIMIZERS or plugins.is_plugin(c.name))
          and c.schedule.name in VECTOR_SCHEDULES
          and c.accumulate_steps == 1
          and all(c[f] == defaults[f] for f in _OFF_FEATURES))


def traced_schedule(s: ml_collections.ConfigDict, count: jax.Array, peak: jax.Array,
                    warmup: jax.Array, total_steps: int) -> jax.Array:
  """`schedule_from_config(s, peak, total_steps)` with traced peak and warmup.

  Mirrors Optax's formulas operation for operation (linear warmup joined to the
  decay at `warmup`), so a trial's learning rates match `optim.build`'s.
  """
  count = jnp.asarray(count)
  warmup = jnp.asarray(warmup, jnp.int32)
  decay_len = jnp.maximum(total_steps - warmup, 1)
  t = count - warmup
  if s.name == "constant":
    decay = peak
  elif s.name in ("cosine", "warmup_cosine"):
    alpha = jnp.where(peak != 0, s.end_value / jnp.where(peak != 0, peak, 1.0), 0.0)
    steps = decay_len.astype(jnp.float32)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, steps) / steps))
    decay = peak * ((1 - alpha) * cosine**1.0 + alpha)
  else:  # (warmup_)linear / (warmup_)polynomial
    power = 1.0 if "linear" in s.name else s.power
    frac = 1 - jnp.clip(t, 0, decay_len) / decay_len
    decay = (peak - s.end_value) * (frac**power) + s.end_value
  ramp = 1 - jnp.clip(count, 0, warmup) / jnp.maximum(warmup, 1)
  warm = (0.0 - peak) * ramp + peak
  return jnp.where(count < warmup, warm, decay)


def hyper_optimizer(opt_config: ml_collections.ConfigDict, total_steps: int,
                    with_weight_decay: bool, injected: Sequence[str] = ()
                    ) -> optax.GradientTransformation:
  """The `optim.build` chain with HPARAMS as per-trial optimizer state.

  Args:
    opt_config: an optimizer section that `supports` accepts.
    total_steps: the trials' number of steps (schedule length).
    with_weight_decay: include decoupled weight decay (some trial has wd > 0).
    injected: a plug-in's `optimizer.kwargs` that differ between the trials
      (`injected_kwargs`), held per trial like HPARAMS.
  """
  c = optim_defaults.merged_section(opt_config)
  if plugins.is_plugin(c.name):
    return _hyper_plugin(c, total_steps, with_weight_decay, injected)
  wd_mask = masks.regex_mask(c.weight_decay_mask, default=masks.ndim_above_1)
  mu_dtype = c.mu_dtype or None
  eps = lambda default: default if c.eps < 0 else c.eps  # noqa: E731

  def factory(learning_rate, warmup_steps, momentum, b1, weight_decay):
    lr = functools.partial(_schedule_of_count, c.schedule, learning_rate,
                           warmup_steps, total_steps)
    stages = _clip_stages(c)
    if c.name == "lars":
      def exclude(params):  # LARS skips what weight decay skips (optim.build)
        return jax.tree.map(lambda m: not m, wd_mask(params))
      stages.append(optim.lars(
          lr, momentum=momentum, weight_decay=weight_decay,
          trust_coefficient=c.trust_coefficient, eps=eps(0.0), nesterov=c.nesterov,
          exclude=exclude, mu_dtype=mu_dtype))
      return optax.chain(*stages)
    if c.name == "sgd":
      stages.append(optax.identity())
    elif c.name in ("momentum", "nesterov"):
      stages.append(optax.trace(momentum, c.nesterov or c.name == "nesterov",
                                accumulator_dtype=mu_dtype))
    else:
      stages.append(optax.scale_by_adam(b1, c.b2, eps(1e-8), mu_dtype=mu_dtype))
    if with_weight_decay:
      stages.append(optax.add_decayed_weights(weight_decay, wd_mask))
    stages.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*stages)

  return optax.inject_hyperparams(factory)(
      learning_rate=c.learning_rate, warmup_steps=c.schedule.warmup_steps,
      momentum=c.momentum, b1=c.b1, weight_decay=c.weight_decay)


def _clip_stages(c: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
  """The gradient clipping `optim.build` puts before the optimizer."""
  stages = []
  if c.grad_clip_value:
    stages.append(optax.clip(c.grad_clip_value))
  if c.grad_clip_norm:
    stages.append(optax.clip_by_global_norm(c.grad_clip_norm))
  return stages


# Hyperparameter name of an injected plug-in argument: apart from HPARAMS, which a
# factory's own arguments may share names with (weight_decay).
_KWARG = "kwargs_"


def _hyper_plugin(c: ml_collections.ConfigDict, total_steps: int,
                  with_weight_decay: bool, injected: Sequence[str]
                  ) -> optax.GradientTransformation:
  """`build.plugin_optimizer` (after the clipping) with the learning rate, warmup,
  weight decay and the `injected` factory arguments as optimizer state."""
  wd_mask = masks.regex_mask(c.weight_decay_mask, default=masks.ndim_above_1)
  static = {k: v for k, v in c.kwargs.to_dict().items() if k not in injected}

  def factory(learning_rate, warmup_steps, weight_decay, **varied):
    lr = functools.partial(_schedule_of_count, c.schedule, learning_rate,
                           warmup_steps, total_steps)
    kwargs = {**static, **{k[len(_KWARG):]: v for k, v in varied.items()}}
    return optax.chain(*_clip_stages(c), plugin_optimizer(
        c, lr, wd_mask, kwargs, weight_decay if with_weight_decay else None))

  names = ("learning_rate", "warmup_steps", "weight_decay",
           *(_KWARG + k for k in injected))
  # inject_hyperparams reads the factory's signature for its hyperparameters.
  factory.__signature__ = inspect.Signature(
      [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
  return optax.inject_hyperparams(factory)(
      learning_rate=c.learning_rate, warmup_steps=c.schedule.warmup_steps,
      weight_decay=c.weight_decay, **{_KWARG + k: c.kwargs[k] for k in injected})


def injected_kwargs(configs: Sequence[ml_collections.ConfigDict]) -> tuple[str, ...]:
  """A plug-in's `optimizer.kwargs` whose values differ between the trials (the
  momentum a study varies): they become per-trial optimizer state."""
  sections = [optim_defaults.merged_section(c.optimizer) for c in configs]
  if not plugins.is_plugin(sections[0].name):
    return ()
  first = sections[0].kwargs.to_dict()
  return tuple(sorted(k for k in first if any(
      s.kwargs.to_dict().get(k) != first[k] for s in sections[1:])))


def check_group(configs: Sequence[ml_collections.ConfigDict],
                total_steps: int) -> None:
  """Refuses, before anything compiles, a vectorized group whose plug-in factory
  cannot take its varied arguments as traced values (`jax.eval_shape` of the
  trials' optimizer init and update, vmapped as the group runs them).

  Raises:
    ConfigError: naming study.momentum (the varied argument), or optimizer.name.
  """
  c = optim_defaults.merged_section(configs[0].optimizer)
  if len(configs) < 2 or not plugins.is_plugin(c.name):
    return
  injected = injected_kwargs(configs)
  tx = hyper_optimizer(configs[0].optimizer, total_steps, True, injected)
  params = {"kernel": jax.ShapeDtypeStruct((2, 2), jnp.float32),
            "bias": jax.ShapeDtypeStruct((2,), jnp.float32)}

  def init_and_update(p, hparams):
    return tx.update(p, _init_optimizer(tx, p, hparams), p)
  try:
    jax.eval_shape(jax.vmap(init_and_update, in_axes=(None, 0)), params,
                   trial_hparams(configs))
  except Exception as e:  # pylint: disable=broad-except
    # plugins.make's ConfigError keeps the factory's own error as its context.
    e = e.__context__ if isinstance(e, ConfigError) and e.__context__ else e
    values = sorted({optim_defaults.merged_section(x.optimizer).kwargs.get(k)
                     for x in configs for k in injected}, key=str)
    raise ConfigError("study.momentum" if injected else "optimizer.name",
                      tuple(values) if injected else c.name,
                      f"the plug-in {c.name!r} cannot take "
                      f"{', '.join(injected) or 'its learning rate'} as a traced "
                      f"value under optax.inject_hyperparams ({type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0][:160]}); use it in jnp "
                      "operations (no Python `if` on it), or set "
                      "study.vectorize=False to run the trials one by one") from None


def _schedule_of_count(s, peak, warmup, total_steps, count):
  return traced_schedule(s, count, peak, warmup, total_steps)


def trial_hparams(configs: Sequence[ml_collections.ConfigDict]) -> dict[str, Any]:
  """HPARAMS of each trial, stacked: {name: array (T,)}."""
  full = [optim_defaults.merged_section(c.optimizer) for c in configs]
  plugin_args = {_KWARG + k: np.asarray([c.kwargs[k] for c in full])
                 for k in injected_kwargs(configs)}
  return {**plugin_args,
          "learning_rate": np.asarray([c.learning_rate for c in full], np.float32),
          "warmup_steps": np.asarray([c.schedule.warmup_steps for c in full],
                                     np.int32),
          "momentum": np.asarray([c.momentum for c in full], np.float32),
          "b1": np.asarray([c.b1 for c in full], np.float32),
          "weight_decay": np.asarray([c.weight_decay for c in full], np.float32)}


def _init_variables(model: nn.Module, input_shape: tuple[int, ...],
                    seed: jax.Array) -> tuple[Any, Any, jax.Array]:
  """(params, model_state, rng) of one trial, drawn as `create_train_state` does
  (its own init, `state.init_functions`)."""
  _, init_state = state_lib.init_functions(model, None, input_shape, seed)
  state = init_state()
  return state.params, state.model_state, state.rng


def _init_optimizer(tx: optax.GradientTransformation, params: Any,
                    hparams: dict[str, jax.Array]) -> Any:
  """One trial's optimizer state, holding that trial's hyperparameters."""
  opt_state = tx.init(params)
  return opt_state._replace(hyperparams={
      k: jnp.asarray(hparams[k], v.dtype) for k, v in opt_state.hyperparams.items()})


def _init_states(model, tx, input_shape, seeds, hparams, shardings) -> TrainState:
  """The stacked states, in two programs: the random initialization does not
  depend on the optimizer or the batch size, so every group of the same size
  compiles the same program (a hit in the persistent compilation cache)."""
  params, model_state, rng = jax.jit(
      jax.vmap(functools.partial(_init_variables, model, input_shape)),
      out_shardings=(shardings.params, shardings.model_state, shardings.rng))(seeds)
  opt_state = jax.jit(jax.vmap(functools.partial(_init_optimizer, tx)),
                      out_shardings=shardings.opt_state)(params, hparams)
  step = jax.device_put(jnp.zeros(seeds.shape, jnp.int32), shardings.step)
  return TrainState(step=step, params=params, model_state=model_state,
                    opt_state=opt_state, rng=rng)


def _with_noise_scale(exp: runner.Experiment, states: TrainState, shardings: Any
                      ) -> tuple[TrainState, Any]:
  """Stacked states (and shardings) with each trial's noise-scale averages, where
  the group's program can measure the scale (`step_diagnostics.noise_scale_note`)."""
  if step_diagnostics.noise_scale_note(exp.mesh.abstract_mesh,
                                      states.model_state) is not None:
    return states, shardings
  size = states.step.shape[0]
  replicated = sharding.replicated(exp.mesh)
  averages = jax.tree.map(lambda x: jnp.zeros((size, *x.shape), x.dtype),
                          noise_scale.init())
  return (states.replace(noise_scale=jax.device_put(averages, replicated)),
          step_diagnostics.noise_scale_shardings(shardings, replicated))


def _eval_of_variables(model: nn.Module) -> Any:
  """`make_eval_step` on (params, model_state): one program for every optimizer."""
  eval_step = step_lib.make_eval_step(model)

  def evaluate(params, model_state, batch):
    state = TrainState(step=None, params=params, model_state=model_state,
                       opt_state=None, rng=None)
    return eval_step(state, batch)
  return evaluate


def _stacked_shardings(model, tx, input_shape, mesh, rules) -> Any:
  """The TrainState's shardings (`state.abstract_train_state`'s) with a trial axis
  first."""
  _, single = abstract_train_state(model, tx, input_shape, 0, mesh, rules)
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), single)


class GroupProgram:
  """A group of trials compiled together: states, one train step, evaluation.

  `step(host_batches)` takes one host batch per distinct seed (`seeds`), in order;
  `train_metrics()` and `evaluate()` return one dict of averages per trial.
  """

  def __init__(self, exp: runner.Experiment,
               configs: Sequence[ml_collections.ConfigDict]):
    self.exp, self.configs, self.size = exp, list(configs), len(configs)
    self.seeds = sorted({c.seed for c in configs})
    self.batch_sh = mesh_lib.batch_sharding(exp.mesh)
    self.rules = exp.settings.sharding.rules
    with sharding.activate(exp.mesh, self.rules):
      if self.size == 1:
        self._build_single()
      else:
        self._build_vectorized()
      self.sums = self._init_sums()

  def _build_single(self) -> None:
    """The runner's own step (with a distillation teacher); no EMA copy."""
    exp = self.exp
    # exp was built from configs[0], so its seed is the trial's.
    program = program_lib.compile_program(dataclasses.replace(exp, ema=None))
    self.states, self._init_sums = program.state, program.init_sums
    train_fn, eval_fn, teacher = program.train_fn, program.eval_fn, program.teacher_args
    self._train = lambda state, sums, batch: train_fn(state, sums, batch, *teacher)
    self._eval = eval_fn
    self._stacked = False

  def _build_vectorized(self) -> None:
    exp, configs = self.exp, self.configs
    _check_vectorizable(configs)
    shape = exp.train_source.image_shape
    has_wd = any(optim_defaults.merged_section(c.optimizer).weight_decay for c in configs)
    tx = hyper_optimizer(configs[0].optimizer, exp.total_steps, has_wd,
                         injected_kwargs(configs))
    stacked = _stacked_shardings(exp.model, tx, shape, exp.mesh, self.rules)
    self.states = _init_states(exp.model, tx, shape,
                               jnp.asarray([c.seed for c in configs], jnp.int32),
                               trial_hparams(configs), stacked)
    index = jnp.asarray([self.seeds.index(c.seed) for c in configs], jnp.int32)
    diagnostics = step_diagnostics.Settings.from_config(exp.settings)
    decays = {optim_defaults.merged_section(c.optimizer).weight_decay for c in configs}
    if diagnostics is not None and len(decays) > 1:  # LARS's ratio: one decay only
      diagnostics = dataclasses.replace(diagnostics, trust_ratio="")
    if diagnostics is not None:
      self.states, stacked = _with_noise_scale(exp, self.states, stacked)
    train_step = step_lib.make_train_step(
        exp.model, tx, loss=losses.from_config(exp.settings),
        weight_grad_dtype=exp.settings.precision.weight_grad_dtype,
        diagnostics=diagnostics)
    shared = len(self.seeds) == 1

    def one(state, total, batch):
      state, m = train_step(state, batch)
      return state, step_lib.accumulate(total, m)

    def train(states, sums, batches):
      if shared:  # One data order: the batch is not stacked (plain convolutions).
        return jax.vmap(one, in_axes=(0, 0, None))(states, sums, batches)
      per_trial = jax.tree.map(lambda x: x[index], batches)
      return jax.vmap(one)(states, sums, per_trial)

    replicated = sharding.replicated(exp.mesh)
    self.stacked_batch_sh = NamedSharding(exp.mesh, P(None, *self.batch_sh.spec))
    batch_in = self.batch_sh if shared else self.stacked_batch_sh
    self._train = jax.jit(train, donate_argnums=(0, 1),
                          in_shardings=(stacked, replicated, batch_in),
                          out_shardings=(stacked, replicated))
    evaluate = jax.jit(jax.vmap(_eval_of_variables(exp.model), in_axes=(0, 0, None)),
                       in_shardings=(stacked.params, stacked.model_state,
                                     self.batch_sh),
                       out_shardings=replicated)
    self._eval = lambda states, batch: evaluate(states.params, states.model_state,
                                                batch)
    example = {"image": jax.ShapeDtypeStruct(
        (exp.settings.train.batch_size, *shape), jnp.float32),
               "label": jax.ShapeDtypeStruct((exp.settings.train.batch_size,),
                                             jnp.int32)}
    shapes = jax.eval_shape(jax.vmap(train_step, in_axes=(0, None)), self.states,
                            example)[1]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def init_sums():
      return jax.device_put(step_lib.reset(zeros), replicated)
    self._init_sums = init_sums
    self._stacked = True

  def step(self, host_batches: Sequence[pipeline.Batch]) -> None:
    """One train step of every trial (host_batches: one per seed in `seeds`)."""
    if not self._stacked or len(self.seeds) == 1:
      batch = pipeline.to_global(host_batches[0], self.batch_sh)
    else:
      stacked = {k: np.stack([b[k] for b in host_batches]) for k in host_batches[0]}
      batch = pipeline.to_global(stacked, self.stacked_batch_sh)
    with sharding.activate(self.exp.mesh, self.rules):
      self.states, self.sums = self._train(self.states, self.sums, batch)

  def _per_trial(self, sums: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    if not self._stacked:
      return [sums]
    return [jax.tree.map(lambda v, i=i: v[i], sums) for i in range(self.size)]

  def train_metrics(self) -> list[dict[str, float]]:
    """Averages over the steps since the last call, per trial; starts a new window.

    Adds `train/nonfinite` (1.0 when some step of the window had a non-finite loss or
    gradient and was skipped).
    """
    fetched = jax.device_get(self.sums)
    self.sums = step_lib.reset(self.sums)
    out = []
    for sums in self._per_trial(fetched):
      values = metrics_lib.averages({k: v for k, v in sums.items()
                                     if k in _TRAIN_KEYS}, "train")
      values.update(step_diagnostics.averages(sums))  # train.diagnostics
      bad = int(sums["nonfinite_step"]) != int(step_lib.NO_STEP)
      values["train/nonfinite"] = float(bad)
      out.append(values)
    return out

  def evaluate(self) -> list[dict[str, float]]:
    """Eval metrics of every trial over the whole eval split (each example once)."""
    total = None
    with sharding.activate(self.exp.mesh, self.rules):
      for batch in pipeline.eval_batches(self.exp.eval_source,
                                         self.exp.eval_batch_size):
        sums = self._eval(self.states, pipeline.to_global(batch, self.batch_sh))
        total = step_lib.sum_metrics(total, sums)
    return [metrics_lib.averages(s, "eval")
            for s in self._per_trial(jax.device_get(total))]


def build_group(configs: Sequence[ml_collections.ConfigDict],
                devices: list[jax.Device] | None = None) -> GroupProgram:
  """Builds (validates, initializes, jits) the program of a group of trial configs.

  The group's experiment (model, data, mesh, schedule length) is the first config's;
  the others may differ only in `grid.VECTOR_FIELDS`.
  """
  exp = runner.build(configs[0], devices)
  return GroupProgram(exp, configs)
