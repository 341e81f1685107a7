"""Metric writers: console progress, `metrics.jsonl`, TensorBoard event files and
experiment trackers (`jaxtrain.trackers`: Weights & Biases, MLflow).

Only process 0 writes. Values arrive as host floats, already divided by their counts.
`metrics.jsonl` has one object per logged step: `{"step": k, "train/loss": ...}`;
timing fields (TIMING_KEYS) are the only ones that differ between identical runs.

Workdirs on object stores (`gs://...`, through etils.epath and gcsfs) work too. An
object cannot be appended to, so there `metrics.jsonl` is kept in memory and the
whole object rewritten at most every `ObjectLog.min_interval` seconds (GCS allows
about one write per second to one object name) and at close; TensorBoard files go
through tensorboardX's own `gs://` writer (google-cloud-storage).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import time
from typing import Mapping, Sequence

import jax
import numpy as np
from etils import epath

from jaxtrain.trackers import Tracker

TIMING_KEYS = frozenset({"train/steps_per_sec", "train/examples_per_sec",
                         "train/data_wait_fraction", "train/tflops_per_device",
                         "train/mfu"})


def averages(sums: Mapping[str, np.ndarray], prefix: str) -> dict[str, float]:
  """Divides metric sums by their `count`: {"loss": s, "count": n} -> {"p/loss": s/n}."""
  count = float(sums["count"])
  out = {}
  for k, v in sums.items():
    if k == "count":
      continue
    # Counters (e.g. skipped steps) are totals, not per-example averages.
    out[f"{prefix}/{k}"] = float(v) if k == "skipped" else float(v) / max(count, 1.0)
  return out


def is_remote(workdir: str) -> bool:
  """True for object-store workdirs (gs://, s3://...), which have no local files."""
  return "://" in workdir


class ObjectLog:
  """A text log on an object store, appended to by rewriting the whole object.

  GCS objects are immutable (gcsfs opens "a" as "w"), and one object name takes
  about one write per second. Lines are buffered; `flush` uploads at once when the
  last upload is `min_interval` s old, else a timer uploads them when it is, so a
  line reaches the store within `min_interval` s even if the process is then
  killed. The object's earlier content is read at the first write, after the
  runner has cut the log back to the restored step.
  """
  min_interval = 2.0

  def __init__(self, path: epath.Path):
    self._path = path
    self._chunks: list[str] | None = None  # None: earlier content not read yet
    self._dirty = False
    self._last_upload = -float("inf")
    self._timer: threading.Timer | None = None
    self._lock = threading.Lock()

  def write(self, text: str) -> None:
    with self._lock:
      if self._chunks is None:
        self._chunks = [self._path.read_text()] if self._path.exists() else []
      self._chunks.append(text)
      self._dirty = True

  def flush(self) -> None:
    with self._lock:
      wait = self._last_upload + self.min_interval - time.monotonic()
      if wait <= 0:
        self._upload()
      elif self._timer is None and self._dirty:
        self._timer = threading.Timer(wait, self._upload_later)
        self._timer.daemon = True
        self._timer.start()

  def _upload(self) -> None:  # holds the lock
    if self._dirty:
      text = "".join(self._chunks)
      self._chunks = [text]
      self._path.write_text(text)
      self._dirty = False
    self._last_upload = time.monotonic()

  def _upload_later(self) -> None:
    with self._lock:
      self._timer = None
      try:
        self._upload()
      except Exception as e:  # pylint: disable=broad-except
        # The next flush or close retries; the training thread must not die here.
        sys.stderr.write(f"jaxtrain: warning: could not write {self._path}: {e}\n")

  def text(self) -> str:
    """Everything written so far, with the object's earlier content."""
    with self._lock:
      if self._chunks is None:
        return self._path.read_text() if self._path.exists() else ""
      return "".join(self._chunks)

  def close(self) -> None:
    """Uploads what is pending (raises on a storage error)."""
    with self._lock:
      if self._timer is not None:
        self._timer.cancel()
        self._timer = None
      self._upload()


class Writer:
  """Writes to console, JSONL, TensorBoard (unless `tensorboard` is False) and
  `trackers`; a no-op on processes other than 0 (whose `trackers` the caller does
  not create)."""

  def __init__(self, workdir: str, total_steps: int, stream=None,
               trackers: Sequence[Tracker] = (), tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._total = total_steps
    self._stream = stream or sys.stdout
    self._t0 = time.perf_counter()
    self._tb = None
    self._trackers = list(trackers)
    if not self._active:
      return
    # epath: the same code writes local paths and gs:// workdirs (with gcsfs).
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    self._path = root / "metrics.jsonl"
    if is_remote(workdir):
      self._jsonl = ObjectLog(root / "metrics.jsonl")
    else:
      self._jsonl = (root / "metrics.jsonl").open("a")
    if not tensorboard:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    # os.path.join keeps "gs://"; tensorboardX writes gs:// with google-cloud-storage.
    self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=10)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, step)
    for tracker in self._trackers:
      tracker.write(step, values)
    self._console(step, values)

  def _console(self, step: int, values: Mapping[str, float]) -> None:
    parts = [f"step {step}/{self._total}"]
    for key, label, fmt in (("train/loss", "loss", ".4f"),
                            ("train/accuracy", "acc", ".4f"),
                            ("eval/loss", "eval loss", ".4f"),
                            ("eval/accuracy", "eval acc", ".4f"),
                            ("eval/top5_accuracy", "eval top5", ".4f"),
                            ("train/learning_rate", "lr", ".4g"),
                            ("train/steps_per_sec", "steps/s", ".1f"),
                            ("train/examples_per_sec", "ex/s", ".0f"),
                            ("train/mfu", "MFU", ".1%")):
      if key in values:
        parts.append(f"{label} {values[key]:{fmt}}")
    rate = values.get("train/steps_per_sec")
    if rate and step < self._total:
      eta = datetime.timedelta(seconds=round((self._total - step) / rate))
      parts.append(f"ETA {eta}")
    self._stream.write(" | ".join(parts) + "\n")
    self._stream.flush()

  def rows(self) -> list[dict[str, float]]:
    """The rows of metrics.jsonl so far (a resumed run's earlier ones too)."""
    if not self._active:
      return []
    if isinstance(self._jsonl, ObjectLog):
      text = self._jsonl.text()
    else:
      self._jsonl.flush()
      text = self._path.read_text()
    rows = []
    for line in text.splitlines():
      try:
        rows.append(json.loads(line))
      except ValueError:  # a line cut short by a crash
        continue
    return rows

  def message(self, text: str) -> None:
    if self._active:
      self._stream.write(text + "\n")
      self._stream.flush()

  def close(self) -> None:
    """Closes the files; a storage error here is reported, not raised, so it never
    hides the error that ended the run (e.g. a failed checkpoint on a full disk).
    While such an error propagates, it goes to the log file only: it is the same
    fault, and the console keeps the one line about it."""
    if not self._active:
      return
    failing = sys.exc_info()[1] is not None  # called from a `finally`
    for f in (self._jsonl, self._tb, *self._trackers):
      if f is None:  # no TensorBoard
        continue
      try:
        f.close()
      except Exception as e:  # pylint: disable=broad-except  (OSError, GCS API errors)
        if failing:
          logging.getLogger("jaxtrain").warning("could not close a metrics file: %s", e)
        else:
          sys.stderr.write(f"jaxtrain: warning: could not close a metrics file: {e}\n")
