"""The host-side state a checkpoint holds beside the train state.

The data position (batches consumed) and, with early stopping, the tracker's state
(best value, its step, evaluations since) travel together in the checkpoint's JSON
`data` item, so a resumed run reads the same batches and stops at the same step as
an uninterrupted one.
"""
from __future__ import annotations

from typing import Any

from jaxtrain.early_stopping import Tracker


class HostState:
  """The data position (+ early stopping) a checkpoint holds.

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
