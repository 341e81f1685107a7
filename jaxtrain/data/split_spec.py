"""TFDS's split syntax for sources that are not TFDS: ``train``, ``train[:90%]``,
``train[10:-5]``, ``train[90%:]+val``.

As `tfds.core.ReadInstruction` (www.tensorflow.org/datasets/splits): each part is a
split name with an optional Python-style slice of example indices or of percents
(a percent boundary is ``round(percent * n / 100)``, TFDS's default "closest"
rounding); parts joined by ``+`` are read one after the other.
"""
from __future__ import annotations

import dataclasses
import re

from jaxtrain.errors import ConfigError

_BOUND = r"-?\d+(?:\.\d+)?%|-?\d+"  # a percent (decimals allowed) or an index
_PART = re.compile(rf"^(?P<name>[\w-]+)(\[(?P<start>{_BOUND})?:(?P<stop>{_BOUND})?\])?$")
SYNTAX = "use a split name, a slice of it (train[:90%], train[10:-5]) or parts joined "


@dataclasses.dataclass(frozen=True)
class Part:
  """One split and its slice; `rows(n)` are the example indices it selects."""
  name: str
  start: str | None = None
  stop: str | None = None

  def rows(self, n: int, field: str = "data.train_split") -> range:
    """The indices of this part in a split of `n` examples.

    Raises:
      ConfigError: naming `field` for an index bound beyond the split (TFDS too).
    """
    bounds = [_bound(b, n) for b in (self.start, self.stop)]
    for b in bounds:
      if b is not None and abs(b) > n:
        raise ConfigError(field, f"{self.name}[{self.start or ''}:{self.stop or ''}]",
                          f"split '{self.name}' has {n} examples; slice within them "
                          "or use percents")
    return range(n)[bounds[0]:bounds[1]]


def _bound(text: str | None, n: int) -> int | None:
  if text is None:
    return None
  if text.endswith("%"):
    return int(round(float(text[:-1]) * n / 100.0))
  return int(text)


def parse(spec: str, field: str) -> list[Part]:
  """The parts of `spec`; a ConfigError naming `field` when it is not TFDS syntax."""
  parts = []
  for text in re.split(r"\s*\+\s*", str(spec).strip()):
    m = _PART.match(text)
    if not m:
      raise ConfigError(field, spec, SYNTAX + "by + (train+val)")
    parts.append(Part(m["name"], m["start"], m["stop"]))
  return parts


def check_names(parts: list[Part], splits: list[str], field: str, spec: str,
                where: str) -> None:
  """Every part names one of `splits` (those found in `where`)."""
  for part in parts:
    if part.name not in splits:
      raise ConfigError(field, spec, f"no split '{part.name}' in {where}",
                        choices=splits)
