"""Where library diagnostics go, and how a failed run ends promptly.

A run's console output is jaxtrain's own lines. The libraries under it report a
failure their own way: Orbax logs every failed background save with a full
traceback (absl logging), tensorboardX's writer thread dies with a traceback when
its file cannot be written, a file that fails to close at exit prints another.
On a full disk these came as ~30 lines before jaxtrain's one line saying what
happened and what to do. `capture(workdir)` sends them to a log file instead,
`WORKDIR/jaxtrain.log` (process i > 0 of a multi-host run: `jaxtrain.<i>.log`;
for a `gs://` workdir a local file in the temp directory, as logs are appended to
and objects cannot be). Writing the log never raises: on a full disk it may stay
empty.

A failed save can also leave library threads that never finish on their own: Orbax
threads waiting for a signal the failed save never sends (its timeout is 300 s),
or for a barrier with a peer process that died. Python waits for such threads at
exit, so the process hung after printing its error. `exit_promptly(code)` gives
them a few seconds, then ends the process with `code` (after flushing the console
and the log), so a failed run stops within seconds.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time

# Loggers whose records go to the log file only (Orbax logs through absl).
LIBRARY_LOGGERS = ("absl",)

_LOG_PATH: str | None = None
_HANDLER: logging.Handler | None = None
_logger = logging.getLogger("jaxtrain.diagnostics")


class _QuietFileHandler(logging.FileHandler):
  """A file handler that drops records it cannot write (e.g. on a full disk)."""

  def handleError(self, record: logging.LogRecord) -> None:
    del record  # Printing "--- Logging error ---" to stderr is what we avoid.

  def emit(self, record: logging.LogRecord) -> None:
    # FileHandler opens a delayed file outside its own error handling: an
    # unwritable workdir would raise from whatever logged the record.
    try:
      super().emit(record)
    except OSError:
      pass


def log_path(workdir: str, process_index: int = 0, stem: str = "jaxtrain") -> str:
  """The log file of this process for `workdir` (local, also for gs://); `stem`
  names it (`jaxtrain eval` keeps its own, `eval.log`, beside the run's)."""
  name = f"{stem}.log" if process_index == 0 else f"{stem}.{process_index}.log"
  if "://" in workdir:
    return os.path.join(tempfile.gettempdir(), f"jaxtrain-{os.getpid()}-{name}")
  return os.path.join(os.path.abspath(workdir), name)


def capture(workdir: str, process_index: int = 0, stem: str = "jaxtrain") -> str:
  """Sends library logs and background-thread tracebacks to the run's log file.

  Args:
    workdir: the run's --workdir (the file is created at the first record).
    process_index: this process's index in a multi-host run.
    stem: the file's name without ".log" (see `log_path`).

  Returns:
    The log file's path.
  """
  global _LOG_PATH, _HANDLER
  _LOG_PATH = log_path(workdir, process_index, stem)
  handler = _QuietFileHandler(_LOG_PATH, delay=True)
  handler.setLevel(logging.WARNING)
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
  for name in (*LIBRARY_LOGGERS, "jaxtrain"):
    lib = logging.getLogger(name)
    if _HANDLER is not None:  # a second run in this process: its own file
      lib.removeHandler(_HANDLER)
    lib.addHandler(handler)
    if lib.level == logging.NOTSET or lib.level > logging.WARNING:
      lib.setLevel(logging.WARNING)
    lib.propagate = False
  if _HANDLER is not None:
    _HANDLER.close()
  _HANDLER = handler
  threading.excepthook = _log_thread_exception
  sys.unraisablehook = _log_unraisable
  return _LOG_PATH


def captured_to() -> str | None:
  """The log file `capture` set up, if it holds anything; else None."""
  if _LOG_PATH and os.path.exists(_LOG_PATH) and os.path.getsize(_LOG_PATH):
    return _LOG_PATH
  return None


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
  name = args.thread.name if args.thread is not None else "?"
  _logger.error("thread %s failed", name,
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _log_unraisable(unraisable) -> None:
  exc = unraisable.exc_value
  _logger.error("%s: %r", unraisable.err_msg or "exception ignored",
                unraisable.object,
                exc_info=(type(exc), exc, unraisable.exc_traceback) if exc else None)


def _lingering() -> list[threading.Thread]:
  main = threading.main_thread()
  return [t for t in threading.enumerate()
          if t is not main and not t.daemon and t.is_alive()]


def exit_promptly(code: int, grace_s: float = 5.0) -> int:
  """Returns `code`, or ends the process with it if threads would keep it alive.

  Args:
    code: the exit status.
    grace_s: how long non-daemon threads may take to finish.

  Returns:
    `code`, when no thread is left running (the caller exits normally).
  """
  deadline = time.monotonic() + grace_s
  for t in _lingering():
    t.join(max(0.0, deadline - time.monotonic()))
  stuck = _lingering()
  if not stuck:
    return code
  _logger.warning("exiting with status %d; threads still running: %s", code,
                  ", ".join(t.name for t in stuck))
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  logging.shutdown()
  os._exit(code)  # pylint: disable=protected-access
