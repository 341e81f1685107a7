"""Starting a fresh run from weights: another run's checkpoint or a weights file.

`config.init_from` (`jaxtrain.pretrained.section`) names the source. `prepare`
reads what the source holds (a checkpoint's metadata, or a file's arrays through
its name map), matches it against the run's variables and checks it (the workdir,
the step, `init_from.strict`) before anything compiles. `start` loads it into the
fresh state when the run starts fresh, after printing the report (loaded,
re-initialized, missing, of another shape, unexpected). A run that resumes its own
checkpoint never reads the source.

- ``init_from.workdir``: Orbax restores only the variables that load, each straight
  into the run's sharding (any mesh and process count), from a manager opened
  read-only (`checkpoint.ReadOnlyCheckpoints`, as for the distillation teacher).
- ``init_from.file``: every process reads the file and builds its own shards with
  the run's shardings (`jax.make_array_from_callback`).

The optimizer state is made anew from the loaded params (`tx.init`) and an EMA
(`train.ema_decay`) starts at them: the run is step 0 of a new training, as timm's
``--pretrained`` and big_vision's ``model_init`` start one.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import checkpoint
from jaxtrain import ema as ema_lib
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import sharding
from jaxtrain.pretrained import files, merge, name_maps
from jaxtrain.state import TrainState
from jaxtrain.settings import Settings

if TYPE_CHECKING:
  from jaxtrain.program import Program
  from jaxtrain.runner import Experiment


@dataclasses.dataclass
class Source:
  """What `prepare` found: the report, and where the loaded variables come from.

  Attributes:
    report: every variable's outcome (`merge.MergeReport`).
    description: the source in words, for the log.
    arrays: a file's variables that load, ``{path: array}`` in the run's layout;
      None for a checkpoint.
    directory, step, ema: the checkpoint's directory and step, and whether its
      EMA weights are read.
  """
  report: merge.MergeReport
  description: str
  arrays: dict[str, np.ndarray] | None = None
  directory: str = ""
  step: int = 0
  ema: bool = False


def configured(config: Settings | ml_collections.ConfigDict) -> bool:
  """Whether `config.init_from` names a source."""
  return bool(config.init_from.workdir or config.init_from.file)


def _path(keys: tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """``{"params/conv1/kernel": shape, ...}`` of arrays, structs or Orbax metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path(p): tuple(x.shape) for p, x in leaves}


def _reinit(section: ml_collections.ConfigDict) -> str:
  """`init_from.reinit`, and with ``model_state=False`` every non-param variable."""
  parts = [f"(?:{section.reinit})"] if section.reinit else []
  if not section.model_state:
    parts.append("^(?!params/)")
  return "|".join(parts)


def prepare(exp: Experiment) -> Source | None:
  """The configured source, matched and checked (None without one).

  Reads a checkpoint's metadata or a file's arrays; compiles nothing.

  Raises:
    ConfigError: naming the `init_from` field: no such workdir, step or file, a
      source without an EMA, or (``init_from.strict``) the first variable that
      does not load.
  """
  section = exp.settings.init_from
  if not configured(exp.settings):
    return None
  boxed = jax.eval_shape(lambda: exp.model.init(
      jax.random.key(0), jnp.zeros((1, *exp.train_source.image_shape)), train=False))
  targets = _shapes(nn.meta.unbox(boxed))
  if section.workdir:
    return _from_workdir(section, targets)
  arrays = files.read_arrays(section.file)
  conversion = name_maps.convert(arrays, name_maps.NAME_MAPS[section.name_map],
                                 targets)
  report = merge.plan(targets, conversion, _reinit(section), section.strict)
  return Source(report, f"{section.file} (names mapped by {section.name_map})",
                arrays={p: conversion.arrays[p] for p in report.loaded})


def _from_workdir(section: ml_collections.ConfigDict,
                  targets: Mapping[str, tuple[int, ...]]) -> Source:
  directory = checkpoint.checkpoints_of(section.workdir, "init_from.workdir",
                                        "source")
  with checkpoint.ReadOnlyCheckpoints(directory) as checkpoints:
    step = checkpoint.choose_step(checkpoints.steps(), section.step,
                                  ("init_from.workdir", "init_from.step"),
                                  section.workdir, "source")
    saved = checkpoints.state_metadata(step)["train"]
  weights = saved.get("ema") if section.ema else saved
  if not weights:
    raise ConfigError("init_from.ema", True, f"the checkpoint at step {step} in "
                      f"{directory} holds no EMA (its run had train.ema_decay=0); "
                      "set init_from.ema=False to load its weights")
  shapes = _shapes({"params": weights["params"], **(weights.get("model_state") or {})})
  report = merge.plan(targets, _by_path(shapes, targets), _reinit(section),
                      section.strict)
  which = "EMA weights" if section.ema else "weights"
  return Source(report, f"the {which} at step {step} in {directory}",
                directory=directory, step=step, ema=section.ema)


