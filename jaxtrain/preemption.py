"""Signals: finish the current step, checkpoint, exit; a second Ctrl-C stops at once.

One process: SIGTERM and SIGINT (Ctrl-C) set a flag that the loop reads after each
step. The `jaxtrain` command installs the handlers first thing, so a signal that
arrives while the run is still starting up is kept and honoured at the first step.
Many processes: every process must stop at the same step, so SIGTERM goes through
JAX's coordination service (`multihost_utils.reached_preemption_sync_point`, the
mechanism Cloud TPU preemption notices use): all processes agree on the next safe
step; a Ctrl-C there is passed on as a SIGTERM to the same process.

The first signal is acknowledged at once ("Ctrl-C: finishing step 120 and saving a
checkpoint; Ctrl-C again to stop without saving"), by process 0 only. Under the
`jaxtrain` command (`immediate=True`) a helper thread does this, woken through
`signal.set_wakeup_fd` by the C-level handler, so the answer comes even while the
main thread is inside a long compile or device wait, where Python runs no handler;
a second Ctrl-C then ends the process at once, exit code 130, without saving: the
newest complete checkpoint stays, as after a `kill -9`. A library caller's watcher
answers from the Python-level handler and raises KeyboardInterrupt on a second Ctrl-C.

Exit codes of `jaxtrain train` and `jaxtrain sweep` (see `exit_code`): 0 when the
command did all its work; 128 + the signal number when a signal stopped it first
(SIGTERM 143, SIGINT 130), whether it saved (train: a checkpoint; sweep: the
finished trials) or was stopped again without saving. It is the code a shell gives
a process ended by that signal, so `jaxtrain train ... && next` does not go on with
an unfinished run, and a scheduler (a Kubernetes Job, SLURM) sees a run to restart,
not a finished one. Commands with nothing to save (compile, optim-summary, report,
lr-find) end at the first signal, with the same code.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable

_INSTALLED: "PreemptionWatcher | None" = None
SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


def exit_code(signum: int) -> int:
  """The exit code of a command stopped by signal `signum`: 128 + its number."""
  return 128 + int(signum)


class PreemptionWatcher:
  """Tells the loop when to checkpoint and stop because the job is being stopped.

  Attributes set by the code that runs under it: `graceful` (False: the first
  signal ends the process, nothing to save), `announce` (False on processes other
  than 0), `multiprocess`, `describe_stop` (what the first signal leads to, for the
  acknowledgement) and `stopped_at` (the step at which the run stopped on the
  signal; the `jaxtrain` command then exits with `exit_code`).
  """

  def __init__(self, immediate: bool = False, graceful: bool = True):
    self._signal: int | None = None
    self._seen: list[int] = []  # signals answered, in order
    self._previous: dict[int, Any] = {}
    self._wakeup: tuple[int, int, int] | None = None  # (read fd, write fd, previous)
    self.graceful = graceful
    self.announce = True
    self.multiprocess = False
    self.describe_stop: Callable[[], str] = (
        lambda: "stopping after the first step and saving a checkpoint")
    self.stopped_at: int | None = None
    self._forwarded = False  # a SIGTERM sent to ourselves for a multi-process Ctrl-C
    # Python delivers signals to the main thread only; elsewhere, leave them be.
    if threading.current_thread() is not threading.main_thread():
      return
    for sig in SIGNALS:
      self._previous[sig] = signal.signal(sig, self._on_signal)
    if immediate:
      self._start_reader()

  def _start_reader(self) -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    self._wakeup = (read_fd, write_fd, previous)
    threading.Thread(target=self._read, args=(read_fd,), daemon=True,
                     name="jaxtrain-signals").start()

  def _read(self, fd: int) -> None:
    """The helper thread: one byte per signal, written by Python's C handler.

    Ends at end of file (`close` closes the write end), closing the read end itself
    so that no other file can take its number while it still reads.
    """
    try:
      while data := os.read(fd, 64):
        for signum in data:
          if signum in SIGNALS:
            self._answer(signum, hard_exit=True)
    finally:
      os.close(fd)

  def _on_signal(self, signum, frame) -> None:
    del frame
    if self._signal is None:
      self._signal = signum
    if self._wakeup is None:  # no helper thread: answer here
      self._answer(signum, hard_exit=False)

  def _answer(self, signum: int, hard_exit: bool) -> None:
    """Acknowledges a signal; on a second Ctrl-C (or any, if not graceful) stops."""
    if signum == signal.SIGTERM and self._forwarded:
      self._forwarded = False  # our own, below
      return
    self._seen.append(signum)
    name = _NAMES[signum]
    if not self.graceful:
      self._say(f"jaxtrain: stopped by {name}", hard_exit)
      self._stop_now(signum, hard_exit)
    elif len(self._seen) == 1:
      if self.multiprocess and signum == signal.SIGINT:
        self._forwarded = True  # the coordinated stop of all processes
        os.kill(os.getpid(), signal.SIGTERM)
      self._say(f"jaxtrain: {name}: {self.describe_stop()}; Ctrl-C again to stop "
                "without saving", hard_exit)
    elif signum == signal.SIGINT:
      self._say("jaxtrain: Ctrl-C again: stopping now, without saving; re-running "
                "the same command resumes from the newest complete checkpoint",
                hard_exit)
      self._stop_now(signum, hard_exit)
    else:
      self._say(f"jaxtrain: {name} again: still finishing and saving; Ctrl-C stops "
                "at once, without saving", hard_exit)

  def _say(self, text: str, from_thread: bool) -> None:
    if not self.announce:
      return
    if from_thread:  # one write(2): no lock the main thread may hold
      os.write(2, (text + "\n").encode())
    else:
      sys.stderr.write(text + "\n")
      sys.stderr.flush()

  @staticmethod
  def _stop_now(signum: int, hard_exit: bool) -> None:
    if not hard_exit:
      raise KeyboardInterrupt
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # pylint: disable=broad-except  (closed, or in use)
        pass
    os._exit(exit_code(signum))  # pylint: disable=protected-access

  def should_stop(self, step: int) -> bool:
    """True once a stop was requested; on many hosts, at the agreed step."""
    # Imported here: the CLI installs the handlers before JAX is loaded.
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signal is not None

  @property
  def signum(self) -> int:
    """The first signal received (SIGTERM if none: a coordinated stop on a pod)."""
    return self._signal or signal.SIGTERM

  @property
  def reason(self) -> str:
    return signal.Signals(self.signum).name

  def close(self) -> None:
    """Puts back the handlers that were there before."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    if self._wakeup is not None:
      _, write_fd, previous = self._wakeup
      signal.set_wakeup_fd(previous)
      os.close(write_fd)  # the helper thread reads end of file and stops
      self._wakeup = None


def install(immediate: bool = True) -> PreemptionWatcher:
  """Installs the process-wide watcher (once) and returns it (the `jaxtrain` command)."""
  global _INSTALLED
  if _INSTALLED is None:
    _INSTALLED = PreemptionWatcher(immediate=immediate)
  return _INSTALLED


def installed() -> PreemptionWatcher | None:
  return _INSTALLED


def uninstall() -> None:
  """Closes the process-wide watcher, if any (the end of `jaxtrain.cli.main`).

  A process that goes on after `main` returns (a test, a notebook, a script that
  calls it) gets its own signal handlers and wakeup fd back: otherwise the
  watcher's helper thread would still answer every later Ctrl-C, and end the
  process with exit code 130 at the second.
  """
  global _INSTALLED
  if _INSTALLED is not None:
    _INSTALLED.close()
    _INSTALLED = None
