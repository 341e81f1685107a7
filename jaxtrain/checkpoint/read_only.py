"""Another run's checkpoints, opened read-only (the distillation teacher's).

An Orbax `CheckpointManager` in `read_only` mode over `<workdir>/checkpoints`: it
lists the steps, reads a step's config and state metadata, and restores part of a
step's state (a partial restore: e.g. only params and model state, no optimizer
state), each leaf onto the sharding its target gives. What was read is checked
against the checksums recorded at the save. `checkpoints_of` and `choose_step`
find a run's checkpoints and step as a config names them (the distillation teacher's
`distill.teacher_*`, a fine-tune's `init_from.*`).
"""
from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxtrain import checksums
from jaxtrain.checkpoint.verify import check_checksums, has_checksums
from jaxtrain.errors import ConfigError


def checkpoints_of(workdir: str, field: str, role: str) -> str:
  """``<workdir>/checkpoints`` of another run, named by config `field`.

  Raises:
    ConfigError: naming `field` when that directory does not exist.
  """
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.exists():
    raise ConfigError(field, workdir, f"no checkpoints in {directory}; name the "
                      f"{role} run's workdir")
  return str(directory)


def choose_step(steps: list[int], step: int, fields: tuple[str, str], workdir: str,
                role: str) -> int:
  """`step` of the complete `steps`, or the newest when `step` is 0.

  Args:
    steps: the run's complete checkpoint steps.
    step: the step asked for (0: the newest).
    fields: the config fields naming the workdir and the step, for errors.
    workdir: the run's workdir, for errors.
    role: what the run is to this one ("teacher", "source"), for errors.

  Raises:
    ConfigError: no complete checkpoint, or none of that step (listing them).
  """
  if not steps:
    raise ConfigError(fields[0], workdir, "holds no complete checkpoint; train the "
                      f"{role} there first")
  chosen = step or max(steps)
  if chosen not in steps:
    raise ConfigError(fields[1], step, "no checkpoint of that step",
                      choices=[str(s) for s in sorted(steps)])
  return chosen


class ReadOnlyCheckpoints:
  """The checkpoints in `directory`, never written (a context manager)."""

  def __init__(self, directory: str):
    self.directory = directory
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "checksums": checksums.ChecksumHandler()})

  def __enter__(self) -> "ReadOnlyCheckpoints":
    return self

  def __exit__(self, *exc: Any) -> None:
    self._manager.close()

  def steps(self) -> list[int]:
    """The complete steps, oldest first."""
    return list(self._manager.all_steps())

  def config(self, step: int) -> dict[str, Any]:
    """The config saved with `step` (a plain dict)."""
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]

  def state_metadata(self, step: int) -> Any:
    """The tree of `step`'s state item: shapes and dtypes, nothing read."""
    return self._manager.item_metadata(step)["state"]

  def restore_part(self, step: int, target: Any) -> Any:
    """The leaves of `step`'s state that `target` names, in its shardings.

    `target`: a subtree of the saved state of `jax.ShapeDtypeStruct`s with
    shardings; only those arrays are read, and only they are checked.

    Raises:
      CheckpointCorruptError: what was read differs from its recorded checksums.
    """
    items = {"state": ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)}
    verified = has_checksums(self.directory, step)
    if verified:
      items["checksums"] = checksums.ChecksumRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if verified:
      check_checksums(restored["state"], None, restored["checksums"])
    return restored["state"]


def shape_differences(wanted: Any, saved: Any) -> list[str]:
  """How the arrays of `wanted` differ from the saved `saved` (both trees of
  objects with `.shape`, e.g. `state_metadata` and abstract arrays): one phrase
  per missing, differently shaped or extra array, by tree path."""
  def shapes(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in flat}
  want, have = shapes(wanted), shapes(saved)
  diffs = [f"{k} missing" for k in want if k not in have]
  diffs += [f"{k} is {have[k]} there, {want[k]} here" for k in want
            if k in have and have[k] != want[k]]
  diffs += [f"{k} only there" for k in have if k not in want]
  return diffs