def _by_path(source: Mapping[str, tuple[int, ...]],
             targets: Mapping[str, tuple[int, ...]]) -> name_maps.Conversion:
  """A jaxtrain checkpoint against the run: same paths, and the shapes must agree
  (`Conversion.arrays` holds the shapes: the arrays are restored later)."""
  out = name_maps.Conversion()
  for path, shape in source.items():
    if path not in targets:
      out.unexpected.append(path)
    elif shape != targets[path]:
      out.mismatched.append((path, path, shape, targets[path]))
    else:
      out.arrays[path] = shape
      out.loaded.append((path, path))
  out.missing = [t for t in targets if t not in out.arrays]
  return out


def _variables(state: TrainState) -> dict[str, Any]:
  """A TrainState's weights as Flax variables: ``{"params", **model_state}``."""
  return {"params": state.params, **(state.model_state or {})}


def _restore(source: Source, abstract: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The checkpoint's loaded variables, each in the sharding `abstract` gives."""
  tree = flax.traverse_util.unflatten_dict(
      {p: abstract[p] for p in source.report.loaded}, sep="/")
  part = {"params": tree.pop("params", {})}
  if tree:
    part["model_state"] = tree
  target = {"train": {"ema": part} if source.ema else part}
  try:
    with checkpoint.ReadOnlyCheckpoints(source.directory) as checkpoints:
      restored = checkpoints.restore_part(source.step, target)["train"]
  except checkpoint.CheckpointCorruptError as e:
    raise ConfigError("init_from.step", source.step, f"the checkpoint in "
                      f"{source.directory} is damaged ({e}); choose another "
                      "step") from None
  restored = restored["ema"] if source.ema else restored
  return _flat({"params": restored.get("params", {}),
                **(restored.get("model_state") or {})})


def _flat(tree: Any) -> dict[str, Any]:
  return {_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _place(array: np.ndarray, struct: jax.ShapeDtypeStruct) -> jax.Array:
  """`array` as a global array in `struct`'s sharding, dtype and shape; each
  process builds only its own shards."""
  host = np.asarray(array, struct.dtype)
  return jax.make_array_from_callback(struct.shape, struct.sharding,
                                      lambda index: host[index])


def load(source: Source, program: Program, exp: Experiment) -> TrainState:
  """`program.state` with the source's variables, a new optimizer state from them
  and an EMA starting at them, in `program.shardings`."""
  state = program.state
  abstract = _flat(_variables(program.abstract_state))
  if source.arrays is not None:
    loaded = {p: _place(a, abstract[p]) for p, a in source.arrays.items()}
  else:
    loaded = _restore(source, abstract)
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: loaded.get(_path(p), x), _variables(state))
  params = variables.pop("params")
  state = state.replace(params=params, model_state=variables)

  def new_training(s: TrainState) -> TrainState:
    s = s.replace(opt_state=exp.tx.init(s.params))
    return ema_lib.init(s) if exp.ema is not None else s

  with sharding.activate(exp.mesh, exp.settings.sharding.rules):
    return jax.jit(new_training, out_shardings=program.shardings)(state)


def start(exp: Experiment, program: Program, state: TrainState,
          source: Source | None, message: Callable[[str], None]) -> TrainState:
  """The state a run trains from, once its own checkpoint was looked for.

  Args:
    exp: from `runner.build`.
    program: from `program.compile_program`.
    state: `program.state` when the run starts fresh, else its restored state.
    source: from `prepare` (read now when None).
    message: writes a line to the run's log.

  Returns:
    `state` when it was restored or nothing is configured; else the fresh state
    with the source's weights (`load`), after logging the report.
  """
  if not configured(exp.settings):
    return state
  if state is not program.state:  # restored: this run continues its own weights
    message(f"init_from is not read: the run resumed its own checkpoint at step "
            f"{int(state.step)}")
    return state
  source = source or prepare(exp)
  message(f"init_from: starting from {source.description}")
  for line in source.report.lines():
    message(line)
  return load(source, program, exp)
