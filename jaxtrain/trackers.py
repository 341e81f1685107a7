"""Experiment trackers: Weights & Biases and MLflow, beside metrics.jsonl and TensorBoard.

Each tracker receives every row the run writes to metrics.jsonl (`write(step,
values)`), from process 0 only (the caller's rule, as for the other writers). The
tracker's run id is kept in ``WORKDIR/trackers.json``, so a resumed run (same
workdir) continues the same tracked run instead of starting a new one; trials of a
sweep share a ``group``.

- `WandbTracker` (``pip install 'jaxtrain[wandb]'``): ``wandb.init(id=...,
  resume="allow")``. W&B keeps its own step counter, which must only grow; a
  resumed run re-logs the steps after its checkpoint, so jaxtrain's step is logged
  as the metric ``step`` and declared the x-axis of every other metric
  (``define_metric``) rather than passed as W&B's ``step=``. ``WANDB_MODE=offline``
  writes the run under ``dir`` for a later ``wandb sync``.
- `MlflowTracker` (``pip install 'jaxtrain[mlflow]'``): through `MlflowClient`
  (no process-global active run), any tracking URI (``file:`` store, a server,
  Databricks); the flattened config as parameters at the run's creation, metrics
  with their step, the run marked finished at `close`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Protocol

from etils import epath

from jaxtrain.errors import ConfigError

RUN_IDS = "trackers.json"


class Tracker(Protocol):
  """Where a run's metric rows go besides metrics.jsonl and TensorBoard."""
  def write(self, step: int, values: Mapping[str, float]) -> None: ...
  def close(self) -> None: ...


def _run_ids(workdir: str) -> dict[str, str]:
  path = epath.Path(workdir) / RUN_IDS
  return json.loads(path.read_text()) if path.exists() else {}


def _keep_run_id(workdir: str, name: str, run_id: str) -> None:
  ids = _run_ids(workdir)
  if ids.get(name) != run_id:
    ids[name] = run_id
    (epath.Path(workdir) / RUN_IDS).write_text(json.dumps(ids, indent=1) + "\n")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"optimizer": {"name": "lars"}}`` -> ``{"optimizer.name": "lars"}``."""
  out = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _require(module: str, writer: str) -> Any:
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ConfigError("logging.writers", writer, f"needs the {module.split('.')[0]} "
                      f"package: pip install 'jaxtrain[{writer}]'") from e


class WandbTracker:
  """A Weights & Biases run, resumed by id from ``WORKDIR/trackers.json``."""

  def __init__(self, workdir: str, config: Mapping[str, Any], project: str = "",
               entity: str = "", group: str = "", name: str = "",
               tags: tuple[str, ...] = (), directory: str = "", mode: str = ""):
    wandb = _require("wandb", "wandb")
    run_id = _run_ids(workdir).get("wandb")  # None: W&B makes one
    # W&B reads WANDB_MODE once per process (its wandb.setup() singleton): a second
    # run in the same process (a sweep, a notebook) would ignore a mode set since.
    # Read it here, at every run, so the mode the user set now is the one used.
    mode = mode or os.environ.get("WANDB_MODE", "")
    self._run = wandb.init(
        id=run_id, resume="allow" if run_id else None, project=project or None,
        entity=entity or None, group=group or None, name=name or None,
        tags=list(tags) or None, config=dict(config), dir=directory or None,
        mode=mode or None, reinit="create_new")
    self._run.define_metric("step")
    self._run.define_metric("*", step_metric="step")
    _keep_run_id(workdir, "wandb", self._run.id)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    self._run.log({"step": int(step), **values})

  def close(self) -> None:
    self._run.finish()


class MlflowTracker:
  """An MLflow run, resumed by id from ``WORKDIR/trackers.json``."""

  def __init__(self, workdir: str, config: Mapping[str, Any],
               tracking_uri: str = "", experiment: str = "jaxtrain",
               group: str = "", name: str = ""):
    tracking = _require("mlflow.tracking", "mlflow")
    self._client = tracking.MlflowClient(tracking_uri=tracking_uri or None)
    run_id = _run_ids(workdir).get("mlflow")
    if run_id is None:
      run_id = self._create(config, experiment, group, name)
    else:
      self._client.update_run(run_id, status="RUNNING")
    self.run_id = run_id
    _keep_run_id(workdir, "mlflow", run_id)

  def _create(self, config: Mapping[str, Any], experiment: str, group: str,
              name: str) -> str:
    from mlflow.entities import Param  # pylint: disable=g-import-not-at-top
    found = self._client.get_experiment_by_name(experiment)
    experiment_id = (found.experiment_id if found else
                     self._client.create_experiment(experiment))
    tags = {"jaxtrain.group": group} if group else {}
    run = self._client.create_run(experiment_id, run_name=name or None, tags=tags)
    params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 per batch
      self._client.log_batch(run.info.run_id, params=params[i:i + 100])
    return run.info.run_id

  def write(self, step: int, values: Mapping[str, float]) -> None:
    from mlflow.entities import Metric  # pylint: disable=g-import-not-at-top
    now = int(time.time() * 1000)
    self._client.log_batch(self.run_id, metrics=[
        Metric(k, float(v), now, int(step)) for k, v in values.items()])

  def close(self) -> None:
    self._client.set_terminated(self.run_id)
