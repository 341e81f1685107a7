"""Reading back what a run logged, through each writer's own format or client:
metrics.jsonl, TensorBoard event files, W&B offline transaction logs, MLflow."""
from __future__ import annotations

import glob
import json
import os
import struct
import time


def jsonl_rows(workdir):
  """{(step, key, value)} of WORKDIR/metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {(r["step"], k, v) for r in rows for k, v in r.items() if k != "step"}


def tensorboard_rows(logdir):
  """{(step, tag, value)} of every event file in `logdir`, read with TensorBoard's
  own `EventFileLoader` (values are float32 there)."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  rows = set()
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in event_file_loader.LegacyEventFileLoader(path).Load():
      for value in event.summary.value:
        rows.add((event.step, value.tag, value.simple_value))
  return rows


def wandb_records(path):
  """The records of a W&B transaction log (run-<id>.wandb), decoded with W&B's own
  protobuf `Record`. The file is a 7-byte header (":W&B", magic 0xBEE1, version 0)
  then LevelDB's log format: 32 KiB blocks of records, each with a 7-byte header
  (CRC-32C, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4); fragments join."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  pos, block, pending, out = 7, 32768, b"", []
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header: padding
      pos += block - pos % block
      continue
    length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      out.append(record)
      pending = b""
  return out


def wandb_logs(directory, run_id="*", timeout=60.0):
  """The offline transaction logs under DIRECTORY/wandb (of one run id), each
  complete. `wandb.finish()` returns before W&B's service process has written
  the log (seen: an empty file right after `finish`, all records 3 s later), so
  wait until each log ends with its `exit` record."""
  paths = sorted(glob.glob(
      f"{directory}/wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
  deadline = time.monotonic() + timeout
  for path in paths:
    while not _ends_with_exit(path):
      assert time.monotonic() < deadline, f"{path}: no exit record in {timeout} s"
      time.sleep(0.1)
  return paths


def _ends_with_exit(path):
  try:  # a log being written may end inside a record
    records = wandb_records(path)
  except Exception:  # pylint: disable=broad-except
    return False
  return bool(records) and records[-1].WhichOneof("record_type") == "exit"


def wandb_rows(directory, run_id):
  """{(step, key, value)} of every history record of run `run_id` (all its logs)."""
  rows = set()
  for path in wandb_logs(directory, run_id):
    for record in wandb_records(path):
      if record.WhichOneof("record_type") != "history":
        continue
      items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
               for i in record.history.item}
      step = items.pop("step")
      rows |= {(step, k, v) for k, v in items.items() if not k.startswith("_")}
  return rows


def wandb_runs(directory):
  """The `run` records (one per start or resume) of every log under DIRECTORY."""
  return [r.run for p in wandb_logs(directory) for r in wandb_records(p)
          if r.WhichOneof("record_type") == "run"]


def mlflow_rows(uri, run_id, keys):
  """{(step, key, value)} of run `run_id`'s metric histories, with MlflowClient."""
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  client = MlflowClient(tracking_uri=uri)
  return {(m.step, k, m.value) for k in keys
          for m in client.get_metric_history(run_id, k)}
