"""Experiment configs: load an experiment module, apply overrides, validate.

An experiment is a Python file whose `get_config(arg=None)` returns an
`ml_collections.ConfigDict` built from `base_config()` (big_vision's convention). A
command line names it as `--config=experiments/x.py` or `--config=experiments/x.py:arg`
and changes fields with `--config.a.b=value`. `validate` checks every field before
anything is built or compiled, and raises `ConfigError` naming the field.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import os
import types
from typing import Any, Sequence

import ml_collections

from jaxtrain import settings, validated
from jaxtrain.checks import check_choice, check_int, check_keys, keys_of, unknown
from jaxtrain.errors import ConfigError

PRECISIONS = ("auto", "bfloat16", "float32")
WEIGHT_GRAD_DTYPES = ("float32", "compute")  # jaxtrain.precision.weight_grads
RESTORE_MODES = ("auto", "never", "required")
NONFINITE_MODES = ("halt", "skip")
EARLY_STOPPING_MODES = ("max", "min")
EVAL_PREFIXES = ("eval/", "eval_ema/")
_DERIVED_MODEL_KWARGS = ("num_classes", "dtype", "param_dtype")


def base_config() -> ml_collections.ConfigDict:
  """Every section and field jaxtrain reads, with its default.

  Model kwargs live beside `model.name` and are checked against the model's
  signature; the optimizer section is `jaxtrain.optim.default_config()`.

  Returns:
    A new ConfigDict: seed, model, loss, data, optimizer, train, mesh, sharding,
    precision, checkpoint, distill, logging and init_from sections.
  """
  # Plain-data modules: loading a config imports no JAX (`jaxtrain --help` and
  # config errors stay fast).
  from jaxtrain.data import sources  # pylint: disable=g-import-not-at-top
  from jaxtrain.optim import defaults as optim_defaults  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import rules  # pylint: disable=g-import-not-at-top
  from jaxtrain.pretrained import section as init_from  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict({"name": "cnn"})
  # Loss options live beside loss.name (jaxtrain.losses: registry and batch contract).
  c.loss = ml_collections.ConfigDict({"name": "softmax_cross_entropy"})
  c.data = sources.default_config()
  c.optimizer = optim_defaults.default_config()
  # Typed sections: defaults and types in jaxtrain.settings (what validate returns).
  c.train = settings.default_section("train")
  c.mesh = settings.default_section("mesh")
  c.sharding = ml_collections.ConfigDict(dict(rules=rules.DEFAULT_RULES))
  c.precision = settings.default_section("precision")
  c.checkpoint = settings.default_section("checkpoint")
  c.distill = _distill_section()
  from jaxtrain import writers  # pylint: disable=g-import-not-at-top
  c.logging = writers.default_config()  # metrics.jsonl, TensorBoard, W&B, MLflow
  c.init_from = init_from.default_config()  # weights a fresh run starts from
  return c


def _distill_section() -> ml_collections.ConfigDict:
  """`config.distill`: the teacher of a distillation run."""
  return ml_collections.ConfigDict(dict(
      teacher_workdir="",      # a finished run's workdir: its newest checkpoint is
                               # the teacher (read-only); "": no teacher
      teacher_step=0,          # that checkpoint step instead of the newest (0)
      # The teacher's model: name + kwargs; name "": as saved in its checkpoint.
      teacher_model=ml_collections.ConfigDict({"name": ""}),
  ))


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/experiment.py[:arg]` and calls its `get_config(arg)`.

  Args:
    spec: the experiment file, optionally followed by ``:arg`` (e.g.
      ``experiments/resnet50_imagenet_lars.py:runlocal``).

  Returns:
    The experiment's ConfigDict (not yet validated: see `validate`).

  Raises:
    ConfigError: no such file, or no `get_config` in it (field ``--config``).
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError("--config", spec, "no such experiment file; pass "
                      "--config=experiments/<name>.py")
  try:
    module = load_module(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError("--config", spec, f"importing it failed: {_where(e, path)}; "
                      "fix the experiment file") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError("--config", spec, "an experiment file must define get_config()")
  if arg and not _takes_an_argument(get_config):
    raise ConfigError("--config", spec, f"get_config() in {path} takes no argument; "
                      f"drop ':{arg}' or define get_config(arg=None)")
  try:
    config = get_config(arg) if arg else get_config()
  except Exception as e:  # pylint: disable=broad-except
    call = f"get_config({arg!r})" if arg else "get_config()"
    raise ConfigError("--config", spec, f"{call} raised {_where(e, path)}; fix the "
                      "experiment file or its argument") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError("--config", spec, f"get_config() returned a "
                      f"{type(config).__name__}, not an ml_collections.ConfigDict; "
                      "start it from jaxtrain.config.base_config()")
  return config


def _where(error: Exception, path: str) -> str:
  """'TypeError: message (file.py line N)': one line, at the experiment file's
  innermost line in the traceback (or the syntax error's)."""
  line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
  tb = error.__traceback__
  while tb is not None:
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
      line = tb.tb_lineno
    tb = tb.tb_next
  text = error.msg if isinstance(error, SyntaxError) else str(error)
  message = (text.strip().splitlines() or [""])[0][:300]
  at = f" ({os.path.basename(path)} line {line})" if line else ""
  return f"{type(error).__name__}: {message}{at}"


def _takes_an_argument(fn: Any) -> bool:
  try:
    inspect.signature(fn).bind("arg")
    return True
  except TypeError:
    return False
  except ValueError:  # no signature (a builtin): let the call decide
    return True


def load_module(path: str) -> types.ModuleType:
  """Imports the experiment file at `path` (experiment files are not a package).

  Lets one experiment build on another's functions, e.g. ResNet strikes back A2
  calling A1's `procedure(...)`.

  Args:
    path: the file; relative paths are relative to the working directory.

  Returns:
    The module, executed.
  """
  name = "_jaxtrain_experiment_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `a.b=value` strings (the part after `--config.`), in order.

  Args:
    config: the config to change in place.
    overrides: ``"section.field=value"`` strings; values are Python literals
      unless the field is a string.

  Returns:
    `config`, changed.

  Raises:
    ConfigError: an unknown field (with the closest known name) or a bad value.
  """
  for item in overrides:
    key, eq, raw = item.partition("=")
    if not eq:
      raise ConfigError(key, None, "an override needs a value: --config.a.b=VALUE")
    _set_field(config, key, raw)
  return config


def overridden(overrides: Sequence[str]) -> list[str]:
  """The dotted fields that `a.b=value` override strings set."""
  return [item.partition("=")[0] for item in overrides]


def _set_field(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      unknown(".".join(parents[:i + 1]), keys_of(node), raw)
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict):
    raise ConfigError(key, raw, f"config.{'.'.join(parents)} is not a section")
  if (leaf not in node and not _is_model_kwarg(config, parents, leaf)
      and not _is_loss_option(node, parents, leaf)
      and not _is_optimizer_kwarg(parents)):
    known = keys_of(node)
    if parents == ["model"]:
      known += list(_model_options(config.model.name))
    if parents == ["loss"]:
      known += _loss_options(node)
    unknown(key, known, raw)
  old = node[leaf] if leaf in node else None
  value = _parse(raw, old)
  try:
    node[leaf] = value
  except TypeError:
    raise ConfigError(key, raw, f"expected a value of type {type(old).__name__}") from None


def _model_options(name: str) -> dict[str, Any]:
  """The model's keyword arguments a config may set (raises for unknown names)."""
  from jaxtrain import models  # pylint: disable=g-import-not-at-top
  # num_classes comes from the data, dtypes from config.precision.
  return {k: v for k, v in models.model_kwargs(name).items()
          if k not in _DERIVED_MODEL_KWARGS}


def _is_model_kwarg(config, parents, leaf) -> bool:
  """Whether `leaf` is an option of the model (or distillation teacher) section."""
  if parents == ["model"]:
    name = config.model.name
  elif parents == ["distill", "teacher_model"]:
    name = config.distill.teacher_model.name
  else:
    return False
  try:
    return leaf in _model_options(name)
  except ConfigError:
    return False


def _is_optimizer_kwarg(parents: Sequence[str]) -> bool:
  """`optimizer.kwargs.X` (also a study label's): a plug-in factory's arguments,
  checked against its signature when the optimizer is built."""
  return (parents[-2:] == ["optimizer", "kwargs"]
          or (parents[:2] == ["study", "optimizer_configs"] and len(parents) == 4
              and parents[-1] == "kwargs"))


def _loss_options(section: ml_collections.ConfigDict) -> list[str]:
  from jaxtrain import losses  # pylint: disable=g-import-not-at-top
  try:
    return losses.option_names(section)
  except ConfigError:
    return []


def _is_loss_option(node, parents, leaf) -> bool:
  return parents == ["loss"] and leaf in _loss_options(node)


def _parse(raw: str, old: Any) -> Any:
  """Parses a command-line string into the type of the field it replaces."""
  if isinstance(old, str):
    return raw
  if isinstance(old, bool):
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    return raw  # a wrong type; assignment reports it
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def validate(config: ml_collections.ConfigDict,
             given: Sequence[str] = ()) -> settings.Settings:
  """Checks every section before anything compiles.

  A field read only under a condition that is off (`jaxtrain.unread_fields`) must
  keep its default, and is refused when `given` names it.

  Args:
    config: a full experiment config (from `base_config` or `load`).
    given: dotted fields set on the command line (``"train.num_steps"``).

  Returns:
    The typed, frozen `jaxtrain.settings.Settings` every later layer reads
    (`config` itself is left unchanged, marked as validated: `jaxtrain.validated`).

  Raises:
    ConfigError: for the first bad field, naming it, its value and the fix.
  """
  # Checks of plain values first: a bad one is reported before JAX is imported. The
  # model, loss and teacher checks read the models' and losses' signatures (JAX).
  base = base_config()
  check_keys(config, base, "", skip={"model", "optimizer", "loss", "distill",
                                     "logging", "init_from"})
  _check_train(config.train)
  _check_stages(config.train)
  _check_ema(config)
  _check_early_stopping(config.train)
  check_choice("precision.compute_dtype", config.precision.compute_dtype, PRECISIONS)
  check_choice("precision.weight_grad_dtype", config.precision.weight_grad_dtype,
                WEIGHT_GRAD_DTYPES)
  check_choice("checkpoint.restore", config.checkpoint.restore, RESTORE_MODES)
  check_int("checkpoint.every", config.checkpoint.every, minimum=0)
  check_int("checkpoint.keep", config.checkpoint.keep, minimum=1)
  for axis in ("data", "fsdp", "model"):
    size = config.mesh[axis]
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(f"mesh.{axis}", size, "a mesh axis size is a positive int, "
                        "or -1 to fill the remaining devices")
  check_int("seed", config.seed, minimum=0)
  from jaxtrain.data import sources  # pylint: disable=g-import-not-at-top
  from jaxtrain.optim import defaults as optim_defaults  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import rules  # pylint: disable=g-import-not-at-top
  rules.check(config.sharding.rules)
  check_keys(config.optimizer, optim_defaults.default_config(), "optimizer.",
             skip={"schedule", "kwargs"})
  optim_defaults.check_schedule_values(config.optimizer.schedule)
  sources.validate(config.data)
  from jaxtrain import writers  # pylint: disable=g-import-not-at-top
  writers.validate(config.logging)
  from jaxtrain.pretrained import section as init_from  # pylint: disable=g-import-not-at-top
  init_from.check(config.init_from)
  _check_unread(config, base, given)  # plain values, before JAX is imported
  _check_model(config)
  _check_distill(config)
  from jaxtrain import losses  # pylint: disable=g-import-not-at-top
  losses.check_config(config)
  _check_unread_model_options(config, given)
  validated.mark(config)  # a library caller's later layers do not check it again
  return settings.Settings.from_config(config)


def settings_of(config: ml_collections.ConfigDict | settings.Settings
                ) -> settings.Settings:
  """`config` as settings: validated now, unless it was already (a library entry
  given the CLI's `Settings`, or a config `validate` passed unchanged)."""
  if isinstance(config, settings.Settings):
    return config
  if validated.is_marked(config):
    return settings.Settings.from_config(config)
  return validate(config)


def _check_unread(config, base, given: Sequence[str]) -> None:
  """Fields whose condition is off keep their defaults (jaxtrain.unread_fields):
  train, data, distill and the optimizer (plain values, no JAX)."""
  from jaxtrain import unread_fields  # pylint: disable=g-import-not-at-top
  from jaxtrain.optim import defaults as optim_defaults  # pylint: disable=g-import-not-at-top
  from jaxtrain.optim import unread_fields as optim_unread  # pylint: disable=g-import-not-at-top
  unread_fields.check_run(config, base, given)
  optim_unread.check(optim_defaults.merged_section(config.optimizer),
                     optim_defaults.default_config(),
                     {g[len("optimizer."):] for g in given
                      if g.startswith("optimizer.")})


def _check_unread_model_options(config, given: Sequence[str]) -> None:
  from jaxtrain import unread_fields  # pylint: disable=g-import-not-at-top
  unread_fields.check_model_options(config, given)


def _check_model(config) -> None:
  allowed = ["name", *_model_options(config.model.name)]
  for key in config.model.keys():
    if key not in allowed:
      unknown(f"model.{key}", allowed, config.model[key])
  from jaxtrain.models import registry  # pylint: disable=g-import-not-at-top
  registry.check_option_values(config.model.name,
                               {k: v for k, v in config.model.items() if k != "name"})


def _check_train(train) -> None:
  check_int("train.batch_size", train.batch_size, minimum=1)
  check_int("train.num_steps", train.num_steps, minimum=1)
  check_int("train.log_every", train.log_every, minimum=1)
  check_int("train.eval_every", train.eval_every, minimum=0)
  check_int("train.eval_batch_size", train.eval_batch_size, minimum=0)
  if not (math.isfinite(train.num_epochs) and train.num_epochs >= 0):
    raise ConfigError("train.num_epochs", train.num_epochs,
                      "use a number of epochs >= 0 (0: use train.num_steps)")
  check_choice("train.on_nonfinite", train.on_nonfinite, NONFINITE_MODES)
  check_int("train.max_consecutive_skips", train.max_consecutive_skips, minimum=1)
  check_int("train.steps_per_dispatch", train.steps_per_dispatch, minimum=1)
  if (isinstance(train.peak_tflops, bool)
      or not isinstance(train.peak_tflops, (int, float))
      or not (math.isfinite(train.peak_tflops) and train.peak_tflops >= 0)):
    raise ConfigError("train.peak_tflops", train.peak_tflops,
                      "use the peak TFLOP/s of one device (> 0), or 0 for the device "
                      "kind's dense bf16 peak (jaxtrain.peak_flops)")
  if not isinstance(train.diagnostics, bool):
    raise ConfigError("train.diagnostics", train.diagnostics,
                      "use True (log update norms, trust ratios and the gradient "
                      "noise scale each step) or False")
  _check_cache_dir(train.compilation_cache_dir)
  profile = tuple(train.profile_steps)
  if (len(profile) != 2 or not all(isinstance(s, int) and s >= 0 for s in profile)
      or (profile != (0, 0) and profile[1] <= profile[0])):
    raise ConfigError("train.profile_steps", train.profile_steps,
                      "use (start, stop) with 0 <= start < stop, or (0, 0) for off")


COMPILATION_CACHE_OFF = "off"  # train.compilation_cache_dir: no cache
# Spellings a user may mean as "off" that would otherwise name a directory.
_LIKE_OFF = ("none", "null", "false", "no", "0", "disable", "disabled", "off")


def _check_cache_dir(value: Any) -> None:
  """`train.compilation_cache_dir`: "", "off" or a path; never a path named
  like a switch ("None", "false"), which would silently make that directory."""
  fix = (f"use '' for workdir/compile_cache, a directory path, or "
         f"'{COMPILATION_CACHE_OFF}' to compile without the cache")
  if not isinstance(value, str):
    raise ConfigError("train.compilation_cache_dir", value, fix)
  if value.strip().lower() in _LIKE_OFF and value != COMPILATION_CACHE_OFF:
    raise ConfigError("train.compilation_cache_dir", value, fix)


def _check_stages(train) -> None:
  stages = train.stages
  fix = ("use ((from_step, image_size, batch_size), ...) with from_steps increasing "
         "from 0 and sizes >= 0 (0: the transforms' size / train.batch_size)")
  if not isinstance(stages, (tuple, list)):
    raise ConfigError("train.stages", stages, fix)
  for stage in stages:
    if (not isinstance(stage, (tuple, list)) or len(stage) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in stage)):
      raise ConfigError("train.stages", stages, fix)
  starts = [s[0] for s in stages]
  if stages and (starts[0] != 0 or starts != sorted(set(starts))):
    raise ConfigError("train.stages", stages, fix)


