"""User-facing errors: bad config or bad invocation.

A `ConfigError` names the field, the bad value and the fix. The CLI turns it into one
line on stderr and exit code 2, with no traceback; library users get a normal exception.
"""
from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
  """A config field or command-line value that cannot work.

  Attributes:
    field: dotted config path, e.g. ``"optimizer.learning_rate"``, a flag such
      as ``"--workdir"``, or an environment variable such as
      ``"SLURM_GPUS_ON_NODE"`` (upper case).
    value: the offending value.
  """

  def __init__(self, field: str, value: Any, fix: str,
               choices: Iterable[str] | None = None):
    self.field, self.value = field, value
    # Flags ("--workdir") and environment variables ("SLURM_NTASKS") are named as
    # typed; config fields by path.
    typed = field.startswith("--") or field.isupper()
    name = field if typed else f"config.{field}"
    msg = f"{name}={value!r}: {fix}"
    if choices is not None:
      msg += f" (valid choices: {', '.join(sorted(map(str, choices)))})"
    super().__init__(msg)
