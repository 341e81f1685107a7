"""JAX's persistent compilation cache, on for one run and off again after it.

A restarted run (preemption, a resumed sweep, `jaxtrain eval` after `train`)
compiles the same programs again; with the cache it reads the executables from
disk instead (MaxText's ``jax_cache_dir``; levanter#309). JAX's cache is one
process-wide setting (``jax_compilation_cache_dir``), so `scoped` sets it for the
duration of a run and puts back what was there before, resetting JAX's cache
object both ways (the public `reset_cache`), so that later programs of the same
process (another run, a test) neither read nor fill this run's cache. Programs
are cached whatever their compile time (``jax_persistent_cache_min_compile_time_secs``
= `min_compile_seconds`, 0 by default, where JAX's default 1 s would skip most
of a small model's programs).

`CacheUse` counts what the cache did through JAX's own monitoring events
(``/jax/compilation_cache/cache_hits``, ``cache_misses``,
``compile_time_saved_sec``): a restarted run's log says how much compile time the
cache saved. A failed read or write (full disk, damaged entry) costs only a
compilation: it is counted and logged to the run's log file, not the console.

`for_run` is what every compiling command uses: it reads
``train.compilation_cache_dir`` ("" = ``<workdir>/compile_cache``, a path as
given, "off" = none) and scopes the cache to the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from typing import Any, Callable, Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

from jaxtrain.config import COMPILATION_CACHE_OFF
from jaxtrain.errors import ConfigError

_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
_EVENTS = {"/jax/compilation_cache/cache_hits": "hits",
           "/jax/compilation_cache/cache_misses": "misses"}
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"
# JAX warns with this (then compiles) when an entry cannot be read or written.
_CACHE_FAILURE = "persistent compilation cache entry"
_logger = logging.getLogger("jaxtrain.compile_cache")


@dataclasses.dataclass
class CacheUse:
  """What the cache did during a `scoped` block.

  Attributes:
    directory: the cache's directory.
    hits: programs read from the cache.
    misses: programs compiled and written to it.
    seconds_saved: compile time the hits saved (JAX's own estimate: the stored
      compile time minus the time to read the entry).
  """
  directory: str
  hits: int = 0
  misses: int = 0
  seconds_saved: float = 0.0
  failures: int = 0

  def summary(self) -> str:
    """One line: hits of all programs, seconds saved, failed reads/writes."""
    total = self.hits + self.misses
    failed = (f"; {self.failures} cache reads/writes failed (details in the run's "
              "log)" if self.failures else "")
    return (f"Compilation cache {self.directory}: {self.hits} of {total} programs "
            f"read from it, {self.seconds_saved:.1f} s of compilation saved{failed}")

  def _show(self, shown: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that sends JAX's cache read/write failures (a full
    disk, a damaged entry: the program is compiled instead) to the log file
    (`jaxtrain.diagnostics`), counted, instead of the console."""
    def show(message, category, filename, lineno, file=None, line=None):
      if _CACHE_FAILURE in str(message):
        self.failures += 1
        _logger.warning("%s", message)
        return
      shown(message, category, filename, lineno, file, line)
    return show

  def _on_event(self, event: str, **kwargs: Any) -> None:
    del kwargs
    if event in _EVENTS:
      setattr(self, _EVENTS[event], getattr(self, _EVENTS[event]) + 1)

  def _on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
    del kwargs
    if event == _SAVED:
      self.seconds_saved += max(float(duration), 0.0)


@contextlib.contextmanager
def scoped(directory: str, min_compile_seconds: float = 0.0) -> Iterator[CacheUse]:
  """Caches this block's compilations in `directory` and counts the cache's use.

  Args:
    directory: where the executables go (local path or any path JAX's cache takes).
    min_compile_seconds: programs that compile faster are not cached.

  Yields:
    The `CacheUse`, updated as programs compile.
  """
  previous = {name: getattr(jax.config, name) for name in _OPTIONS}
  use = CacheUse(directory)
  compilation_cache.reset_cache()
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
  jax.monitoring.register_event_listener(use._on_event)  # pylint: disable=protected-access
  jax.monitoring.register_event_duration_secs_listener(use._on_duration)  # pylint: disable=protected-access
  try:
    with warnings.catch_warnings():  # puts showwarning back at the end
      warnings.showwarning = use._show(warnings.showwarning)  # pylint: disable=protected-access
      yield use
  finally:
    jax.monitoring.unregister_event_listener(use._on_event)  # pylint: disable=protected-access
    jax.monitoring.unregister_event_duration_listener(use._on_duration)  # pylint: disable=protected-access
    for name, value in previous.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def directory_for(setting: str, workdir: str) -> str | None:
  """The cache directory `train.compilation_cache_dir` = `setting` names for a run
  in `workdir`; None when off.

  "" puts it beside the checkpoints (``<workdir>/compile_cache``), also for an
  object-store workdir (JAX's cache writes through etils' epath, as Orbax does).
  """
  if setting == COMPILATION_CACHE_OFF:
    return None
  if setting:
    return setting
  return (f"{workdir.rstrip('/')}/compile_cache" if "://" in workdir
          else os.path.join(os.path.abspath(workdir), "compile_cache"))


def _check_writable(directory: str) -> None:
  """A local cache directory must be creatable: JAX only warns per program."""
  if "://" in directory:
    return
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise ConfigError("train.compilation_cache_dir", directory, f"cannot create "
                      f"it ({e.strerror}); name a writable directory or 'off'"
                      ) from None
  if not os.access(directory, os.W_OK):
    raise ConfigError("train.compilation_cache_dir", directory, "not writable; name "
                      "a writable directory or 'off'")


@contextlib.contextmanager
def for_run(setting: str, workdir: str) -> Iterator[CacheUse | None]:
  """`scoped` in the directory `setting` names (`directory_for`); yields None, and
  leaves JAX's own setting alone, when the setting is "off".

  Raises:
    ConfigError: the directory cannot be created or written.
  """
  directory = directory_for(setting, workdir)
  if directory is None:
    yield None
    return
  _check_writable(directory)
  with scoped(directory) as use:
    yield use
