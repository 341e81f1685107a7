"""Trackers: every row reaches W&B (offline) and MLflow (file store), read back
through each library's own client code; a resumed run continues the same run."""
import glob
import json
import math
import os
import struct
import time

import pytest

from jaxtrain import trackers

ROWS = [(0, {"train/loss": 2.5, "train/learning_rate": 0.1}),
        (10, {"train/loss": 1.25, "eval/accuracy": 0.5}),
        (20, {"train/loss": 0.625, "eval/accuracy": 0.75})]
CONFIG = {"seed": 0, "optimizer": {"name": "lars", "learning_rate": 0.1,
                                   "schedule": {"name": "cosine"}}}


# ----- MLflow -------------------------------------------------------------------

def _mlflow_history(uri, run_id):
  tracking = pytest.importorskip("mlflow.tracking")
  client = tracking.MlflowClient(tracking_uri=uri)
  keys = {k for _, row in ROWS for k in row}
  return {(m.step, k, m.value) for k in keys
          for m in client.get_metric_history(run_id, k)}, client.get_run(run_id)


def test_mlflow_receives_every_row_and_a_resume_continues_the_run(tmp_path,
                                                                 monkeypatch):
  pytest.importorskip("mlflow")
  # MLflow 3 keeps the file store in maintenance mode behind this switch; a
  # database or server URI needs none.
  monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
  uri = (tmp_path / "mlruns").as_uri()
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  first = trackers.MlflowTracker(workdir, CONFIG, tracking_uri=uri, group="sweep-1")
  for step, row in ROWS[:2]:
    first.write(step, row)
  first.close()
  second = trackers.MlflowTracker(workdir, CONFIG, tracking_uri=uri, group="sweep-1")
  assert second.run_id == first.run_id
  second.write(*ROWS[2])
  second.close()
  got, run = _mlflow_history(uri, first.run_id)
  assert got == {(s, k, v) for s, row in ROWS for k, v in row.items()}
  assert run.data.params["optimizer.schedule.name"] == "cosine"
  assert run.data.tags["jaxtrain.group"] == "sweep-1"
  assert run.info.status == "FINISHED"
  with open(os.path.join(workdir, trackers.RUN_IDS)) as f:
    assert json.load(f) == {"mlflow": first.run_id}


# ----- Weights & Biases -----------------------------------------------------------

def _wandb_records(path):
  """The records of a W&B transaction log (run-<id>.wandb), decoded with W&B's own
  protobuf `Record`. The file is a 7-byte header (":W&B", magic 0xBEE1, version 0)
  then LevelDB's log format: 32 KiB blocks of records, each with a 7-byte header
  (CRC-32C, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4); fragments join."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  data = open(path, "rb").read()
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


def _wandb_rows(directory, run_id):
  rows = set()
  for path in sorted(glob.glob(f"{directory}/wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
    for record in _wandb_records(path):
      if record.WhichOneof("record_type") != "history":
        continue
      items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
               for i in record.history.item}
      step = items.pop("step")
      rows |= {(step, k, v) for k, v in items.items() if not k.startswith("_")}
  return rows


def test_wandb_offline_receives_every_row_and_a_resume_continues_the_run(
    tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
  os.makedirs(workdir)
  os.makedirs(logs)
  first = trackers.WandbTracker(workdir, CONFIG, project="p", group="sweep-1",
                                directory=logs)
  for step, row in ROWS[:2]:
    first.write(step, row)
  first.close()
  with open(os.path.join(workdir, trackers.RUN_IDS)) as f:
    run_id = json.load(f)["wandb"]
  # W&B names an offline run's folder offline-run-<YYYYmmdd_HHMMSS>-<id>: a resume
  # within the same second shares the first one's folder and file name, which the
  # reader above does not split into two logs. A real restart takes longer than a
  # second; here, wait for the next one.
  time.sleep(1.0 - time.time() % 1.0 + 0.01)
  second = trackers.WandbTracker(workdir, CONFIG, project="p", group="sweep-1",
                                 directory=logs)
  second.write(*ROWS[2])
  second.close()
  got = _wandb_rows(logs, run_id)
  want = {(s, k, v) for s, row in ROWS for k, v in row.items()}
  assert {(s, k) for s, k, _ in got} == {(s, k) for s, k, _ in want}
  for s, k, v in want:
    (value,) = [g for gs, gk, g in got if (gs, gk) == (s, k)]
    assert math.isclose(value, v)
  runs = [r for p in glob.glob(f"{logs}/wandb/offline-run-*/run-*.wandb")
          for r in _wandb_records(p) if r.WhichOneof("record_type") == "run"]
  assert len(runs) == 2 and {r.run.run_id for r in runs} == {run_id}
  assert {r.run.run_group for r in runs} == {"sweep-1"}


def test_a_missing_package_names_the_writer_and_the_extra(monkeypatch, tmp_path):
  import builtins  # pylint: disable=g-import-not-at-top
  real = builtins.__import__

  def no_wandb(name, *args, **kwargs):
    if name == "wandb" or name.startswith("wandb."):
      raise ImportError(name)
    return real(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_wandb)
  monkeypatch.setattr("importlib.import_module", lambda n: no_wandb(n))
  with pytest.raises(trackers.ConfigError, match=r"jaxtrain\[wandb\]"):
    trackers.WandbTracker(str(tmp_path), {})


def test_flatten_joins_nested_keys_with_dots():
  assert trackers.flatten(CONFIG) == {
      "seed": 0, "optimizer.name": "lars", "optimizer.learning_rate": 0.1,
      "optimizer.schedule.name": "cosine"}


def test_the_metrics_writer_hands_every_jsonl_row_to_its_trackers(tmp_path,
                                                                  monkeypatch):
  pytest.importorskip("mlflow")
  monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
  from jaxtrain import metrics  # pylint: disable=g-import-not-at-top
  uri, workdir = (tmp_path / "mlruns").as_uri(), str(tmp_path / "run")
  os.makedirs(workdir)
  tracker = trackers.MlflowTracker(workdir, CONFIG, tracking_uri=uri)
  writer = metrics.Writer(workdir, total_steps=20, stream=open(os.devnull, "w"),
                          trackers=[tracker])
  for step, row in ROWS:
    writer.write(step, row)
  writer.close()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  jsonl = {(r["step"], k, v) for r in rows for k, v in r.items() if k != "step"}
  got, run = _mlflow_history(uri, tracker.run_id)
  assert got == jsonl and len(got) == 6
  assert run.info.status == "FINISHED"  # the writer closed it
