"""One run per workdir: a lease file that a run holds while it writes there.

Two trainers started on one workdir both ran to the end: `metrics.jsonl` held every
step twice and each overwrote the other's checkpoints. So `train`, `sweep` and
`lr-find` hold `WORKDIR/jaxtrain.lease` for the whole run (on many hosts process 0
holds it for the run). The file says who holds it: host, boot id, PID, start time,
the time of its last refresh, and a random token. It is

  * created atomically: `O_CREAT | O_EXCL` on a local or network file system; on
    `gs://` an object write with the precondition `ifGenerationMatch=0` (Cloud
    Storage's create-only-if-absent);
  * refreshed every `REFRESH_S` by a background thread, each time checking that
    the file still holds this run's token (on `gs://`: a write conditional on the
    generation this run last wrote);
  * removed when the run ends, whatever ends it (a SIGKILL leaves it behind).

A run that finds the lease held by another exits with status 2 naming the holder.
It takes the lease over, saying so, when the holder is gone: its PID is not running
on this host (same host name and boot id), or the lease was not refreshed for
`STALE_S`. The take-over is itself atomic (on `gs://` a delete conditional on the
stale lease's generation; locally the stale file is renamed to a unique name and
its token checked), so of two runs starting at once on a stale lease one wins. A
run whose lease was taken over (it stalled for longer than `STALE_S`) stops at once
without writing anything more, rather than write beside the new holder.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator

from jaxtrain.errors import ConfigError

NAME = "jaxtrain.lease"
REFRESH_S = 30.0
STALE_S = 300.0


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
      return f.read().strip()
  except OSError:
    return ""


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class _LocalFile:
  """The lease as a file; its version is the token it holds."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), NAME)

  def create(self, text: str) -> Any:
    """Writes the lease if there is none; returns its version, else None."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    return json.loads(text)["token"]

  def read(self) -> tuple[dict[str, Any], Any] | None:
    for _ in range(20):  # a lease just created may not be written yet
      try:
        with open(self.path, encoding="utf-8") as f:
          lease = json.load(f)
        return lease, lease.get("token")
      except FileNotFoundError:
        return None
      except ValueError:
        time.sleep(0.05)
    try:  # unreadable: a holder killed while writing it; as old as the file
      return {"refreshed_s": os.path.getmtime(self.path)}, None
    except FileNotFoundError:
      return None

  def replace(self, text: str, version: Any) -> Any:
    current = self.read()
    if current is None or current[1] != version:
      return None
    tmp = f"{self.path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, self.path)
    return version

  def delete(self, version: Any) -> None:
    current = self.read()
    if current is not None and current[1] == version:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.path)

  def take_over(self, version: Any) -> bool:
    """Removes the stale lease `version`, unless another run replaced it first."""
    moved = f"{self.path}.stale.{os.getpid()}.{os.urandom(4).hex()}"
    try:
      os.rename(self.path, moved)
    except FileNotFoundError:
      return True  # removed by whoever took it first; create() decides
    with open(moved, encoding="utf-8") as f:
      try:
        token = json.load(f).get("token")
      except ValueError:
        token = None
    if token != version:  # a fresh lease of another run: put it back
      with contextlib.suppress(FileExistsError):
        os.link(moved, self.path)
      os.unlink(moved)
      return False
    os.unlink(moved)
    return True


class _GcsObject:
  """The lease as a Cloud Storage object; its version is the object generation."""

  def __init__(self, workdir: str):
    from google.cloud import storage  # pylint: disable=g-import-not-at-top
    bucket, _, prefix = workdir[len("gs://"):].partition("/")
    self.path = f"{workdir.rstrip('/')}/{NAME}"
    self._blob_name = f"{prefix.strip('/')}/{NAME}".lstrip("/")
    self._bucket = storage.Client().bucket(bucket)

  def _errors(self):
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    return exceptions.PreconditionFailed, exceptions.NotFound

  def create(self, text: str) -> Any:
    blob = self._bucket.blob(self._blob_name)
    try:
      blob.upload_from_string(text, if_generation_match=0)
    except self._errors()[0]:
      return None
    return blob.generation

  def read(self) -> tuple[dict[str, Any], Any] | None:
    blob = self._bucket.get_blob(self._blob_name)
    if blob is None:
      return None
    try:
      text = blob.download_as_bytes(if_generation_match=blob.generation)
    except self._errors():
      return None if self._bucket.get_blob(self._blob_name) is None else self.read()
    try:
      return json.loads(text), blob.generation
    except ValueError:
      return {"refreshed_s": blob.updated.timestamp()}, blob.generation

  def replace(self, text: str, version: Any) -> Any:
    blob = self._bucket.blob(self._blob_name)
    try:
      blob.upload_from_string(text, if_generation_match=version)
    except self._errors():
      return None
    return blob.generation

  def delete(self, version: Any) -> None:
    with contextlib.suppress(*self._errors()):
      self._bucket.blob(self._blob_name).delete(if_generation_match=version)

  def take_over(self, version: Any) -> bool:
    try:
      self._bucket.blob(self._blob_name).delete(if_generation_match=version)
    except self._errors()[0]:
      return False
    except self._errors()[1]:
      pass  # deleted by whoever took it first; create() decides
    return True


def _store(workdir: str):
  if workdir.startswith("gs://"):
    return _GcsObject(workdir)
  if "://" in workdir:
    return None
  return _LocalFile(workdir)


def stale_reason(lease: dict[str, Any], now: float | None = None) -> str | None:
  """Why `lease` no longer holds its workdir, or None if it does."""
  now = time.time() if now is None else now
  same_host = (lease.get("host") == socket.gethostname()
               and lease.get("boot_id") == _boot_id())
  if same_host and "pid" in lease and not _running(int(lease["pid"])):
    return f"process {lease['pid']} is no longer running on this host"
  age = now - float(lease.get("refreshed_s", 0.0))
  if age > STALE_S:
    return f"its lease was last refreshed {age:.0f} s ago (stale after {STALE_S:.0f} s)"
  return None


def describe(lease: dict[str, Any]) -> str:
  who = (f"PID {lease['pid']} on host {lease['host']}" if "pid" in lease
         else "an unknown run (unreadable lease)")
  since = f", started {lease['started']}" if "started" in lease else ""
  return who + since


class Lease:
  """This run's hold on a workdir (see the module docstring)."""

  def __init__(self, workdir: str, report: Callable[[str], None] = print,
               on_lost: Callable[[str], None] | None = None):
    self.workdir = workdir
    self._store = _store(workdir)
    self._report = report
    self._on_lost = on_lost or _stop_now
    self._token = os.urandom(8).hex()
    self._version: Any = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    started = datetime.datetime.now(datetime.timezone.utc)
    self._fields = {"host": socket.gethostname(), "boot_id": _boot_id(),
                    "pid": os.getpid(), "started": started.isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv[:2]), "token": self._token}

  def _text(self) -> str:
    return json.dumps({**self._fields, "refreshed_s": time.time()})

  def acquire(self) -> None:
    """Takes the lease (over, if stale); starts refreshing it.

    Raises:
      ConfigError: another live run holds it.
    """
    if self._store is None:
      self._report(f"jaxtrain: warning: no workdir lease on {self.workdir} (only "
                   "local paths and gs:// have one); make sure no other run uses it")
      return
    for _ in range(5):
      self._version = self._store.create(self._text())
      if self._version is not None:
        break
      held = self._store.read()
      if held is None:
        continue
      lease, version = held
      why = stale_reason(lease)
      if why is None:
        raise ConfigError("--workdir", self.workdir, (
            f"another jaxtrain run holds it: {describe(lease)} (lease "
            f"{self._store.path}); wait for that run to end or stop it, or use "
            f"another --workdir. A lease not refreshed for {STALE_S:.0f} s is taken "
            "over"))
      if self._store.take_over(version):
        self._report(f"Took over the workdir lease of {describe(lease)}: {why}")
    else:
      raise ConfigError("--workdir", self.workdir,
                        f"could not take its lease {self._store.path}; try again")
    self._thread = threading.Thread(target=self._refresh, name="workdir-lease",
                                    daemon=True)
    self._thread.start()

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_S):
      try:
        version = self._store.replace(self._text(), self._version)
      except Exception:  # pylint: disable=broad-except
        continue  # storage hiccup: try again; a stale lease is only taken later
      if version is None and not self._stop.is_set():
        held = self._store.read()
        self._on_lost(describe(held[0]) if held else "nobody (it was removed)")
        return
      self._version = version

  def release(self) -> None:
    """Stops refreshing and removes the lease (if it is still this run's)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._store is not None and self._version is not None:
      with contextlib.suppress(Exception):
        self._store.delete(self._version)
      self._version = None


def _stop_now(holder: str) -> None:
  sys.stderr.write(f"jaxtrain: error: this run's workdir lease was taken over by "
                   f"{holder} after this run stopped refreshing it for over "
                   f"{STALE_S:.0f} s; stopping at once so that two runs never write "
                   "one workdir\n")
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


@contextlib.contextmanager
def held(workdir: str, report: Callable[[str], None] = print) -> Iterator[None]:
  """Holds the workdir's lease for the block (process 0; all processes agree).

  Raises:
    ConfigError: another live run holds it (on every process of the run).
  """
  import jax  # pylint: disable=g-import-not-at-top
  lease, error = None, None
  if jax.process_index() == 0:
    lease = Lease(workdir, report)
    try:
      lease.acquire()
    except ConfigError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    busy = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if busy and error is None:
      error = ConfigError("--workdir", workdir, "process 0 could not take its lease "
                          "(see process 0's output)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lease is not None:
      lease.release()
