"""Early stopping on an eval metric: when to stop, and which state was best.

`train.early_stopping`: after each evaluation the monitored metric (e.g.
`eval/accuracy`) is compared with the best so far; it improves when it beats the
best by more than `min_delta` (max mode: value - min_delta > best; min mode:
value + min_delta < best), the semantics of Keras' and PyTorch Lightning's
`EarlyStopping`. After `patience` evaluations in a row without improvement training
stops (Prechelt 1998, "Early stopping - but when?"; patience 0: never stop).

Every improving state is saved to `workdir/best` (`checkpoint.BestCheckpointer`),
apart from the newest-N checkpoints, so `checkpoint.keep` never deletes it. At the
end (stopped or finished) the run restores that state and reports its step and
metrics.

The tracker's state (best value, its step, evals since) travels in the regular
checkpoints with the data position (`checkpoint.HostState`), so a resumed run stops
at the same step as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections


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
