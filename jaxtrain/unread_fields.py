"""Fields read only under a condition: set while the condition is off, they are refused.

Some config fields matter only when another field says so: `train.num_steps` only
while `train.num_epochs` is 0, `optimizer.sign_decay` only for AddSign/PowerSign,
`optimizer.schedule.div_factor` only for a one-cycle schedule, `model.bn_momentum`
only with batch norm. The rule is the same everywhere: a field the run would not read
must keep its default; a different value, or any value given on the command line, is
a `ConfigError` naming the field, the field that turns it off, and both fixes. (A
silently ignored setting costs a researcher a run; a refused one costs a second.)

Each owner declares its conditions as `Rule`s (this module: `train`, `data`,
`distill`, `init_from`, `model`; `jaxtrain.writers`: the trackers' options;
`jaxtrain.optim.unread_fields`: the optimizer and its schedule,
and the mechanism: `check_rules` applies them, `reset_rules` puts unread fields back
to their defaults where a tool, not the user, switched the condition, e.g. a sweep
trial of another optimizer than the experiment's; `jaxtrain.study.grid`: the study).
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Sequence

import ml_collections

from jaxtrain import writers
from jaxtrain.optim.unread_fields import Rule, check_rules, get


def _when(field: str, test: Callable[[Any], bool], wording: str) -> tuple:
  """(reads, why) for 'read when `test(section[field])`'."""
  return (lambda s: test(get(s, field)),
          lambda s: f"{field}={get(s, field)!r} {wording}")


def _rules(fields: Sequence[str], reads_why: tuple, fix: str,
           only_given: bool = False) -> list[Rule]:
  return [Rule(f, *reads_why, fix, only_given) for f in fields]


# config.train, config.data and config.distill (paths from the config's root).
RUN_RULES: tuple[Rule, ...] = (
    *_rules(["train.num_steps"], _when(
        "train.num_epochs", lambda v: not v, "> 0 sets the run length instead"),
            "add --config.train.num_epochs=0 to train for train.num_steps steps"),
    *_rules(["train.max_consecutive_skips"], _when(
        "train.on_nonfinite", lambda v: v == "skip", "halts at the first "
        "non-finite step"), "set train.on_nonfinite=skip"),
    *_rules(["train.ema_warmup_power"], _when(
        "train.ema_decay", lambda v: bool(v), "keeps no EMA"),
            "set train.ema_decay > 0"),
    Rule("train.ema_warmup_gamma",
         lambda s: bool(get(s, "train.ema_decay") and get(s, "train.ema_warmup_power")),
         lambda s: ("train.ema_decay=0 keeps no EMA" if not get(s, "train.ema_decay")
                    else "train.ema_warmup_power=0 keeps the EMA decay constant"),
         "set train.ema_decay > 0 and train.ema_warmup_power > 0"),
    *_rules([f"train.early_stopping.{f}" for f in
             ("mode", "patience", "min_delta", "restore_best")],
            _when("train.early_stopping.metric", lambda v: bool(v),
                  "turns early stopping off"),
            "name a metric in train.early_stopping.metric"),
    *_rules([f"data.synthetic.{f}" for f in
             ("image_shape", "num_classes", "num_examples")],
            _when("data.source", lambda v: v == "synthetic", "is not synthetic"),
            "set data.source=synthetic", only_given=True),
    *_rules(["data.data_dir"], _when(
        "data.source", lambda v: v in ("tfds", "image_folder", "hf"),
        "reads no files"), "set data.source=tfds, image_folder or hf"),
    *_rules(["data.image_key", "data.label_key"], _when(
        "data.source", lambda v: v in ("tfds", "hf"), "has no named features"),
            "set data.source=tfds or hf"),
    # A recipe names its teacher's model; the command line gives its workdir.
    *(Rule(f, lambda s: bool(get(s, "distill.teacher_workdir")) or (
        get(s, "loss.name") == "distillation"),
           lambda s: "loss.name is not distillation and distill.teacher_workdir "
           "names no teacher", "set loss.name=distillation and "
           "distill.teacher_workdir")
      for f in ("distill.teacher_step", "distill.teacher_model")),
    *_rules(["init_from.step", "init_from.ema"], _when(
        "init_from.workdir", lambda v: bool(v), "names no run to start from"),
            "name the run in init_from.workdir"),
    *_rules(["init_from.name_map"], _when(
        "init_from.file", lambda v: bool(v), "names no weights file"),
            "name the weights file in init_from.file"),
    *(Rule(f, lambda s: bool(get(s, "init_from.workdir") or get(s, "init_from.file")),
           lambda s: "init_from.workdir and init_from.file are '': nothing is "
           "loaded", "name a run in init_from.workdir or a weights file in "
           "init_from.file")
      for f in ("init_from.reinit", "init_from.strict", "init_from.model_state")),
)


def model_rules(model_cls: type) -> list[Rule]:
  """A model's options that another option turns off (`UNREAD_UNLESS` on its class:
  ``{option: (controlling option, values that read it)}``)."""
  table = getattr(model_cls, "UNREAD_UNLESS", {})
  return [Rule(option, lambda s, c=control, ok=tuple(ok): get(s, c) in ok,
               lambda s, c=control: f"model.{c}={get(s, c)!r} turns it off",
               f"set model.{control} to " + " or ".join(map(repr, ok)))
          for option, (control, ok) in table.items()]


def check_run(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
              given: Collection[str] = ()) -> None:
  """`check_rules` over train, data, distill and logging (plain values: no JAX
  imported).

  Args:
    config: a full experiment config.
    defaults: `base_config()`.
    given: full dotted paths set on the command line.
  """
  check_rules(config, defaults, (*RUN_RULES, *writers.RULES), "", given)


def check_model_options(config: ml_collections.ConfigDict,
                        given: Collection[str] = ()) -> None:
  """`check_rules` over the model's options (its class's `UNREAD_UNLESS`), with
  the model's own defaults (reads the model registry: imports JAX)."""
  from jaxtrain import models  # pylint: disable=g-import-not-at-top
  name = config.model.name
  defaults = models.model_kwargs(name)
  options = {**defaults, **config.model}  # the model reads its defaults too
  check_rules(options, defaults, model_rules(models.registry.model_class(name)),
              "model.", {g[len("model."):] for g in given if g.startswith("model.")})
