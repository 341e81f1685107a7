"""The `logging` config section: which writers a run has, and the trackers' options.

``logging.writers`` lists where metric rows go: ``"jsonl"`` (``metrics.jsonl``,
always: resume, the run summary, ``jaxtrain report`` and the tests read it),
``"tensorboard"`` (``WORKDIR/tb``), ``"wandb"`` and ``"mlflow"``
(`jaxtrain.trackers`; optional packages, ``pip install 'jaxtrain[wandb]'`` /
``'jaxtrain[mlflow]'``). `validate` checks the section with plain values (a
missing tracker package is found here, before anything compiles); `make_trackers`
opens the trackers of a run on process 0. A tracker's options are read only when
it is listed (`RULES`, the `jaxtrain.unread_fields` rule).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from jaxtrain.checks import check_choice, check_keys
from jaxtrain.errors import ConfigError
from jaxtrain.optim.unread_fields import Rule, get
from jaxtrain.settings import Settings

WRITERS = ("jsonl", "tensorboard", "wandb", "mlflow")
TRACKERS = {"wandb": "wandb", "mlflow": "mlflow"}  # writer -> its package
WANDB_MODES = ("", "online", "offline")  # "": WANDB_MODE or W&B's default


def default_config() -> ml_collections.ConfigDict:
  """`config.logging` with its defaults: metrics.jsonl and TensorBoard."""
  return ml_collections.ConfigDict(dict(
      writers=("jsonl", "tensorboard"),  # + "wandb", "mlflow"
      wandb=ml_collections.ConfigDict(dict(
          project="jaxtrain", entity="",  # entity "": the API key's default
          name="",                        # "": W&B picks one (a sweep: the trial)
          tags=(),
          mode="",                        # "" | online | offline
      )),
      mlflow=ml_collections.ConfigDict(dict(
          tracking_uri="",                # "": MLFLOW_TRACKING_URI (one is needed)
          experiment="jaxtrain",
          name="",                        # the run's name ("": MLflow picks one)
      )),
  ))


def _writer_rules(writer: str, fields: tuple[str, ...]) -> list[Rule]:
  return [Rule(f"logging.{writer}.{f}",
               lambda s: writer in tuple(get(s, "logging.writers") or ()),
               lambda s: f"logging.writers={tuple(get(s, 'logging.writers'))!r} has "
               f"no {writer!r}",
               f"add {writer!r} to logging.writers")
          for f in fields]


# Read only when the tracker is listed (paths from the config's root).
RULES: tuple[Rule, ...] = (
    *_writer_rules("wandb", ("project", "entity", "name", "tags", "mode")),
    *_writer_rules("mlflow", ("tracking_uri", "experiment", "name")),
)


def validate(section: ml_collections.ConfigDict) -> None:
  """Checks `config.logging` (plain values; imports no tracker package).

  Raises:
    ConfigError: an unknown writer or field, a writer listed twice, no
      ``"jsonl"``, a tracker whose package is not installed, a bad option.
  """
  check_keys(section, default_config(), "logging.")
  writers = section.writers
  if isinstance(writers, str) or not isinstance(writers, (tuple, list)):
    raise ConfigError("logging.writers", writers, "use a tuple of writer names, "
                      "e.g. ('jsonl', 'tensorboard', 'wandb')")
  for writer in writers:
    check_choice("logging.writers", writer, WRITERS)
  if len(set(writers)) != len(writers):
    raise ConfigError("logging.writers", writers, "name each writer once")
  if "jsonl" not in writers:
    raise ConfigError("logging.writers", writers, "metrics.jsonl cannot be turned "
                      "off: resuming, the run summary, jaxtrain report and sweeps "
                      "read it; keep 'jsonl' in logging.writers")
  for writer, package in TRACKERS.items():
    if writer in writers and importlib.util.find_spec(package) is None:
      raise ConfigError("logging.writers", writers, f"{writer!r} needs the "
                        f"{package} package: pip install 'jaxtrain[{writer}]'")
  _check_wandb(section.wandb)
  _check_mlflow(section.mlflow, "mlflow" in writers)


def _check_wandb(wandb: ml_collections.ConfigDict) -> None:
  for field in ("project", "entity", "name", "mode"):
    _check_str(f"logging.wandb.{field}", wandb[field])
  check_choice("logging.wandb.mode", wandb.mode, WANDB_MODES)
  tags = wandb.tags
  if not isinstance(tags, (tuple, list)) or not all(isinstance(t, str) for t in tags):
    raise ConfigError("logging.wandb.tags", tags, "use a tuple of strings")


def _check_mlflow(mlflow: ml_collections.ConfigDict, listed: bool) -> None:
  for field in ("tracking_uri", "experiment", "name"):
    _check_str(f"logging.mlflow.{field}", mlflow[field])
  if not mlflow.experiment:
    raise ConfigError("logging.mlflow.experiment", "", "name the MLflow experiment "
                      "the run goes into (default 'jaxtrain')")
  if listed:
    _check_mlflow_uri(mlflow.tracking_uri)


def _mlflow_major() -> int:
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  for dist in ("mlflow", "mlflow-skinny"):
    try:
      return int(importlib.metadata.version(dist).split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
      continue
  return 0


def _check_mlflow_uri(uri: str) -> None:
  """Refuses, before anything compiles, a tracking URI MLflow would refuse when
  the tracker opens: none at all (MLflow 3's default, sqlite:///mlflow.db, needs
  the full `mlflow` package), or a file store on MLflow 3 without its opt-in
  (the file store is in maintenance mode there)."""
  field = "logging.mlflow.tracking_uri" if uri else "MLFLOW_TRACKING_URI"
  uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
  if not uri:
    raise ConfigError("logging.mlflow.tracking_uri", "", "say where runs go: "
                      "http://HOST:PORT (an MLflow server), databricks, "
                      "sqlite:///PATH.db or file:///PATH (MLflow 3: with "
                      "MLFLOW_ALLOW_FILE_STORE=true), or set MLFLOW_TRACKING_URI")
  # A path or file: URI is a file store; databricks[://profile] and servers are not.
  is_file = uri.startswith("file:") or (
      "://" not in uri and not uri.startswith("databricks"))
  if (is_file and _mlflow_major() >= 3
      and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true"):
    raise ConfigError(field, uri, "MLflow 3 refuses a file "
                      "store unless MLFLOW_ALLOW_FILE_STORE=true is set; set it, or "
                      "use a server or database URI")


def _check_str(field: str, value: Any) -> None:
  if not isinstance(value, str):
    raise ConfigError(field, value, "use a string")


def make_trackers(config: Settings | ml_collections.ConfigDict, workdir: str, group: str = "",
                  name: str = "") -> list[Any]:
  """The trackers `config.logging.writers` lists, resuming their runs in `workdir`.

  Call on process 0 only (the other processes write nothing).

  Args:
    config: the run's validated config (logged as the tracked run's config).
    workdir: keeps ``trackers.json`` (run ids); W&B's files go to
      ``WORKDIR/wandb`` for a local workdir.
    group: the runs' group (a sweep's name): W&B ``group``, MLflow tag
      ``jaxtrain.group``.
    name: the run's name when the config gives none (a sweep's trial id).

  Returns:
    `jaxtrain.trackers.Tracker`s, in `logging.writers` order.
  """
  values, out = config.to_dict(), []
  try:
    for writer in config.logging.writers:
      if writer in TRACKERS:
        out.append(_open(writer, config.logging, values, workdir, group, name))
  except BaseException:
    for tracker in out:  # a tracker that failed to open leaves none running
      tracker.close()
    raise
  return out


def _open(writer: str, section: ml_collections.ConfigDict, values: dict[str, Any],
          workdir: str, group: str, name: str) -> Any:
  """One tracker (`writer` is "wandb" or "mlflow") with its options."""
  from jaxtrain import metrics, trackers  # pylint: disable=g-import-not-at-top
  if writer == "wandb":
    w = section.wandb
    return trackers.WandbTracker(
        workdir, values, project=w.project, entity=w.entity, group=group,
        name=w.name or name, tags=tuple(w.tags), mode=w.mode,
        directory="" if metrics.is_remote(workdir) else workdir)
  m = section.mlflow
  return trackers.MlflowTracker(
      workdir, values, tracking_uri=m.tracking_uri, experiment=m.experiment,
      group=group, name=m.name or name)
