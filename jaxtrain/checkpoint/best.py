"""`workdir/best`: the state with the best value of the monitored eval metric.

Early stopping (`jaxtrain.early_stopping`) saves every improving state here. An
Orbax `CheckpointManager` keeps one checkpoint chosen by metric (`best_fn` /
`best_mode`), apart from the newest-N checkpoints in `workdir/checkpoints`, so
`checkpoint.keep` never deletes it. Its checksums are checked on restore.
"""
from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp

from jaxtrain import checksums
from jaxtrain.checkpoint.errors import CheckpointCorruptError
from jaxtrain.checkpoint.verify import check_checksums, has_checksums


class BestCheckpointer:
  """`workdir/best`: the state with the best value of `metric` (Orbax keeps 1)."""

  def __init__(self, workdir: str, metric: str, mode: str, async_save: bool = True):
    base = workdir.rstrip("/") if "://" in workdir else workdir
    self.directory = f"{base}/best"
    self.metric = metric
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m[metric], best_mode=mode,
        keep_checkpoints_without_metrics=False,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "checksums": checksums.ChecksumHandler()})

  def save(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    """Saves `state` with its eval `metrics` (a resumed run may see `step` again)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, metrics=dict(metrics), force=True,
                       args=ocp.args.Composite(
                           state=ocp.args.StandardSave(state),
                           checksums=checksums.ChecksumSave(checksums.record(state))))

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, float]]:
    """(state, eval metrics) of `step`, onto the shardings of `abstract_state`.

    Raises:
      CheckpointCorruptError: its contents differ from their recorded checksums.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    verified = has_checksums(self.directory, step)
    if verified:
      items["checksums"] = checksums.ChecksumRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if verified:
      try:
        check_checksums(restored["state"], None, restored["checksums"])
      except CheckpointCorruptError as e:
        raise CheckpointCorruptError(
            f"the best checkpoint (step {step}) in {self.directory} is damaged: "
            f"{e}") from None
    return restored["state"], dict(self._manager.metrics(step) or {})

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
