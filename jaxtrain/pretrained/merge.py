"""Starting weights into a fresh model: which variables load, which start anew.

`merge` takes a freshly initialized variables tree and the arrays a name map made
(`name_maps.Conversion`), keeps the fresh value of every variable whose path matches
``init_from.reinit`` (a regular expression, e.g. ``^params/head/`` to train a new
classifier head), and loads the rest. The `MergeReport` lists every variable by
outcome, for the log before the first step. With ``init_from.strict`` a variable
that neither loads nor is re-initialized on purpose, a source tensor of the wrong
shape, or a source name no rule knows is a ConfigError naming the first one.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

from jaxtrain.errors import ConfigError
from jaxtrain.pretrained import name_maps, variables


@dataclasses.dataclass
class MergeReport:
  """What `merge` did, variable by variable.

  Attributes:
    loaded: variables that now hold the source's values.
    reinitialized: variables kept fresh because `reinit` matched them.
    missing: variables the source did not fill (kept fresh, not asked for).
    mismatched: (source, target, source shape, target shape) left out.
    unexpected: source names no rule knows.
    dropped: (source, reason) known to have no counterpart.
  """
  loaded: list[str]
  reinitialized: list[str]
  missing: list[str]
  mismatched: list[tuple[str, str, tuple, tuple]]
  unexpected: list[str]
  dropped: list[tuple[str, str]]

  def lines(self, names: int = 5) -> list[str]:
    """The log's account: counts, then the first `names` variables of each kind
    that did not load."""
    out = [f"init_from: {len(self.loaded)} variables loaded, "
           f"{len(self.reinitialized)} re-initialized, {len(self.missing)} missing, "
           f"{len(self.mismatched)} of another shape, {len(self.unexpected)} "
           f"unexpected, {len(self.dropped)} dropped"]
    kinds = (("re-initialized", self.reinitialized), ("missing", self.missing),
             ("shape mismatch", [f"{s} {a} -> {t} {b}"
                                 for s, t, a, b in self.mismatched]),
             ("unexpected", self.unexpected))
    for kind, items in kinds:
      out += [f"  {kind}: {item}" for item in items[:names]]
      if len(items) > names:
        out.append(f"  ... and {len(items) - names} more {kind}")
    return out


def plan(targets: Iterable[str], conversion: name_maps.Conversion,
         reinit: str = "", strict: bool = False) -> MergeReport:
  """What `merge` will do, without any array: the report, checked when strict.

  Args:
    targets: every variable path of the model (``"params/head/kernel"``, ...).
    conversion: the source against the model (its `arrays` may be placeholders:
      only their paths are read).
    reinit: regular expression over variable paths to keep fresh ("" for none).
    strict: refuse anything but loaded or deliberately re-initialized variables.

  Raises:
    ConfigError: naming ``init_from.strict`` and the first problem, when strict.
  """
  pattern = re.compile(reinit) if reinit else None
  keep = lambda path: bool(pattern and pattern.search(path))  # noqa: E731
  # A variable the source has with another shape is a mismatch, not missing too.
  other_shape = {m[1] for m in conversion.mismatched}
  report = MergeReport(
      loaded=sorted(p for p in conversion.arrays if not keep(p)),
      reinitialized=sorted(p for p in targets if keep(p)),
      missing=sorted(p for p in conversion.missing
                     if not keep(p) and p not in other_shape),
      mismatched=[m for m in conversion.mismatched if not keep(m[1])],
      unexpected=list(conversion.unexpected), dropped=list(conversion.dropped))
  if strict:
    problems = ([f"{t} is not in the source" for t in report.missing]
                + [f"{s} has shape {a}, {t} needs {b}"
                   for s, t, a, b in report.mismatched]
                + [f"{s} matches no variable" for s in report.unexpected])
    if problems:
      raise ConfigError("init_from.strict", True, f"{problems[0]} ({len(problems)} "
                        "such); re-initialize those variables with init_from.reinit, "
                        "or set init_from.strict=False to load what fits")
  return report


def merge(fresh: Any, conversion: name_maps.Conversion, reinit: str = "",
          strict: bool = False) -> tuple[Any, MergeReport]:
  """`fresh` with the converted arrays loaded, except what `reinit` matches.

  Args:
    fresh: the model's freshly initialized variables (a Flax variables dict).
    conversion: `name_maps.convert` of the source against `fresh`'s shapes.
    reinit: regular expression over variable paths to keep fresh ("" for none).
    strict: refuse anything but loaded or deliberately re-initialized variables.

  Returns:
    (variables, report): a new variables dict of plain arrays, and the report.

  Raises:
    ConfigError: naming ``init_from.strict`` and the first problem, when strict.
  """
  report = plan(variables.shapes(fresh), conversion, reinit, strict)
  loaded = {p: conversion.arrays[p] for p in report.loaded}
  return variables.replace(fresh, loaded), report
