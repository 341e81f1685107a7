"""A process of a multi-host run that dies is named by the others, who stop cleanly.

When one process of a multi-host run is killed, the others learn it from JAX only
after its heartbeat timeout (100 s), and then JAX's client ends each of them with a
C++ fatal-error stack trace; or sooner, as an exception from a collective that
jaxtrain reported as a storage problem ("could not write the checkpoint ... Gloo
AllGather failed: Connection reset by peer ... Free space or fix the storage").
JAX 0.10 offers no way to handle the heartbeat failure in Python (its
`missed_heartbeat_callback` cannot be called from Python: the status argument has
no converter), so the run watches its processes itself.

`watch()` (called by every process right after `jax.distributed.initialize`) keeps
one TCP connection from each process to process 0, next to the coordinator. The
kernel closes a process's connections the moment it dies, whatever kills it. A
process that ends on purpose first says so (`farewell()`: the command finished, or
stopped with an error all processes share), so a connection closing without that
means the process died: process 0 names it to the others, and every survivor
prints one line (which process, and the newest complete checkpoint, which is
intact: a save cut short is never committed) and exits with status 1 at once,
instead of waiting in a collective or a barrier for JAX's timeout. A process that
hangs without dying is still left to JAX's heartbeat.
"""
from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from typing import Callable

_WATCH: "_Watch | None" = None
GRACE_S = 3.0  # how long a failing main thread waits for the watcher's verdict


class _Watch:
  """The connections between this process and the others (process 0: all)."""

  def __init__(self, index: int, count: int, describe_checkpoint: Callable[[], str]):
    self.index, self.count = index, count
    self.describe_checkpoint = describe_checkpoint
    self.peers: dict[int, socket.socket] = {}
    self.finished: set[int] = set()
    self.leaving = False
    self.lost = threading.Event()
    self.lock = threading.Lock()

  def send(self, sock: socket.socket, text: str) -> None:
    try:
      sock.sendall(text.encode())
    except OSError:
      pass  # that peer is gone too

  def farewell(self) -> None:
    with self.lock:
      self.leaving = True
      for sock in self.peers.values():
        self.send(sock, "bye\n")

  def on_lost(self, who: int) -> None:
    with self.lock:
      if self.leaving:
        return
      self.leaving = True
      self.lost.set()  # the main thread now waits for this line, not its own
      for i, sock in self.peers.items():
        if i != who:
          self.send(sock, f"lost {who}\n")
    name = "process 0 (the coordinator)" if who == 0 else f"process {who}"
    sys.stdout.flush()
    sys.stderr.write(
        f"jaxtrain: training stopped: {name} of {self.count} stopped (its connection "
        "closed without finishing the run: it exited or was killed); "
        f"{self.describe_checkpoint()}. Restart every process with the same command "
        "to resume.\n")
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access

  def read(self, who: int, sock: socket.socket) -> bool:
    """Handles what `who` sent; False once its connection is done."""
    try:
      data = sock.recv(4096)
    except OSError:
      data = b""
    for line in data.decode(errors="replace").splitlines():
      if line == "bye":
        self.finished.add(who)
      elif line.startswith("lost "):
        self.on_lost(int(line.split()[1]))
    if not data:
      if who not in self.finished:
        self.on_lost(who)
      return False
    return True

  def run(self) -> None:
    open_ = dict(self.peers)
    while open_:
      ready, _, _ = select.select(list(open_.values()), [], [])
      for who, sock in list(open_.items()):
        if sock in ready and not self.read(who, sock):
          del open_[who]


def _connect(index: int, count: int, coordinator_host: str) -> dict[int, socket.socket]:
  """Process 0 accepts one connection per other process; they connect to it."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  server = socket.create_server(("", 0)) if index == 0 else None
  port = int(multihost_utils.broadcast_one_to_all(
      np.int32(server.getsockname()[1] if server else 0)))
  if server is None:
    sock = socket.create_connection((coordinator_host, port), timeout=60)
    sock.settimeout(None)
    sock.sendall(f"{index}\n".encode())
    return {0: sock}
  peers = {}
  server.settimeout(60)
  with server:
    while len(peers) < count - 1:
      sock, _ = server.accept()
      sock.settimeout(None)
      peers[int(sock.makefile().readline())] = sock
  return peers


def watch(describe_checkpoint: Callable[[], str]) -> None:
  """Starts watching the other processes (call on every process, after init).

  Args:
    describe_checkpoint: says which checkpoint is intact, for the message.
  """
  global _WATCH
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() < 2 or _WATCH is not None:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  address = getattr(distributed.global_state, "coordinator_address", None) or ""
  host = address.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
  _WATCH = _Watch(jax.process_index(), jax.process_count(), describe_checkpoint)
  _WATCH.peers = _connect(_WATCH.index, _WATCH.count, host)
  threading.Thread(target=_WATCH.run, name="peer-watch", daemon=True).start()


def farewell() -> None:
  """Tells the other processes this one ends on purpose (not a crash)."""
  if _WATCH is not None:
    _WATCH.farewell()


def wait_for_verdict(timeout_s: float = GRACE_S) -> None:
  """Gives the watcher time to name a dead peer before this process reports an
  error of its own (a collective failing because a peer died); returns if none."""
  if _WATCH is not None and _WATCH.lost.wait(timeout_s):
    time.sleep(60)  # the watcher is printing its line and ending the process
