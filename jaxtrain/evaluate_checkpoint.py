"""Evaluation only of a run's saved checkpoint: what `jaxtrain eval` runs.

Any kept step (the newest by default), any split, the raw or the EMA weights, and
any eval transforms the config gives (e.g. a FixRes resolution). The run's program
comes from `program.compile_program` (abstract: nothing is initialized), its
checkpoints are opened read-only (`checkpoint.ReadOnlyCheckpoints`) and only the
weights evaluation reads are restored (step, params and model state, or the EMA
copy of both), checked against their recorded checksums. The split is covered
exactly once by `evaluate.evaluate` (padded batches with a mask), the same function
and jitted eval step the training loop's evaluations use, so the numbers of a step
the run evaluated are reproduced exactly. Nothing of the run is written: the result
goes to its own `eval_<step>[_ema][_<split>].json`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import jax
import ml_collections
from etils import epath

from jaxtrain import checkpoint, runner
from jaxtrain import config as config_lib
from jaxtrain.errors import ConfigError
from jaxtrain.evaluate import evaluate
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.settings import Settings
from jaxtrain.parallel import sharding
from jaxtrain.program import compile_program, make_jitted_eval
from jaxtrain.state import TrainState


@dataclasses.dataclass
class CheckpointEval:
  """One evaluation of a saved step.

  Attributes:
    step: the checkpoint's step.
    split: the split evaluated (`data.eval_split`).
    examples: how many examples it has (each evaluated once).
    ema: the EMA weights were evaluated (metrics ``eval_ema/...``).
    metrics: ``eval/loss``, ``eval/accuracy``, ``eval/top5_accuracy`` (with more
      than 5 classes), as the run's metrics.jsonl names them.
    checkpoint: the step's directory.
  """
  step: int
  split: str
  examples: int
  ema: bool
  metrics: dict[str, float]
  checkpoint: str


def evaluate_checkpoint(config: ml_collections.ConfigDict | Settings, workdir: str,
                        step: int | None = None, split: str | None = None,
                        ema: bool = False,
                        devices: list[jax.Device] | None = None) -> CheckpointEval:
  """Evaluates the checkpoint at `step` (default: the newest) of the run in `workdir`.

  Args:
    config: the run's experiment config (with any eval overrides).
    workdir: the run's workdir (its `checkpoints/` is read, nothing written).
    step: a kept step; None (or 0): the newest.
    split: the split to evaluate (default: the config's `data.eval_split`).
    ema: evaluate the EMA weights instead of the raw ones.
    devices: devices of the mesh (default: all).

  Returns:
    The `CheckpointEval`: the step, split, example count and metrics
    (``eval/...``, or ``eval_ema/...`` with `ema`, as metrics.jsonl names them).

  Raises:
    ConfigError: no checkpoints in `workdir` (--workdir), no such step (--step),
      no EMA weights saved (--ema), a bad split (--split), or a model that does not
      match the checkpoint (--config).
  """
  directory = checkpoints_of(workdir)
  with checkpoint.ReadOnlyCheckpoints(directory) as saved:
    # The flags first: a bad one costs no model trace.
    step = checkpoint.choose_step(saved.steps(), step or 0, ("--workdir", "--step"),
                                  workdir, "model")
    metadata = saved.state_metadata(step)["train"]
    if ema and not metadata.get("ema"):
      raise ConfigError("--ema", True, f"the checkpoint at step {step} in "
                        f"{directory} holds no EMA weights (the run had "
                        "train.ema_decay=0); leave out --ema")
    exp = _build(config, split, devices)
    program = compile_program(exp, abstract=True)  # jitted, nothing initialized
    target = _restore_target(program.abstract_state, ema)
    _check_shapes(metadata, target, step, directory)
    restored = saved.restore_part(step, {"train": target})["train"]
  weights = restored["ema"] if ema else restored
  state = TrainState(step=restored["step"], params=weights["params"],
                     model_state=weights["model_state"], opt_state=None, rng=None)
  shardings = program.shardings.replace(opt_state=None, rng=None, ema=None,
                                       noise_scale=None)
  with sharding.activate(exp.mesh, exp.settings.sharding.rules):
    metrics = evaluate(make_jitted_eval(exp, shardings), state, exp.eval_source,
                       exp.eval_batch_size, mesh_lib.batch_sharding(exp.mesh),
                       prefix="eval_ema" if ema else "eval")
  return CheckpointEval(step, exp.settings.data.eval_split, len(exp.eval_source), ema,
                        metrics, f"{directory}/{step}")


def checkpoints_of(workdir: str) -> str:
  """The run's checkpoint directory; ConfigError naming --workdir if it has none."""
  return checkpoint.checkpoints_of(workdir, "--workdir", "evaluated")


def _build(config: ml_collections.ConfigDict | Settings, split: str | None,
           devices: list[jax.Device] | None) -> runner.Experiment:
  """`runner.build` of `config` with `data.eval_split` = `split`; a split the
  source does not have is named as --split."""
  settings = config_lib.settings_of(config)
  if not split:
    return runner.build(settings, devices)
  try:
    return runner.build(settings.with_section("data", eval_split=split), devices)
  except ConfigError as e:
    if e.field not in ("data.eval_split", "data.train_split") or e.value != split:
      raise
    raise ConfigError("--split", split, str(e).split(": ", 1)[-1]) from None


def _restore_target(abstract: TrainState, ema: bool) -> dict[str, Any]:
  """The part of the saved train state evaluation reads, as sharded structs (the
  EMA copy has the shapes and shardings of params and model state)."""
  weights = {"params": abstract.params, "model_state": abstract.model_state}
  return {"step": abstract.step, **({"ema": weights} if ema else weights)}


def _check_shapes(saved: Any, target: dict[str, Any], step: int,
                  directory: str) -> None:
  """The config's model must match the saved one (named as --config)."""
  part = {k: saved.get(k) for k in target}
  diffs = checkpoint.shape_differences(target, part)
  if diffs:
    raise ConfigError("--config", None, f"its model does not match the checkpoint "
                      f"at step {step} in {directory}: {'; '.join(diffs[:4])}; "
                      "evaluate with the run's config and model overrides")


def output_path(workdir: str, result: CheckpointEval, split_given: bool) -> str:
  """`workdir/eval_<step>[_ema][_<split>].json` (the split only when chosen)."""
  name = f"eval_{result.step}" + ("_ema" if result.ema else "")
  if split_given:
    name += "_" + re.sub(r"[^A-Za-z0-9]+", "-", result.split).strip("-")
  return str(epath.Path(workdir) / f"{name}.json")


def write_json(path: str, result: CheckpointEval, config_file: str,
               overrides: Sequence[str]) -> None:
  """Writes `result` with what produced it to `path`, atomically (a temporary
  file renamed over it); process 0 only."""
  if jax.process_index() != 0:
    return
  record = {**dataclasses.asdict(result), "config": config_file,
            "config_overrides": list(overrides)}
  target = epath.Path(path)
  temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
  temporary.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  temporary.replace(target)
