"""The run's own checkpoints: train state, data-iterator position and config.

One Orbax `CheckpointManager` in `workdir/checkpoints`; each step directory holds
`state` (the sharded TrainState, restored onto whatever mesh the run now has, plus
the metric sums accumulated since the last log step, so a resumed run logs the same
numbers), `data` (the Grain iterator state, as JSON) and `config`. Orbax writes a step
under a temporary name and renames it when complete, so a save cut short by a crash
is never listed.

A listed step that still cannot be read (missing items, truncated or garbled files)
is reported by step number and moved aside to `<step>.corrupt`, never deleted, and
the next older step is tried. A checkpoint whose tree or shapes differ from the
model being trained is refused with a message saying what differs.

The data position is saved as JSON rather than through Grain's own Orbax handler:
Grain's handler names its file by process count, which would stop a checkpoint
written by 2 processes from restoring in 1. Our pipeline's position (batches
consumed) is the same number on every process, so one copy serves any process count.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxtrain import checksums
from jaxtrain.checkpoint import orphaned_reads
from jaxtrain.checkpoint.errors import CheckpointMismatchError, CheckpointWriteError
from jaxtrain.checkpoint.verify import check_checksums, has_checksums
from jaxtrain.checkpoint.workdir import checkpoint_dir
from jaxtrain.settings import Settings


def _handlers() -> dict[str, Any]:
  return {"state": ocp.StandardCheckpointHandler(),
          "data": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
          "checksums": checksums.ChecksumHandler()}


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, workdir: str, every: int, keep: int, async_save: bool = True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    self._every = every
    self._in_flight: int | None = None  # an async save not yet known complete
    self.set_aside: list[int] = []  # unreadable steps found by restore_latest
    self._unmovable: set[int] = set()  # ... of them, those left in place
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=_handlers())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, abstract_state: Any, data_iter: Any,
                     report: Callable[[str], None],
                     changed: str = "") -> tuple[Any, int] | None:
    """Restores the newest readable step; None when there is none.

    Steps that cannot be read are set aside (`set_aside` lists them).
    `changed`: the config fields changed since the checkpoint was written
    ("field old -> new, ..."), named when its tree does not fit.

    Raises:
      CheckpointMismatchError: the newest readable step holds a different model.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        saved = self._manager.item_metadata(step)["state"]
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e, report)
        continue
      _check_same_tree(step, saved, abstract_state, changed)
      try:
        return self.restore(step, abstract_state, data_iter, report), step
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e, report)
    return None

  def _set_aside(self, step: int, error: Exception,
                 report: Callable[[str], None]) -> None:
    """Moves an unreadable step out of Orbax's sight; keeps it for inspection.

    Where it cannot be moved (a read-only directory), it stays and is skipped.
    """
    orphaned_reads.ignore_after_set_aside()  # reported here, once
    path = epath.Path(self.directory) / str(step)  # epath: local or gs://
    aside = path.with_name(f"{step}.corrupt")
    while aside.exists():
      aside = aside.with_name(aside.name + "_")
    moved = None
    if jax.process_index() == 0 and path.exists():
      try:
        path.rename(aside)
      except OSError as e:
        moved = e
    if jax.process_count() > 1:  # every process learns the outcome (a barrier too)
      failed = multihost_utils.broadcast_one_to_all(np.int32(moved is not None))
      if failed and moved is None:
        moved = OSError("process 0 could not rename it")
    self.set_aside.append(step)
    why = f"({type(error).__name__}: {str(error)[:200]})"
    if moved is None:
      report(f"Checkpoint at step {step} is incomplete or corrupt {why}; moved it "
             f"to {aside} and trying the one before")
      self._manager.reload()
    else:
      self._unmovable.add(step)
      report(f"Checkpoint at step {step} is incomplete or corrupt {why}; it cannot "
             f"be moved aside ({type(moved).__name__}: {moved.strerror or moved}), "
             "so it stays where it is, unused; trying the one before")

  def restore(self, step: int, abstract_state: Any, data_iter: Any,
              report: Callable[[str], None] | None = None) -> Any:
    """Restores `step` onto the shardings in `abstract_state`; repositions the data.

    `abstract_state` is any pytree (here {"train": TrainState, "metrics": sums}).
    What was read is checked against the checksums recorded at the save
    (`jaxtrain.checksums`); `report` hears of a step saved without them.

    Raises:
      CheckpointCorruptError: the contents differ from what was saved.
    """
    verified = has_checksums(self.directory, step)
    items = {"state": ocp.args.StandardRestore(abstract_state),
             "data": ocp.args.JsonRestore()}
    if verified:
      items["checksums"] = checksums.ChecksumRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if verified:
      verdict = check_checksums(restored["state"], restored["data"],
                                restored["checksums"])
      if verdict.unchecked and report is not None:
        report(f"Checkpoint at step {step}: {len(verdict.unchecked)} of "
               f"{len(verdict.unchecked) + verdict.checked} checksummed pieces span "
               "processes in this layout and were not checked (e.g. "
               f"{verdict.unchecked[0]})")
    elif report is not None:
      report(f"Checkpoint at step {step} has no checksums (saved by an older "
             "jaxtrain); its contents are not verified")
    data_iter.set_state(restored["data"]["iterator"])
    return restored["state"]

  def should_save(self, step: int) -> bool:
    return bool(self._every) and step % self._every == 0

  def save(self, step: int, state: Any, data_iter: Any,
           config: Settings) -> None:
    """Starts a save of `step` (asynchronous: returns once the copy is on host).

    Raises:
      CheckpointWriteError: this save, or the previous asynchronous one, failed.
    """
    if step in self._unmovable:
      raise CheckpointWriteError(
          f"could not write the checkpoint of step {step} in {self.directory}: the "
          f"unreadable checkpoint of step {step} is still there (it could not be "
          "moved aside). Move it away or fix the storage, then re-run the same "
          "command to resume.")
    if self._manager.latest_step() == step:
      return
    data = {"iterator": data_iter.get_state()}
    record = checksums.record(state, data)  # waits for `state` to be computed
    with self._reporting_failures(step):
      self._manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
          config=ocp.args.JsonSave(config.to_dict()),
          checksums=checksums.ChecksumSave(record)))
    self._in_flight = step

  def wait(self) -> None:
    with self._reporting_failures(None):
      self._manager.wait_until_finished()
    self._in_flight = None

  def close(self) -> None:
    """Releases the manager; never raises (call `wait` first to see failures)."""
    try:
      self._manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass  # Already reported by save/wait, or the run is failing for another reason.
    self._manager.close()

  @contextlib.contextmanager
  def _reporting_failures(self, step: int | None):
    """Turns a storage failure into one clear error naming the intact step."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self._manager.reload()
      steps = [s for s in self._manager.all_steps() if s not in self._unmovable]
      intact = max(steps, default=None)
      kept = (f"the checkpoint at step {intact} is intact" if intact is not None
              else "no complete checkpoint exists yet")
      # Orbax reports an async save's failure at the next call: blame that save.
      failed = self._in_flight if self._in_flight is not None else step
      which = f"of step {failed} " if failed is not None else ""
      raise CheckpointWriteError(
          f"could not write the checkpoint {which}in {self.directory} "
          f"({type(e).__name__}: {str(e)[:300]}); {kept}. Free space or fix the "
          "storage, then re-run the same command to resume.") from e


def _path(keys) -> str:
  """'train/params/conv0/kernel' whether the tree holds dicts or dataclasses."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in keys)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path(p): (tuple(x.shape), str(x.dtype)) for p, x in flat}


def _check_same_tree(step: int, saved: Any, target: Any, changed: str = "") -> None:
  """Raises CheckpointMismatchError naming the first differences and their cause."""
  have, want = _shapes(saved), _shapes(target)
  diffs = [f"{k} missing in checkpoint" for k in want if k not in have]
  diffs += [f"{k} only in checkpoint" for k in have if k not in want]
  diffs += [f"{k} is {have[k][0]} {have[k][1]} in checkpoint, {want[k][0]} "
            f"{want[k][1]} here" for k in want if k in have and have[k] != want[k]]
  if diffs:
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4
                                    else "")
    # Only the optimizer state differs: the optimizer changed, not the model.
    what = ("holds the state of another optimizer" if all(
        d.startswith("train/opt_state/") for d in diffs) else
            "was written for a different model or shape")
    cause = f"; changed since then: {changed}" if changed else ""
    raise CheckpointMismatchError(
        "checkpoint.restore", "auto",
        f"the checkpoint at step {step} {what} ({shown}){cause}; "
        "use a new --workdir, or --config.checkpoint.restore=never to train from "
        "scratch in this one")


def abstract_like(state: Any) -> Any:
  """Shape, dtype and sharding of every leaf: the target a restore fills in."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
