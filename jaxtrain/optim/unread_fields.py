"""Config fields read only under a condition: refused when set while it is off.

`config.optimizer` holds the fields of every optimizer and `config.optimizer.schedule`
those of every schedule; each optimizer and schedule reads its own (the tables below,
from `build._optimizer` and `schedule_config._decay_part`). A field the chosen
optimizer or schedule does not read must keep its default: `sign_decay="linear"` with
`name="momentum"` is a `ConfigError` naming both fields and the fix, not silently
ignored. The mechanism (`Rule`, `check`, `reset`) serves the rest of the config too
(`jaxtrain.unread_fields`); it lives here because `jaxtrain.optim` stands alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Collection, Iterable

import ml_collections

from jaxtrain.errors import ConfigError
from jaxtrain.optim import plugins
from jaxtrain.optim.defaults import OPTIMIZERS

@dataclasses.dataclass(frozen=True)
class Rule:
  """`field` is read only when `reads(section)`; `why(section)` says why it is not.

  Attributes:
    field: dotted path inside the section the rule is applied to.
    reads: section -> whether the run reads `field`.
    why: section -> what turns it off, e.g. "train.num_epochs=30.0 > 0 sets the
      run length".
    fix: how to make it count instead, e.g. "add --config.train.num_epochs=0".
    only_given: refuse only a value given on the command line: an experiment file
      may prepare the field for a documented switch (`data.synthetic.*` describe
      the stand-in for `--config.data.source=synthetic`).
    off: values besides the default that say "not used" (`study.eval_every_epochs
      = 0` beside `study.eval_every > 0`), accepted even when given.
  """
  field: str
  reads: Callable[[Any], bool]
  why: Callable[[Any], str]
  fix: str
  only_given: bool = False
  off: tuple[Any, ...] = ()


def get(section: Any, path: str, default: Any = None) -> Any:
  """The value at dotted `path` in nested ConfigDicts/dicts, or `default`."""
  node = section
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return default
    node = node[part]
  return node


def _same(a: Any, b: Any) -> bool:
  """Config equality that treats tuples and lists alike (JSON round trips)."""
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, bool) or isinstance(b, bool):
    return a is b
  if hasattr(a, "keys") and hasattr(b, "keys"):
    return set(a.keys()) == set(b.keys()) and all(_same(a[k], b[k]) for k in a.keys())
  return a == b


def _plain(value: Any) -> Any:
  """A section as a dict (a ConfigDict's repr spans lines)."""
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def unread_rules(section: Any, rules: Iterable[Rule]) -> list[Rule]:
  """The rules whose field the run would not read."""
  return [r for r in rules if not r.reads(section)]


def check_rules(section: Any, defaults: Any, rules: Iterable[Rule], prefix: str = "",
                given: Collection[str] = ()) -> None:
  """Refuses an unread field that is off its default or was given explicitly.

  Args:
    section: the config section the rules' fields are relative to.
    defaults: the same section at its defaults (`base_config()` etc.).
    rules: the section's conditions.
    prefix: the section's path in the config, e.g. ``"optimizer."``.
    given: fields (relative to the section) set on the command line.

  Raises:
    ConfigError: naming the first such field, what turns it off and the fixes.
  """
  for rule in unread_rules(section, rules):
    missing = object()
    value = get(section, rule.field, missing)
    if value is missing:
      continue
    default = get(defaults, rule.field, missing)
    if any(_same(value, v) for v in rule.off):
      continue
    changed = default is missing or not _same(value, default)
    if rule.field in given or (changed and not rule.only_given):
      value, default = _plain(value), _plain(default)  # one line, not YAML
      shown = "" if default is missing else f" (default {default!r})"
      off = "".join(f", set it to {v!r}" for v in rule.off)
      raise ConfigError(prefix + rule.field, value,
                        f"not used: {rule.why(section)}; remove it{shown}{off} or "
                        f"{rule.fix}")


def reset_rules(section: ml_collections.ConfigDict, defaults: Any,
                rules: Iterable[Rule], keep: Collection[str] = ()) -> list[str]:
  """Puts unread fields back to their defaults, except those in `keep`.

  Returns:
    The fields reset (those that were off their defaults).
  """
  changed = []
  for rule in unread_rules(section, rules):
    if rule.field in keep:
      continue
    *parents, leaf = rule.field.split(".")
    node = get(section, ".".join(parents)) if parents else section
    if node is None or leaf not in node:
      continue
    default = get(defaults, rule.field)
    if not _same(node[leaf], default):
      node[leaf] = default
      changed.append(rule.field)
  return changed


_ADAM = ("adam", "adamw", "lamb")
# optimizer field -> the optimizers that read it (build._optimizer / _direction).
READ_BY: dict[str, tuple[str, ...]] = {
    "momentum": ("momentum", "nesterov", "lars", "rmsprop", "addsign", "powersign"),
    "nesterov": ("momentum", "lars", "rmsprop"),  # name "nesterov" implies it
    "b1": _ADAM, "b2": _ADAM,
    "eps": (*_ADAM, "rmsprop", "adagrad", "lars"),
    "rmsprop_decay": ("rmsprop",), "centered": ("rmsprop",),
    "adagrad_initial_accumulator": ("adagrad",),
    "trust_coefficient": ("lars",),
    "alpha": ("addsign",), "base": ("powersign",),
    "sign_decay": ("addsign", "powersign"),
    "mu_dtype": ("momentum", "nesterov", "adam", "adamw", "lars", "rmsprop",
                 "addsign", "powersign"),
}
# schedule field -> the schedules that read it (schedule_config._decay_part).
SCHEDULE_READ_BY: dict[str, tuple[str, ...]] = {
    "end_value": ("cosine", "warmup_cosine", "linear", "warmup_linear", "polynomial",
                  "warmup_polynomial", "exponential", "step", "sgdr",
                  "mlperf_polynomial"),
    "power": ("polynomial", "warmup_polynomial", "mlperf_polynomial"),
    "decay_rate": ("exponential", "step", "inverse_time"),
    "decay_steps": ("exponential", "step", "inverse_time", "linear_cosine",
                    "noisy_linear_cosine", "sgdr"),
    "staircase": ("exponential", "inverse_time"),  # "step" is the staircase one
    "boundaries": ("piecewise",), "scales": ("piecewise",),
    "pct_start": ("one_cycle", "linear_one_cycle"),
    "div_factor": ("one_cycle", "linear_one_cycle"),
    "final_div_factor": ("one_cycle", "linear_one_cycle"),
    "cycle_mult": ("sgdr",),
    "num_periods": ("linear_cosine", "noisy_linear_cosine"),
    "alpha": ("linear_cosine", "noisy_linear_cosine"),
    "beta": ("linear_cosine", "noisy_linear_cosine"),
    "initial_variance": ("noisy_linear_cosine",),
    "variance_decay": ("noisy_linear_cosine",),
    "seed": ("noisy_linear_cosine",),
}
_OWN_WARMUP = ("one_cycle", "linear_one_cycle", "sgdr", "mlperf_polynomial")


def _read_by(field: str, control: str, readers: tuple[str, ...]) -> Rule:
  return Rule(field, lambda s: get(s, control) in readers,
              lambda s: f"optimizer.{control}={get(s, control)!r} does not read it"
              + _plugin_note(s, control),
              f"set optimizer.{control} to one that reads it ({', '.join(readers)})")


def _is_plugin(s: Any) -> bool:
  """A plug-in optimizer name (`jaxtrain.optim.plugins`): not built in."""
  name = get(s, "name")
  return isinstance(name, str) and name not in OPTIMIZERS


def _plugin_note(s: Any, control: str) -> str:
  if control != "name" or not plugins.is_plugin(get(s, "name")):
    return ""
  return " (a plug-in reads its own options from optimizer.kwargs: pass it there)"


def _has_momentum_stage(s: Any) -> bool:
  return get(s, "name") != "rmsprop" or bool(get(s, "momentum"))


def _sign_decay_on(s: Any) -> bool:
  return get(s, "name") in READ_BY["sign_decay"] and get(s, "sign_decay") != "none"


def _wd_on(s: Any) -> bool:
  return bool(get(s, "weight_decay") or get(s, "l1") or get(s, "l2")
              or get(s, "name") == "lars")  # LARS: the mask excludes from trust ratio


def _warmup_on(s: Any) -> bool:
  sched = get(s, "schedule")
  return (get(sched, "name") not in _OWN_WARMUP
          and bool(get(sched, "warmup_steps") or get(sched, "warmup_fraction")))


def _no_momentum(s: Any) -> str:
  return f"optimizer.name='rmsprop' with momentum={get(s, 'momentum')} has no momentum"


def _no_sign_decay(s: Any) -> str:
  return (f"optimizer.sign_decay={get(s, 'sign_decay')!r} with "
          f"name={get(s, 'name')!r} decays nothing")


RULES: tuple[Rule, ...] = (
    *(_read_by(f, "name", readers) for f, readers in READ_BY.items()),
    Rule("kwargs", _is_plugin,
         lambda s: (f"optimizer.name={get(s, 'name')!r} is built in; "
                    "optimizer.kwargs feed a plug-in factory"),
         "set optimizer.name to a plug-in ('package.module:factory' or a name "
         "registered with @jaxtrain.optim.register)"),
    # rmsprop's nesterov and mu_dtype belong to its momentum stage.
    *(Rule(f, _has_momentum_stage, _no_momentum, "set optimizer.momentum > 0")
      for f in ("nesterov", "mu_dtype")),
    *(Rule(f, _sign_decay_on, _no_sign_decay,
           "set optimizer.sign_decay (with addsign or powersign)")
      for f in ("sign_decay_steps", "sign_decay_num_periods",
                "sign_decay_zero_after")),
    *(Rule(f, lambda s: get(s, "sign_decay") in ("cosine", "restart"),
           lambda s: f"optimizer.sign_decay={get(s, 'sign_decay')!r} has no periods",
           "use sign_decay 'cosine' or 'restart'")
      for f in ("sign_decay_num_periods", "sign_decay_zero_after")),
    Rule("base_batch_size", lambda s: get(s, "lr_scaling") != "none",
         lambda s: f"optimizer.lr_scaling={get(s, 'lr_scaling')!r} scales nothing",
         "set optimizer.lr_scaling to linear or sqrt"),
    Rule("weight_decay_mask", _wd_on,
         lambda s: ("optimizer.weight_decay, l1 and l2 are 0 and "
                    f"name={get(s, 'name')!r} is not lars"),
         "set optimizer.weight_decay, l1 or l2"),
    *(Rule(f, lambda s: bool(get(s, "grad_noise_eta")),
           lambda s: "optimizer.grad_noise_eta=0 adds no noise",
           "set optimizer.grad_noise_eta > 0")
      for f in ("grad_noise_gamma", "grad_noise_seed")),
    *(_read_by(f"schedule.{f}", "schedule.name", readers)
      for f, readers in SCHEDULE_READ_BY.items()),
    Rule("schedule.warmup_init_fraction", _warmup_on,
         lambda s: (f"optimizer.schedule.name={get(s, 'schedule.name')!r} with no "
                    "warmup steps has no linear warmup"),
         "set optimizer.schedule.warmup_steps (not with one_cycle, "
         "linear_one_cycle, sgdr or mlperf_polynomial)"),
)


def unread(section: Any) -> list[str]:
  """The fields of a full optimizer section its optimizer and schedule do not read."""
  return [r.field for r in unread_rules(section, RULES)]


def check(section: Any, defaults: ml_collections.ConfigDict,
          given: Collection[str] = ()) -> None:
  """Refuses optimizer/schedule fields that `section` would not read (see module).

  Args:
    section: a full optimizer section (missing fields already at their defaults).
    defaults: `default_config()`.
    given: fields (relative to the section) set on the command line.
  """
  name = get(section, "name")
  if name not in OPTIMIZERS and not plugins.is_plugin(name):
    plugins.resolve(name)  # an unknown name: said first, not its unread fields
  check_rules(section, defaults, RULES, "optimizer.", given)


def reset(section: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
          keep: Collection[str] = ()) -> list[str]:
  """Puts fields `section` would not read back to their defaults (except `keep`)."""
  return reset_rules(section, defaults, RULES, keep)
