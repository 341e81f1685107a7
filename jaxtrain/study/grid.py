"""Study configs: an experiment config plus a `study` section, expanded into trials.

A study file is an experiment file whose `get_config()` also sets `config.study`
(start from `study_defaults()`). The study section declares a grid, batch sizes x
optimizers x learning rates x warmups x seeds (x momenta x weight decays), a target
(`eval/accuracy >= 0.95`) checked every `eval_every` steps, and a step budget. Each
trial is an ordinary experiment config (`Trial.config`): `jaxtrain train` runs it
alone and gets the numbers the sweep records.

Learning rate of a trial at batch size B, from the optimizer's `learning_rate` lr0
tuned at `base_batch_size` B0:

  linear: lr0 * B / B0          Goyal et al. 2017, arXiv 1706.02677
  sqrt:   lr0 * sqrt(B / B0)    Krizhevsky 2014, arXiv 1404.5997
  grid:   lr0 * c(B) * m, for each multiplier m in `lr_grid`, c the `lr_grid_center`
          rule: a tuned grid per batch size (Shallue et al. 2018, arXiv 1811.03600)

Warmup (Goyal et al.'s gradual warmup) is linear from 0 over `warmup_epochs` epochs:
round(e * N / B) steps for N training examples, at most the trial's budget.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import math
from typing import Any, Callable, Sequence

import ml_collections

from jaxtrain.checks import MAX_INT, check_keys, is_int
from jaxtrain.errors import ConfigError
from jaxtrain.settings import Settings

LR_RULES = ("linear", "sqrt", "grid")
GRID_CENTERS = ("none", "linear", "sqrt")
# Hyperparameters that may differ inside one vectorized group of trials.
VECTOR_FIELDS = ("optimizer.learning_rate", "optimizer.momentum", "optimizer.b1",
                 "optimizer.weight_decay", "optimizer.schedule.warmup_steps", "seed")
_B1_OPTIMIZERS = ("adam", "adamw", "lamb")


def study_defaults() -> ml_collections.ConfigDict:
  """The `config.study` section with every field the sweep reads."""
  s = ml_collections.ConfigDict()
  s.batch_sizes = (32, 64, 128)   # global batch sizes
  s.optimizers = ("momentum",)    # labels: keys of optimizer_configs or optimizer names
  # label -> fields of config.optimizer (name, learning_rate at base_batch_size,
  # schedule, ...) merged over the experiment's optimizer section.
  s.optimizer_configs = ml_collections.ConfigDict()
  s.base_batch_size = 256         # batch size the learning_rates are given for
  s.lr_rule = "linear"            # linear | sqrt | grid
  s.lr_grid = (0.25, 0.5, 1.0, 2.0, 4.0)  # grid: multipliers of the centre LR
  s.lr_grid_center = "sqrt"       # grid: none | linear | sqrt scaling of the centre
  s.warmup_epochs = (0.0,)        # warmup options (epochs of linear warmup)
  s.seeds = (0,)                  # init, dropout and data-order seeds
  s.momentum = ()                 # momentum (b1 for adam/adamw/lamb) options; ():
                                  # the optimizer's own
  s.weight_decay = ()             # weight-decay options; (): the optimizer's own
  s.target = "eval/accuracy >= 0.95"  # METRIC OP VALUE, OP one of >= > <= <
  s.eval_every = 0                # steps between target checks ...
  s.eval_every_epochs = 0.25      # ... or epochs (used when eval_every == 0)
  s.max_steps = 1000              # step budget of a trial
  s.max_epochs = 0.0              # > 0: also at most this many epochs
  s.stop_at_target = True         # end a trial at the first step meeting the target
  s.prune = True                  # end a group's other trials once one meets it
  s.divergence_loss = 0.0         # train loss above this = diverged; 0: 10 ln(classes)
  s.vectorize = True              # run trials that differ only in VECTOR_FIELDS as one
  s.max_trials_per_group = 16     # ... program, at most this many at once
  return s


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run of the study: its grid coordinates and its experiment config."""
  batch_size: int
  optimizer: str
  learning_rate: float
  warmup_epochs: float
  warmup_steps: int
  seed: int
  momentum: float | None
  weight_decay: float | None
  num_steps: int
  eval_every: int
  config: ml_collections.ConfigDict = dataclasses.field(compare=False, repr=False)

  @property
  def id(self) -> str:
    """Readable coordinates plus a hash of the whole config (stale results differ)."""
    parts = [f"b{self.batch_size}", self.optimizer, f"lr{self.learning_rate:.4g}",
             f"w{self.warmup_steps}", f"s{self.seed}"]
    if self.momentum is not None:
      parts.append(f"m{self.momentum:g}")
    if self.weight_decay is not None:
      parts.append(f"wd{self.weight_decay:g}")
    digest = hashlib.sha1(result_config(self.config).to_json(
        sort_keys=True).encode()).hexdigest()
    return "-".join(parts) + "-" + digest[:8]

  def coordinates(self) -> dict[str, Any]:
    return {"trial": self.id, "batch_size": self.batch_size,
            "optimizer": self.optimizer, "learning_rate": self.learning_rate,
            "warmup_epochs": self.warmup_epochs, "warmup_steps": self.warmup_steps,
            "seed": self.seed, "momentum": self.momentum,
            "weight_decay": self.weight_decay, "num_steps": self.num_steps,
            "eval_every": self.eval_every}


