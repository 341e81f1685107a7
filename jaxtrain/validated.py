"""Remembers which config sections passed validation, so each is checked once.

`config.validate` (the CLI or a library entry) checks a whole config; `runner.build`
and `sources.get_source` used to check it again. A section passed validation is
marked with a digest of its values; a later layer skips the check while the
section still holds those values, and checks again once anything changed (a
sweep's edited copy, a test's mutated config): never a stale pass.
"""

from typing import Any

import ml_collections

_MARK = "_jaxtrain_validated"


def _digest(section: ml_collections.ConfigDict) -> str:
  return repr(section.to_dict())


def mark(section: ml_collections.ConfigDict) -> None:
  """Records that `section`, as it is now, passed validation."""
  # object.__setattr__: ConfigDict's own __setattr__ would add a config field.
  object.__setattr__(section, _MARK, _digest(section))


def is_marked(section: Any) -> bool:
  """True when `section` passed validation and has not changed since."""
  mark_ = getattr(section, _MARK, None) if isinstance(
      section, ml_collections.ConfigDict) else None
  return mark_ is not None and mark_ == _digest(section)
