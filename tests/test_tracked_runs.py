"""Runs with `logging.writers`: every writer receives the values of metrics.jsonl
(read back through TensorBoard's loader, W&B's protobuf records and MlflowClient),
a resumed run continues the same tracked runs, only process 0 tracks, and a
sweep's trials are grouped under the sweep's name."""
import json
import math
import os
import re

import pytest

import processes
import tracker_records
from jaxtrain import cli, runner
from jaxtrain.config import base_config
from jaxtrain.study import grid, results, sweep
from jaxtrain.trackers import RUN_IDS

ROOT = os.path.join(os.path.dirname(__file__), "..")
ALL = ("jsonl", "tensorboard", "wandb", "mlflow")


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
  """A local MLflow file store; W&B offline and quiet."""
  pytest.importorskip("wandb")
  pytest.importorskip("mlflow")
  # MLflow 3 keeps the file store behind this switch (a database or server needs none).
  monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
  monkeypatch.setenv("WANDB_SILENT", "true")
  return (tmp_path / "mlruns").as_uri()


def _config(uri, writers=ALL):
  c = base_config()
  c.model.name = "mlp"
  c.train.batch_size, c.train.num_steps = 32, 20
  c.train.log_every, c.train.eval_every, c.checkpoint.every = 5, 10, 10
  c.logging.writers = writers
  if "wandb" in writers:
    c.logging.wandb.mode = "offline"
  if "mlflow" in writers:
    c.logging.mlflow.tracking_uri = uri
  return c


def _assert_same_values(got, want, rel=0.0):
  assert {(s, k) for s, k, _ in got} == {(s, k) for s, k, _ in want}
  by_key = {(s, k): v for s, k, v in got}
  for s, k, v in want:
    assert math.isclose(by_key[(s, k)], v, rel_tol=rel), (s, k, by_key[(s, k)], v)


def test_a_resumed_run_logs_every_value_to_each_writer_in_the_same_runs(
    tmp_path, mlflow_uri):
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  runner.train(_config(mlflow_uri), workdir, stop_at=10)
  with open(os.path.join(workdir, RUN_IDS)) as f:
    ids = json.load(f)
  runner.train(_config(mlflow_uri), workdir)  # resumes at step 10
  with open(os.path.join(workdir, RUN_IDS)) as f:
    assert json.load(f) == ids and set(ids) == {"wandb", "mlflow"}
  jsonl = tracker_records.jsonl_rows(workdir)
  assert {s for s, _, _ in jsonl} == {5, 10, 15, 20}
  assert {(20, "eval/accuracy"), (10, "eval/loss")} <= {(s, k) for s, k, _ in jsonl}
  # TensorBoard keeps float32 values.
  _assert_same_values(tracker_records.tensorboard_rows(os.path.join(workdir, "tb")),
                      jsonl, rel=1e-6)
  _assert_same_values(tracker_records.wandb_rows(workdir, ids["wandb"]), jsonl)
  runs = tracker_records.wandb_runs(workdir)
  assert len(runs) == 2 and {r.run_id for r in runs} == {ids["wandb"]}
  keys = {k for _, k, _ in jsonl}
  assert tracker_records.mlflow_rows(mlflow_uri, ids["mlflow"], keys) == jsonl
  client = MlflowClient(tracking_uri=mlflow_uri)
  (experiment,) = [e for e in client.search_experiments() if e.name == "jaxtrain"]
  (run,) = client.search_runs([experiment.experiment_id])
  assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
  assert run.data.params["model.name"] == "mlp"


