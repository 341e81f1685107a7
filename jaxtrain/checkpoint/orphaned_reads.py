"""Keeps asyncio's late reports of an unreadable checkpoint's reads off stderr.

Orbax reads the pieces of a checkpoint concurrently (`asyncio.gather` over
TensorStore reads). When the checkpoint is damaged, several reads fail: the first
failure is raised, and jaxtrain reports it once, naming the step it sets aside. The
sibling reads' futures are left with exceptions nobody retrieves, and asyncio logs
each ("Future exception was never retrieved", at ERROR) whenever the garbage
collector happens to free it: sometimes before jaxtrain's own one-line message,
sometimes after, sometimes not at all. Those lines repeat an error already reported,
in a traceback the user cannot act on.

`ignore_after_set_aside` installs, once per process and only after a step was found
unreadable, a filter on the `asyncio` logger that drops exactly those records whose
exception came from a failed read (`_READ_ERRORS`, the texts Orbax and TensorStore
give a read that fails). Any other asyncio error still reaches the log.
"""
from __future__ import annotations

import logging

UNRETRIEVED = ("Future exception was never retrieved",
               "Task exception was never retrieved")
# What a failed checkpoint read says (TensorStore status codes, Orbax's wrapper).
_READ_ERRORS = ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "FAILED_PRECONDITION",
                "Encountered error while reading", "TensorStore")


class _OrphanedReadFilter(logging.Filter):
  """Drops asyncio's unretrieved-exception records of failed checkpoint reads."""

  def __init__(self):
    super().__init__()
    self.dropped = 0

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if not message.startswith(UNRETRIEVED) or not record.exc_info:
      return True
    error = record.exc_info[1]
    if not any(text in f"{type(error).__name__}: {error}" for text in _READ_ERRORS):
      return True
    self.dropped += 1
    return False


_FILTER = _OrphanedReadFilter()


def ignore_after_set_aside() -> _OrphanedReadFilter:
  """Installs the filter on the `asyncio` logger (idempotent); returns it."""
  logger = logging.getLogger("asyncio")
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)
  return _FILTER
