"""A resumed run is the run that was asked for: the saved config against the new one.

Every checkpoint holds the config that wrote it (`checkpoint/`). Before anything
compiles, `check` compares it field by field with the config of the run about to
resume. Fields that change the result (model, loss, data, optimizer and schedule,
batch size, seed, run length, precision, EMA, stages, ...) must be the same: a change
is refused with one line listing each field old -> new and the ways out (a new
`--workdir`, `checkpoint.restore=never`, or `--allow_config_change=FIELD,...`).
Fields that only change how the run is observed or laid out (`FREE`: log and eval
frequency, eval batch size, workers, mesh and sharding rules, checkpoint cadence,
...) and `init_from` (read by a fresh start only) may change; they are listed in the
log. An allowed change that moves the learning rate (a longer run rebuilds the
schedule for the new length) is logged with the LR at the resume step under the old
and the new config.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import ml_collections

from jaxtrain.errors import ConfigError
from jaxtrain.settings import Settings

# Fields (or whole sections) whose change leaves the trained weights alone:
# observation (logging, evaluation, profiling), layout (mesh, sharding; checkpoints
# restore onto any layout), input plumbing and checkpoint cadence, the
# compilation cache (it stores the same programs), and the non-finite policy (a
# fault policy: with finite steps it never acts). `init_from` too: only a fresh
# start reads it; a resumed run continues its own weights.
FREE = ("train.log_every", "train.eval_every", "train.eval_batch_size",
        "train.profile_steps", "train.steps_per_dispatch", "train.peak_tflops",
        "train.on_nonfinite", "train.max_consecutive_skips",
        "train.compilation_cache_dir", "data.num_workers", "data.prefetch",
        "data.data_dir", "mesh", "sharding", "checkpoint", "logging",
        "init_from")
# Changing these changes the learning rate the resumed steps use.
_LR_FIELDS = ("optimizer", "train.num_steps", "train.num_epochs", "train.batch_size",
              "train.stages", "data.aug_repeats")

Change = tuple[str, Any, Any]  # (field, saved value, new value)


def flatten(config: Any) -> dict[str, Any]:
  """{dotted field: value} over nested dicts/ConfigDicts, lists as tuples, with the
  defaults of `base_config()`, of the model and of the loss filled in, so a config
  saved before a field existed (or with a default left unset) compares equal."""
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  flat = _flat(config_lib.base_config().to_dict())
  flat.update(_section_defaults(as_dict))
  flat.update(_flat(as_dict))
  return flat


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in node.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = _tuples(value)
  return out


def _tuples(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def _section_defaults(config: dict[str, Any]) -> dict[str, Any]:
  """The model's and the loss's option defaults (not in base_config)."""
  import dataclasses as dc  # pylint: disable=g-import-not-at-top
  from jaxtrain import losses, models  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    for key, value in models.model_kwargs(config["model"]["name"]).items():
      if key not in ("num_classes", "dtype", "param_dtype"):
        out[f"model.{key}"] = _tuples(value)
  except (ConfigError, KeyError):
    pass
  loss = (config.get("loss") or {}).get("name", losses.DEFAULT)
  cls = losses.LOSSES.get(loss)
  if cls is not None:
    for f in dc.fields(cls):
      if f.default is not dc.MISSING:
        out[f"loss.{f.name}"] = _tuples(f.default)
  return out


def is_free(field: str, config: Any) -> bool:
  """Whether changing `field` leaves the result alone (`FREE`); the eval cadence
  is not free when early stopping watches the evaluations."""
  if field == "train.eval_every" and config.train.early_stopping.metric:
    return False
  return any(field == f or field.startswith(f + ".") for f in FREE)


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  if isinstance(a, bool) or isinstance(b, bool):
    return a is b
  return a == b


def changes(saved: Any, config: Settings) -> list[Change]:
  """Every field whose value differs between the saved and the new config."""
  old, new = flatten(saved), flatten(config)
  missing = "(unset)"
  return [(k, old.get(k, missing), new.get(k, missing))
          for k in sorted(set(old) | set(new))
          if not _same(old.get(k, missing), new.get(k, missing))]


def check_allowed(allow: Sequence[str], config: Settings) -> None:
  """`--allow_config_change` names fields or sections of the config."""
  fields = flatten(config)
  for name in allow:
    if not any(f == name or f.startswith(name + ".") for f in fields):
      raise ConfigError("--allow_config_change", ",".join(allow),
                        f"'{name}' is not a config field or section (e.g. "
                        "train.num_steps, optimizer.learning_rate, optimizer)")


def _allowed(field: str, allow: Sequence[str]) -> bool:
  return any(field == a or field.startswith(a + ".") for a in allow)


def _show(changes_: Sequence[Change]) -> str:
  return ", ".join(f"{f} {o!r} -> {n!r}" for f, o, n in changes_)


@dataclasses.dataclass
class Resume:
  """What `check` found: the saved step, the changes it allowed and the free ones.

  `lr_line` (set by the runner, see `lr_note`) says how the schedule continues.
  """
  step: int
  allowed: list[Change]
  free: list[Change]
  lr_line: str | None = None

  def describe(self) -> str:
    """The changed fields as 'field old -> new, ...' (for other error messages)."""
    return _show(self.allowed + self.free)

  def log_lines(self) -> list[str]:
    """What the run log says about the changes."""
    lines = []
    if self.allowed:
      lines.append("Continuing with config changes allowed by --allow_config_change: "
                   + _show(self.allowed) + (f"; {self.lr_line}" if self.lr_line
                                            else ""))
    if self.free:
      lines.append("Config changes that leave the result alone: " + _show(self.free))
    return lines


def check(saved: Any, step: int, config: Settings,
          allow: Sequence[str], where: str) -> Resume:
  """Refuses a resume whose config changed a field that changes the result.

  Args:
    saved: the config saved with checkpoint `step` (a dict, as stored).
    step: that checkpoint's step.
    config: the config of the run about to resume from it.
    allow: fields or sections `--allow_config_change` lets change.
    where: the checkpoint directory, for the message.

  Returns:
    The `Resume`: allowed and free changes, for the log.

  Raises:
    ConfigError: one line naming every refused field old -> new and the ways out.
  """
  found = changes(saved, config)
  free = [c for c in found if is_free(c[0], config)]
  allowed = [c for c in found if not is_free(c[0], config) and _allowed(c[0], allow)]
  refused = [c for c in found if c not in free and c not in allowed]
  if refused:
    names = ",".join(c[0] for c in refused)
    raise ConfigError(
        "checkpoint.restore", config.checkpoint.restore,
        f"the checkpoint at step {step} in {where} was written with another config: "
        f"{_show(refused)}; resuming would continue that run with the new values. "
        "Use a new --workdir, or --config.checkpoint.restore=never to start over, or "
        f"--allow_config_change={names} to continue with them")
  return Resume(step, allowed, free)


def lr_note(resume: Resume, saved: Any,
            lr_at: Callable[[ml_collections.ConfigDict], Callable[[int], float]],
            new_lr: Callable[[int], float]) -> str | None:
  """How the schedule continues when allowed changes move the learning rate.

  Args:
    resume: from `check`.
    saved: the saved config (dict).
    lr_at: config -> its LR schedule (the runner builds it as for a run).
    new_lr: the new run's LR schedule.

  Returns:
    A line with both LRs at the resume step, or None when no LR field changed.
  """
  fields = [c[0] for c in resume.allowed]
  if not any(_allowed(f, _LR_FIELDS) for f in fields):
    return None
  step = resume.step
  try:
    old = float(lr_at(ml_collections.ConfigDict(saved))(step))
  except Exception:  # pylint: disable=broad-except
    return (f"the learning rate at step {step} is {float(new_lr(step)):.4g} under "
            "the new config (the saved config's schedule could not be rebuilt)")
  new = float(new_lr(step))
  if _same(old, new):
    return f"the learning rate at step {step} is {new:.4g} under both configs"
  return (f"the schedule is rebuilt for the new config: at step {step} the learning "
          f"rate jumps from {old:.4g} to {new:.4g}")


def check_workdir(exp: Any, workdir: str, allow: Sequence[str]) -> Resume | None:
  """`check` against the newest checkpoint in `workdir` (read-only, no compile).

  Args:
    exp: the run's `runner.Experiment`.
    workdir: the run's workdir.
    allow: `--allow_config_change` fields.

  Returns:
    The `Resume` (with `lr_line`), or None when nothing will be resumed.
  """
  from jaxtrain import checkpoint  # pylint: disable=g-import-not-at-top
  check_allowed(allow, exp.settings)
  if exp.settings.checkpoint.restore == "never":
    return None
  found = checkpoint.saved_config(workdir)
  if found is None:
    return None
  step, saved = found
  resume = check(saved, step, exp.settings, allow, checkpoint.checkpoint_dir(workdir))
  resume.lr_line = lr_note(resume, saved,
                           lambda c: _lr_schedule(c, len(exp.train_source)),
                           exp.lr_schedule)
  return resume


def _lr_schedule(config: Settings, train_size: int):
  """The LR schedule `config` trains with (a saved config: its own run length)."""
  from jaxtrain import optim, runner  # pylint: disable=g-import-not-at-top
  from jaxtrain.data import batch_plan  # pylint: disable=g-import-not-at-top
  plan = batch_plan.from_config(config.train.stages, config.train.batch_size,
                                config.data.aug_repeats)
  return optim.build(config.optimizer, runner.total_steps(config, plan, train_size),
                     config.train.batch_size)[1]
