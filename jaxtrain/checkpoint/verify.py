"""Checksum verification shared by every restore (train state, best, teacher).

Each save records per-piece hashes (`jaxtrain.checksums`); a restore reads them back
with the state and compares what it read.
"""
from __future__ import annotations

from typing import Any

from etils import epath

from jaxtrain import checksums
from jaxtrain.checkpoint.errors import CheckpointCorruptError


def has_checksums(directory: str, step: int) -> bool:
  """Whether `step` in the Orbax `directory` recorded checksums when saved."""
  return (epath.Path(directory) / str(step) / "checksums").exists()


def check_checksums(tree: Any, data: Any, records: Any) -> checksums.Verdict:
  """Checks a restored `tree` (and data item) against a step's records.

  Raises:
    CheckpointCorruptError: a piece differs from what was saved.
  """
  verdict = checksums.verify(tree, data, records)
  if not verdict.ok:
    shown = ", ".join(verdict.mismatched[:3])
    more = len(verdict.mismatched) - 3
    raise CheckpointCorruptError(
        f"contents differ from the checksums recorded at the save: {shown}"
        + (f" and {more} more" if more > 0 else ""))
  return verdict
