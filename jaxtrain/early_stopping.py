"""Early stopping on an eval metric, and the best checkpoint it keeps.

`train.early_stopping`: after each evaluation the monitored metric (e.g.
`eval/accuracy`) is compared with the best so far; it improves when it beats the
best by more than `min_delta` (max mode: value - min_delta > best; min mode:
value + min_delta < best), the semantics of Keras' and PyTorch Lightning's
`EarlyStopping`. After `patience` evaluations in a row without improvement training
stops (Prechelt 1998, "Early stopping - but when?"; patience 0: never stop).

Every improving state is saved to `workdir/best` by an Orbax `CheckpointManager`
that keeps one checkpoint chosen by metric (`best_fn`/`best_mode`), apart from the
newest-N checkpoints in `workdir/checkpoints`, so `checkpoint.keep` never deletes
it. At the end (stopped or finished) the run restores that state and reports its
step and metrics.

The tracker's state (best value, its step, evals since) travels in the regular
checkpoints with the data position (`HostState`), so a resumed run stops at the
same step as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from jaxtrain import checksums


@dataclasses.dataclass
class Tracker:
  """Best value of `metric` so far, its step, and evaluations since."""
  metric: str
  mode: str = "max"
  patience: int = 0
  min_delta: float = 0.0
  best: float | None = None
  best_step: int | None = None
  wait: int = 0

  @classmethod
  def from_config(cls, es: ml_collections.ConfigDict) -> "Tracker | None":
    if not es.metric:
      return None
    return cls(es.metric, es.mode, es.patience, float(es.min_delta))

  def improves(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.best is None:
      return True
    if self.mode == "max":
      return value - self.min_delta > self.best
    return value + self.min_delta < self.best

  def update(self, step: int, value: float) -> bool:
    """Records the evaluation at `step`; returns whether it is the new best."""
    if self.improves(value):
      self.best, self.best_step, self.wait = float(value), step, 0
      return True
    self.wait += 1
    return False

  @property
  def should_stop(self) -> bool:
    return bool(self.patience) and self.wait >= self.patience

  def get_state(self) -> dict[str, Any]:
    return {"best": self.best, "best_step": self.best_step, "wait": self.wait}

  def set_state(self, state: dict[str, Any]) -> None:
    self.best, self.best_step = state["best"], state["best_step"]
    self.wait = int(state["wait"])


class HostState:
  """The host-side state a checkpoint holds: data position (+ early stopping).

  Quacks like the data iterator for `Checkpointer` (`get_state`/`set_state`), so
  the tracker is saved in the same JSON item as the iterator position.
  """

  def __init__(self, data_iter: Any, tracker: Tracker | None):
    self.data_iter, self.tracker = data_iter, tracker

  def get_state(self) -> dict[str, Any]:
    state = dict(self.data_iter.get_state())
    if self.tracker is not None:
      state["early_stopping"] = self.tracker.get_state()
    return state

  def set_state(self, state: dict[str, Any]) -> None:
    self.data_iter.set_state(state)
    if self.tracker is not None and "early_stopping" in state:
      self.tracker.set_state(state["early_stopping"])


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
    from jaxtrain import checkpoint  # pylint: disable=g-import-not-at-top
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    verified = checkpoint.has_checksums(self.directory, step)
    if verified:
      items["checksums"] = checksums.ChecksumRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if verified:
      try:
        checkpoint.check_checksums(restored["state"], None, restored["checksums"])
      except checkpoint.CheckpointCorruptError as e:
        raise checkpoint.CheckpointCorruptError(
            f"the best checkpoint (step {step}) in {self.directory} is damaged: "
            f"{e}") from None
    return restored["state"], dict(self._manager.metrics(step) or {})

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
