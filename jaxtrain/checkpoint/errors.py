"""The errors a checkpoint raises: a mismatch (user error), a failed write, damage."""
from __future__ import annotations

from jaxtrain.errors import ConfigError


class CheckpointMismatchError(ConfigError):
  """The workdir's checkpoint was written for a different model or shape."""


class CheckpointWriteError(RuntimeError):
  """A save failed (disk full, permissions, storage outage); older steps intact."""


class CheckpointCorruptError(RuntimeError):
  """A step's contents do not match the checksums recorded when it was saved."""
