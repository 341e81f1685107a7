"""asyncio's late "exception was never retrieved" reports of a damaged checkpoint's
reads stay off stderr once jaxtrain has reported the step; other asyncio errors
still show.

The orphaned futures are made the way Orbax leaves them: a real event loop, a future
whose exception is set and never retrieved, freed by the garbage collector.
"""
import asyncio
import gc
import logging

import pytest

from jaxtrain.checkpoint import orphaned_reads


def _orphan(error: BaseException) -> None:
  loop = asyncio.new_event_loop()
  try:
    future = loop.create_future()
    future.set_exception(error)
    del future
    gc.collect()  # Future.__del__ reports the unretrieved exception
  finally:
    loop.close()


@pytest.fixture
def asyncio_logger(caplog):
  logger = logging.getLogger("asyncio")
  logger.removeFilter(orphaned_reads._FILTER)  # as in a process with nothing set aside
  caplog.set_level(logging.ERROR, logger="asyncio")
  yield caplog
  logger.removeFilter(orphaned_reads._FILTER)


def _unretrieved(caplog):
  return [r for r in caplog.records
          if r.name == "asyncio" and r.getMessage().startswith(orphaned_reads.UNRETRIEVED)]


READ_ERROR = ValueError("OUT_OF_RANGE: Error reading local file "
                        "\"/w/checkpoints/20/state/ocdbt.process_0/d/1f\"")


def test_before_any_step_is_set_aside_asyncio_reports_show(asyncio_logger):
  _orphan(READ_ERROR)
  assert len(_unretrieved(asyncio_logger)) == 1


def test_after_a_set_aside_read_errors_are_dropped_and_others_still_show(
    asyncio_logger):
  dropped = orphaned_reads.ignore_after_set_aside().dropped
  orphaned_reads.ignore_after_set_aside()  # a second set-aside adds no second filter
  assert logging.getLogger("asyncio").filters.count(orphaned_reads._FILTER) == 1
  _orphan(READ_ERROR)
  _orphan(Exception("Encountered error while reading array index: (slice(0, 64, 1),)"))
  assert _unretrieved(asyncio_logger) == []
  assert orphaned_reads._FILTER.dropped == dropped + 2
  _orphan(RuntimeError("a bug in a callback"))
  shown = _unretrieved(asyncio_logger)
  assert len(shown) == 1 and "a bug in a callback" in str(shown[0].exc_info[1])