def result_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` without what changes no result: its `logging` section (where metrics
  go) and `train.compilation_cache_dir` (where compiled programs are kept). A
  trial's id and the stored study's experiment leave them out (adding W&B to a
  finished study, or moving its cache, re-runs nothing)."""
  config = copy.deepcopy(config)
  if "logging" in config:
    del config["logging"]
  if "compilation_cache_dir" in config.get("train", {}):
    del config.train["compilation_cache_dir"]
  return config


def split(config: ml_collections.ConfigDict | Settings
          ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict | None]:
  """(experiment config without `study`, the study section or None): a copy, to
  derive trials from (validated `Settings` have no `study`)."""
  if isinstance(config, Settings):
    return config.to_config(), None
  experiment = copy.deepcopy(config)
  study = None
  if "study" in experiment:
    study = experiment.study
    del experiment["study"]
  return experiment, study


def load(spec: str, overrides: Sequence[str], require_study: bool = True
         ) -> ml_collections.ConfigDict:
  """Loads a study file, applies `--config.*` overrides, validates both parts."""
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(spec)
  config_lib.apply_overrides(config, overrides)
  experiment, study = split(config)
  given = config_lib.overridden(overrides)
  config_lib.validate(experiment, given=[g for g in given if not g.startswith("study.")])
  if study is not None:
    validate_study(study, given)
    _check_given_optimizer_fields(experiment, study, given)
  elif require_study:
    raise ConfigError("--config", spec, "a sweep needs a study: set config.study "
                      "(from jaxtrain.study.grid.study_defaults()) in get_config()")
  return config


def _fail(field: str, value: Any, fix: str, choices=None) -> None:
  raise ConfigError(f"study.{field}", value, fix, choices)


def _is_number(v: Any, minimum: float) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v) and v >= minimum)


def _check_tuple(study, field: str, ok: Callable[[Any], bool], what: str,
                 allow_empty: bool = False) -> None:
  value = study[field]
  if not isinstance(value, (tuple, list)) or (not value and not allow_empty) or (
      not all(ok(v) for v in value)):
    _fail(field, value, f"use a tuple of {what}" + ("" if allow_empty else
                                                    " (at least one)"))


def validate_study(study: ml_collections.ConfigDict,
                   given: Sequence[str] = ()) -> None:
  """Checks every field of the study section; raises ConfigError naming it.

  `given`: dotted fields set on the command line (``"study.lr_grid"``); a field
  the study would not read is refused when given, or when off its default.
  """
  from jaxtrain import optim  # pylint: disable=g-import-not-at-top
  from jaxtrain.study import targets  # pylint: disable=g-import-not-at-top
  check_keys(study, study_defaults(), "study.", skip=("optimizer_configs",),
             complete=False)
  _check_tuple(study, "batch_sizes", lambda v: is_int(v, 1, MAX_INT),
               "ints >= 1")
  _check_tuple(study, "optimizers", lambda v: isinstance(v, str) and v, "labels")
  for label, section in study.optimizer_configs.items():
    if not isinstance(section, ml_collections.ConfigDict):
      _fail(f"optimizer_configs.{label}", section, "use a section of optimizer fields")
    check_keys(section, optim.default_config(), f"study.optimizer_configs.{label}.",
               skip=("kwargs",), complete=False)  # kwargs: the plug-in's signature
  from jaxtrain.optim import plugins  # pylint: disable=g-import-not-at-top
  for label in study.optimizers:
    name = study.optimizer_configs[label].get("name", label) if (
        label in study.optimizer_configs) else label
    if name not in optim.OPTIMIZERS and not plugins.is_plugin(name):
      _fail("optimizers", label, "not a key of study.optimizer_configs nor an "
            "optimizer name", choices=[*study.optimizer_configs.keys(),
                                       *optim.OPTIMIZERS,
                                       *plugins.registered_names()])
  if study.lr_rule not in LR_RULES:
    _fail("lr_rule", study.lr_rule, "unknown rule", LR_RULES)
  if study.lr_grid_center not in GRID_CENTERS:
    _fail("lr_grid_center", study.lr_grid_center, "unknown rule", GRID_CENTERS)
  _check_tuple(study, "lr_grid", lambda v: _is_number(v, 0) and v > 0,
               "positive multipliers")
  if not is_int(study.base_batch_size, 1):
    _fail("base_batch_size", study.base_batch_size, "use an int >= 1")
  _check_tuple(study, "warmup_epochs", lambda v: _is_number(v, 0), "numbers >= 0")
  _check_tuple(study, "seeds", lambda v: is_int(v, 0, MAX_INT),
               f"ints in [0, {MAX_INT}]")
  _check_tuple(study, "momentum", lambda v: _is_number(v, 0) and v < 1,
               "numbers in [0, 1)", allow_empty=True)
  _check_tuple(study, "weight_decay", lambda v: _is_number(v, 0), "numbers >= 0",
               allow_empty=True)
  targets.parse(study.target, "study.target")
  for field in ("eval_every", "max_trials_per_group"):
    if not is_int(study[field], 0 if field == "eval_every" else 1):
      _fail(field, study[field], "use an int >= " + ("0" if field == "eval_every"
                                                     else "1"))
  if not is_int(study.max_steps, 1, MAX_INT):
    _fail("max_steps", study.max_steps, f"use an int in [1, {MAX_INT}]")
  for field in ("eval_every_epochs", "max_epochs", "divergence_loss"):
    if not _is_number(study[field], 0):
      _fail(field, study[field], "use a finite number >= 0")
  if not study.eval_every and not study.eval_every_epochs:
    _fail("eval_every", 0, "set eval_every (steps) or eval_every_epochs > 0")
  from jaxtrain.optim import unread_fields  # pylint: disable=g-import-not-at-top
  unread_fields.check_rules(study, study_defaults(), _unread_rules(), "study.",
                            {g[len("study."):] for g in given if g.startswith("study.")})


def _unread_rules() -> tuple[Any, ...]:
  """Study fields read only under a condition (`jaxtrain.unread_fields`)."""
  from jaxtrain.optim.unread_fields import Rule  # pylint: disable=g-import-not-at-top
  grid_only = [Rule(f, lambda s: s.lr_rule == "grid",
                    lambda s: f"study.lr_rule={s.lr_rule!r} tries no grid",
                    "set study.lr_rule=grid") for f in ("lr_grid", "lr_grid_center")]
  return (*grid_only,
          Rule("base_batch_size", lambda s: not (
              s.lr_rule == "grid" and s.lr_grid_center == "none"),
               lambda s: "study.lr_grid_center='none' scales nothing",
               "set study.lr_grid_center to linear or sqrt"),
          Rule("eval_every_epochs", lambda s: not s.eval_every,
               lambda s: f"study.eval_every={s.eval_every} (steps) counts instead",
               "set study.eval_every=0 to count in epochs", off=(0,)),
          Rule("max_trials_per_group", lambda s: s.vectorize,
               lambda s: "study.vectorize=False runs trials one by one",
               "set study.vectorize=True"))


def learning_rates(study: ml_collections.ConfigDict, base_lr: float,
                   batch_size: int) -> list[float]:
  """The learning rates tried at `batch_size` (see the module docstring)."""
  ratio = batch_size / study.base_batch_size
  scale = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}
  if study.lr_rule == "grid":
    centre = base_lr * scale[study.lr_grid_center]
    lrs = [centre * m for m in study.lr_grid]
  else:
    lrs = [base_lr * scale[study.lr_rule]]
  return [float(f"{lr:.6g}") for lr in lrs]  # stable ids across float noise


def budget(study: ml_collections.ConfigDict, batch_size: int,
           num_examples: int) -> tuple[int, int]:
  """(step budget, steps between evaluations) at `batch_size`."""
  steps = study.max_steps
  if study.max_epochs:
    steps = min(steps, math.ceil(study.max_epochs * num_examples / batch_size))
  every = study.eval_every or max(
      1, round(study.eval_every_epochs * num_examples / batch_size))
  return max(steps, 1), min(every, max(steps, 1))


def _merge(target: ml_collections.ConfigDict,
           source: ml_collections.ConfigDict) -> None:
  for key, value in source.items():
    if isinstance(value, ml_collections.ConfigDict):
      _merge(target[key], value)
    else:
      target[key] = value


def optimizer_section(experiment, study, label: str) -> ml_collections.ConfigDict:
  """The experiment's optimizer section with `label`'s fields merged over it.

  Fields the experiment set that `label`'s optimizer or schedule does not read
  (the experiment's momentum for an Adam trial) go back to their defaults
  (`dropped_fields` names them); fields `study.optimizer_configs[label]` sets are
  kept, and refused by `optim.build` if unread (`jaxtrain.optim.unread_fields`).
  """
  return _section_and_dropped(experiment, study, label)[0]


def dropped_fields(experiment, study, label: str) -> list[str]:
  """'optimizer.FIELD=VALUE' for each field of the experiment's optimizer section
  that `label`'s optimizer does not read, so its trials leave out (for the log)."""
  return _section_and_dropped(experiment, study, label)[1]


def _section_and_dropped(experiment, study, label):
  from jaxtrain import optim  # pylint: disable=g-import-not-at-top
  from jaxtrain.optim import unread_fields  # pylint: disable=g-import-not-at-top
  section = copy.deepcopy(experiment.optimizer)
  section.name = label
  own = study.optimizer_configs.get(label)
  if own is not None:
    _merge(section, own)
  before = copy.deepcopy(section)
  reset = unread_fields.reset(section, optim.default_config(), keep=_paths(own or {}))
  return section, [f"optimizer.{f}={unread_fields.get(before, f)!r}" for f in reset]


def _paths(node: Any, prefix: str = "") -> set[str]:
  """The dotted paths of a section's leaves."""
  out = set()
  for key, value in node.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out |= _paths(value, f"{prefix}{key}.")
    else:
      out.add(prefix + key)
  return out


def _check_given_optimizer_fields(experiment, study, given: Sequence[str]) -> None:
  """An optimizer field set on the command line must reach some trial: not every
  label may override it (study.optimizer_configs) or not read it."""
  from jaxtrain.optim import unread_fields  # pylint: disable=g-import-not-at-top
  for path in given:
    if not path.startswith("optimizer."):
      continue
    field = path[len("optimizer."):]
    for label in study.optimizers:
      own = study.optimizer_configs.get(label)
      section = optimizer_section(experiment, study, label)
      if field not in _paths(own or {}) and field not in unread_fields.unread(section):
        break
    else:
      raise ConfigError(path, unread_fields.get(experiment.optimizer, field),
                        "not used: every optimizer of the study "
                        f"{tuple(study.optimizers)} sets its own in "
                        "study.optimizer_configs or does not read it; set it there "
                        "(--config.study.optimizer_configs.LABEL." + field + "=...)")


def make_trials(config: ml_collections.ConfigDict,
                num_examples: int) -> list[Trial]:
  """Every trial of the study, in grid order; each config validated.

  Args:
    config: a validated study config (experiment + `study`).
    num_examples: size of the train split (epochs -> steps).
  """
  from jaxtrain import optim  # pylint: disable=g-import-not-at-top
  experiment, study = split(config)
  too_big = [b for b in study.batch_sizes if b > num_examples]
  if too_big:
    _fail("batch_sizes", tuple(study.batch_sizes), f"batch size {too_big[0]} is "
          f"larger than the train split ({num_examples} examples); use at most "
          f"{num_examples}")
  trials = []
  for batch_size, label in itertools.product(study.batch_sizes, study.optimizers):
    num_steps, eval_every = budget(study, batch_size, num_examples)
    section = optimizer_section(experiment, study, label)
    for lr, epochs, momentum, wd, seed in itertools.product(
        learning_rates(study, section.learning_rate, batch_size),
        study.warmup_epochs, tuple(study.momentum) or (None,),
        tuple(study.weight_decay) or (None,), study.seeds):
      warmup = min(round(epochs * num_examples / batch_size), num_steps)
      trial = Trial(batch_size, label, lr, epochs, warmup, seed, momentum, wd,
                    num_steps, eval_every, config=None)
      trial = dataclasses.replace(trial, config=_trial_config(experiment, section,
                                                              trial))
      optim.build(trial.config.optimizer, num_steps, batch_size)  # validates
      trials.append(trial)
  return trials


def _trial_config(experiment: ml_collections.ConfigDict,
                  section: ml_collections.ConfigDict,
                  trial: Trial) -> ml_collections.ConfigDict:
  """The experiment config that runs `trial` alone (`jaxtrain train`)."""
  from jaxtrain import optim  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(experiment)
  c.optimizer = copy.deepcopy(section)
  c.optimizer.learning_rate = trial.learning_rate
  c.optimizer.lr_scaling = "none"  # the study applied its rule ...
  c.optimizer.base_batch_size = optim.default_config().base_batch_size  # ... unread
  c.optimizer.schedule.warmup_steps = trial.warmup_steps
  c.optimizer.schedule.warmup_fraction = 0.0
  if trial.momentum is not None:
    node, leaf = momentum_field(c.optimizer, trial.momentum)
    node[leaf] = trial.momentum
  if trial.weight_decay is not None:
    c.optimizer.weight_decay = trial.weight_decay
  c.seed = trial.seed
  c.train.batch_size = trial.batch_size
  c.train.num_steps = trial.num_steps
  c.train.num_epochs = 0.0
  c.train.eval_every = c.train.log_every = trial.eval_every
  return c


def momentum_field(section: ml_collections.ConfigDict, momentum: Any = None
                   ) -> tuple[ml_collections.ConfigDict, str]:
  """(section node, field) that `study.momentum` sets for this optimizer: b1 of
  Adam-style ones, momentum of the rest, a plug-in factory's `momentum` (else `b1`)
  argument in `optimizer.kwargs`.

  Args:
    section: the trial's optimizer section.
    momentum: the study's value, for the error message.

  Raises:
    ConfigError: (study.momentum) a plug-in factory that takes neither.
  """
  from jaxtrain.optim import plugins  # pylint: disable=g-import-not-at-top
  if not plugins.is_plugin(section.name):
    return section, "b1" if section.name in _B1_OPTIMIZERS else "momentum"
  for arg in ("momentum", "b1"):
    if plugins.accepts(section.name, arg):
      return section.kwargs, arg
  raise ConfigError("study.momentum", momentum, f"the plug-in optimizer "
                    f"{section.name!r} ({plugins.describe(section.name)}) takes no "
                    "momentum or b1 argument to vary; remove study.momentum or give "
                    "the factory one")


def group_key(trial: Trial) -> str:
  """Trials with equal keys differ only in VECTOR_FIELDS (and the momentum a
  plug-in takes in optimizer.kwargs)."""
  c = copy.deepcopy(trial.config)
  if trial.momentum is not None:
    node, leaf = momentum_field(c.optimizer)
    node[leaf] = 0.0
  for path in VECTOR_FIELDS:
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(0)
  return c.to_json(sort_keys=True)


def groups(trials: Sequence[Trial], max_size: int,
           vectorizable: Callable[[Trial], bool]) -> list[list[Trial]]:
  """Trials batched into groups that run as one program, in first-trial order."""
  by_key: dict[str, list[Trial]] = {}
  singles = []
  for t in trials:
    if vectorizable(t):
      by_key.setdefault(group_key(t), []).append(t)
    else:
      singles.append([t])
  out = [g[i:i + max_size] for g in by_key.values()
         for i in range(0, len(g), max_size)]
  order = {t.id: i for i, t in enumerate(trials)}
  return sorted(out + singles, key=lambda g: order[g[0].id])