def _check_ema(config) -> None:
  train = config.train
  if not (isinstance(train.ema_decay, (int, float)) and 0 <= train.ema_decay < 1):
    raise ConfigError("train.ema_decay", train.ema_decay, "use a decay in [0, 1) "
                      "(0: no EMA; e.g. 0.9999)")
  if not train.ema_warmup_power >= 0:
    raise ConfigError("train.ema_warmup_power", train.ema_warmup_power,
                      "use a power >= 0 (0: constant decay; timm uses 2/3 or 3/4)")
  if not train.ema_warmup_gamma > 0:
    raise ConfigError("train.ema_warmup_gamma", train.ema_warmup_gamma,
                      "use gamma > 0 (timm's default is 1)")
  if train.ema_decay and config.optimizer.get("ema_decay"):
    raise ConfigError("train.ema_decay", train.ema_decay, "optimizer.ema_decay "
                      "keeps a second average of the params; set one of them to 0")


def _check_early_stopping(train) -> None:
  es = train.early_stopping
  if not isinstance(es.metric, str) or (
      es.metric and not es.metric.startswith(EVAL_PREFIXES)):
    raise ConfigError("train.early_stopping.metric", es.metric, "name an eval "
                      "metric, e.g. 'eval/accuracy', 'eval/loss' or "
                      "'eval_ema/accuracy', or '' for off")
  check_choice("train.early_stopping.mode", es.mode, EARLY_STOPPING_MODES)
  check_int("train.early_stopping.patience", es.patience, minimum=0)
  if not (isinstance(es.min_delta, (int, float)) and es.min_delta >= 0):
    raise ConfigError("train.early_stopping.min_delta", es.min_delta,
                      "use a number >= 0")
  if es.metric and es.patience and not train.eval_every:
    raise ConfigError("train.early_stopping.patience", es.patience, "early "
                      "stopping needs periodic evals: set train.eval_every > 0")
  if es.metric.startswith("eval_ema/") and not train.ema_decay:
    raise ConfigError("train.early_stopping.metric", es.metric, "eval_ema/ "
                      "metrics need train.ema_decay > 0")


def _check_distill(config) -> None:
  distill = config.distill
  check_keys(distill, base_config().distill, "distill.", skip={"teacher_model"})
  if not isinstance(distill.teacher_workdir, str):
    raise ConfigError("distill.teacher_workdir", distill.teacher_workdir,
                      "use a workdir path, or '' for no teacher")
  check_int("distill.teacher_step", distill.teacher_step, minimum=0)
  teacher = distill.teacher_model
  if not isinstance(teacher, ml_collections.ConfigDict) or "name" not in teacher:
    raise ConfigError("distill.teacher_model", teacher, "a section with a 'name' "
                      "(and the model's options)")
  if teacher.name:
    allowed = ["name", *_model_options(teacher.name)]
    for key in teacher.keys():
      if key not in allowed:
        unknown(f"distill.teacher_model.{key}", allowed, teacher[key])
    from jaxtrain.models import registry  # pylint: disable=g-import-not-at-top
    registry.check_option_values(teacher.name, {k: v for k, v in teacher.items()
                                                if k != "name"},
                                 "distill.teacher_model.")
