"""Trackers: every row reaches W&B (offline) and MLflow (file store), read back
through each library's own client code; a resumed run continues the same run."""
import json
import math
import os
import time

import pytest

import tracker_records
from jaxtrain import trackers

ROWS = [(0, {"train/loss": 2.5, "train/learning_rate": 0.1}),
        (10, {"train/loss": 1.25, "eval/accuracy": 0.5}),
        (20, {"train/loss": 0.625, "eval/accuracy": 0.75})]
CONFIG = {"seed": 0, "optimizer": {"name": "lars", "learning_rate": 0.1,
                                   "schedule": {"name": "cosine"}}}


# ----- MLflow -------------------------------------------------------------------

def _mlflow_history(uri, run_id):
  tracking = pytest.importorskip("mlflow.tracking")
  keys = {k for _, row in ROWS for k in row}
  return (tracker_records.mlflow_rows(uri, run_id, keys),
          tracking.MlflowClient(tracking_uri=uri).get_run(run_id))


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
  got = tracker_records.wandb_rows(logs, run_id)
  want = {(s, k, v) for s, row in ROWS for k, v in row.items()}
  assert {(s, k) for s, k, _ in got} == {(s, k) for s, k, _ in want}
  for s, k, v in want:
    (value,) = [g for gs, gk, g in got if (gs, gk) == (s, k)]
    assert math.isclose(value, v)
  runs = tracker_records.wandb_runs(logs)
  assert len(runs) == 2 and {r.run_id for r in runs} == {run_id}
  assert {r.run_group for r in runs} == {"sweep-1"}


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


# ----- The `logging` section ----------------------------------------------------

def _logging_error(**fields):
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  for path, value in fields.items():
    section, _, leaf = path.rpartition("__")
    node = c.logging
    for part in filter(None, section.split("__")):
      node = node[part]
    node[leaf] = value
  with pytest.raises(trackers.ConfigError) as e:
    config_lib.validate(c)
  return str(e.value)


def test_metrics_jsonl_cannot_be_turned_off():
  message = _logging_error(writers=("tensorboard", "wandb"))
  assert message.startswith("config.logging.writers=('tensorboard', 'wandb'): ")
  assert "keep 'jsonl' in logging.writers" in message


@pytest.mark.parametrize("writers, says", [
    (("jsonl", "comet"), "config.logging.writers='comet': not a known choice"),
    (("jsonl", "jsonl"), "name each writer once")])
def test_bad_writer_lists_are_refused(writers, says):
  assert says in _logging_error(writers=writers)


def test_a_tracker_option_without_its_tracker_is_refused():
  message = _logging_error(wandb__project="mine")
  assert message.startswith("config.logging.wandb.project='mine': ")
  assert "has no 'wandb'" in message and "add 'wandb' to logging.writers" in message


def test_a_bad_wandb_mode_is_refused():
  message = _logging_error(writers=("jsonl", "wandb"), wandb__mode="disabled")
  assert message.startswith("config.logging.wandb.mode='disabled': not a known")


def test_a_missing_tracker_package_is_refused_at_validation(monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "mlflow" else real(name, *a))
  message = _logging_error(writers=("jsonl", "mlflow"))
  assert "pip install 'jaxtrain[mlflow]'" in message


def test_mlflow_without_a_tracking_uri_is_refused(monkeypatch):
  pytest.importorskip("mlflow")
  monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
  message = _logging_error(writers=("jsonl", "mlflow"))
  assert message.startswith("config.logging.mlflow.tracking_uri='': ")
  assert "MLFLOW_TRACKING_URI" in message


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns"])
def test_an_mlflow_3_file_store_without_its_opt_in_is_refused(monkeypatch, uri):
  pytest.importorskip("mlflow")
  from jaxtrain import writers  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(writers, "_mlflow_major", lambda: 3)
  monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
  message = _logging_error(writers=("jsonl", "mlflow"), mlflow__tracking_uri=uri)
  assert message.startswith(f"config.logging.mlflow.tracking_uri={uri!r}: ")
  assert "MLFLOW_ALLOW_FILE_STORE=true" in message
  monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.logging.writers, c.logging.mlflow.tracking_uri = ("jsonl", "mlflow"), uri
  config_lib.validate(c)  # accepted with the opt-in
  c.logging.mlflow.tracking_uri = "http://127.0.0.1:5000"
  monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
  config_lib.validate(c)  # a server needs none