def _readme_command():
  """The arguments of the README's "Experiment trackers" command."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read().split("## Experiment trackers", 1)[1]
  block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
  words = re.findall(r'(--[\w.]+)=("[^"]*"|\S+)', block)
  return block.split()[1], {k: v.strip('"') for k, v in words}


def test_the_readme_command_reaches_every_writer(tmp_path, mlflow_uri):
  command, flags = _readme_command()
  assert command == "train" and flags["--config"] == "experiments/digits_cnn.py"
  assert flags["--config.logging.mlflow.tracking_uri"] == "file:///tmp/mlruns"
  workdir = str(tmp_path / "run")
  flags.update({"--config": os.path.join(ROOT, flags["--config"]),
                "--workdir": workdir,
                "--config.logging.mlflow.tracking_uri": mlflow_uri})
  shrink = ["--config.train.num_epochs=0", "--config.train.num_steps=10",
            "--config.train.log_every=5", "--config.train.eval_every=10",
            "--config.model.name=mlp", "--config.optimizer.schedule.warmup_steps=2"]
  assert cli.main([command, *[f"{k}={v}" for k, v in flags.items()], *shrink]) == 0
  with open(os.path.join(workdir, RUN_IDS)) as f:
    ids = json.load(f)
  jsonl = tracker_records.jsonl_rows(workdir)
  assert {s for s, _, _ in jsonl} == {5, 10}
  _assert_same_values(tracker_records.tensorboard_rows(os.path.join(workdir, "tb")),
                      jsonl, rel=1e-6)
  _assert_same_values(tracker_records.wandb_rows(workdir, ids["wandb"]), jsonl)
  assert tracker_records.mlflow_rows(
      mlflow_uri, ids["mlflow"], {k for _, k, _ in jsonl}) == jsonl


def test_without_tensorboard_no_event_files_are_written(tmp_path):
  c = _config("", writers=("jsonl",))
  c.train.num_steps = 5
  workdir = str(tmp_path / "run")
  runner.train(c, workdir)
  assert not os.path.exists(os.path.join(workdir, "tb"))
  assert {s for s, _, _ in tracker_records.jsonl_rows(workdir)} == {5}


def test_two_processes_track_from_process_0_only(tmp_path, mlflow_uri):
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  workdir, port = str(tmp_path / "run"), processes.free_port()
  cwds = [tmp_path / f"cwd{i}" for i in range(2)]
  for d in cwds:
    d.mkdir()
  flags = ["--config.model.name=mlp", "--config.train.num_epochs=0",
           "--config.train.num_steps=10", "--config.train.batch_size=32",
           "--config.train.log_every=5", "--config.train.eval_every=10",
           "--config.optimizer.schedule.warmup_steps=2",
           "--config.logging.writers=('jsonl', 'wandb', 'mlflow')",
           "--config.logging.wandb.mode=offline",
           f"--config.logging.mlflow.tracking_uri={mlflow_uri}"]
  cmd = processes.jaxtrain_cmd(
      "train", f"--config={os.path.join(ROOT, 'experiments', 'digits_cnn.py')}",
      f"--workdir={workdir}", *flags)
  env = dict(processes.cpu_env(4), MLFLOW_ALLOW_FILE_STORE="true",
             WANDB_SILENT="true")
  processes.run_together([cmd + processes.multihost_flags(port, 2, i)
                          for i in range(2)], env, timeout=600, cwds=cwds)
  jsonl = tracker_records.jsonl_rows(workdir)
  runs = tracker_records.wandb_runs(workdir)
  assert len(runs) == 1 and not any(os.listdir(d) for d in cwds)
  _assert_same_values(tracker_records.wandb_rows(workdir, runs[0].run_id), jsonl)
  client = MlflowClient(tracking_uri=mlflow_uri)
  (experiment,) = [e for e in client.search_experiments() if e.name == "jaxtrain"]
  (run,) = client.search_runs([experiment.experiment_id])
  keys = {k for _, k, _ in jsonl}
  assert tracker_records.mlflow_rows(mlflow_uri, run.info.run_id, keys) == jsonl


STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
STUDY_OVERRIDES = [
    "model.features=(8,)", "model.hidden=16", "study.batch_sizes=(16,)",
    "study.optimizers=('sgd',)", "study.optimizer_configs.sgd.learning_rate=0.8",
    "study.lr_grid=(0.5, 1.0)", "study.warmup_epochs=(0.0,)",
    "study.target=eval/accuracy >= 0.99", "study.max_steps=10", "study.eval_every=5",
    "study.eval_every_epochs=0"]


def test_a_sweep_groups_its_trials_under_its_name(tmp_path, mlflow_uri):
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  tracked = [*STUDY_OVERRIDES, "logging.writers=('jsonl', 'mlflow')",
             f"logging.mlflow.tracking_uri={mlflow_uri}",
             "logging.mlflow.experiment=study"]
  workdir = str(tmp_path / "lr-study")
  config = grid.load(STUDY, tracked)
  sweep.run_study(config, workdir, log=lambda line: None)
  _, records = results.load_results(workdir)
  # Where the metrics go is no part of a trial's identity.
  untracked = grid.make_trials(grid.load(STUDY, STUDY_OVERRIDES), 1437)
  assert [r["trial"] for r in records] == [t.id for t in untracked]
  client = MlflowClient(tracking_uri=mlflow_uri)
  runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
  assert sorted(r.info.run_name for r in runs) == sorted(r["trial"] for r in records)
  assert {r.data.tags["jaxtrain.group"] for r in runs} == {"lr-study"}
  for record in records:
    (run,) = [r for r in runs if r.info.run_name == record["trial"]]
    curve = {(row["step"], k, v) for row in record["curve"] for k, v in row.items()
             if k != "step"}
    assert len(curve) > 4
    assert tracker_records.mlflow_rows(
        mlflow_uri, run.info.run_id, {k for _, k, _ in curve}) == curve
