"""Which stream positions each global train batch holds: stages and repeats.

The train stream is one endless sequence of examples (a fresh permutation of the
split per epoch, `pipeline.train_iterator`). A `BatchPlan` cuts it into global
batches whose size may change by step, and may repeat each example in its batch:

- **Stages** (`config.train.stages`): from step `from_step` on, global batches hold
  `batch_size` rows of `image_size` pixels. Progressive resizing (fast.ai's
  DAWNBench ImageNet entry, Howard et al. 2018) and "don't decay the learning rate,
  increase the batch size" (Smith et al. 2017, arXiv 1711.00489) are stage lists.
  Batch k starts where batch k - 1 ended, so a stage switch skips and repeats no
  example: the stream is the same whatever the stages, only its cut changes.
- **Repeated augmentation** (Hoffer et al. 2019, "Augment your batch",
  arXiv 1901.09335; Berman et al. 2019, "MultiGrain", arXiv 1902.05509; DeiT/timm's
  `RASampler`): each of a batch's B / r distinct examples appears r times, each copy
  augmented differently (`transforms.example_rng` takes the copy number). Row i is
  copy i // (B / r) of distinct example i % (B / r): the copies are B / r rows
  apart, so with contiguous per-device shards they land on different devices
  (when there are at least r devices), as `RASampler`'s stride over replicas puts
  them on different GPUs. As in timm, a step holds B rows but consumes only B / r
  new examples, and `num_epochs` counts rows: an "epoch" of N rows holds r copies
  of N / r examples.

Global row i of batch k belongs to process `i // (B / P)` (P processes, each holding
a contiguous block of rows), so the rows a process reads depend only on (k, P), and
the global batch is the same whatever the number of processes.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Stage:
  """From train step `from_step` on: `batch_size` rows of `image_size` pixels.

  `image_size` None keeps the train transforms' own output size.
  """
  from_step: int
  image_size: int | None
  batch_size: int


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Global batch sizes by step, and the stream positions of each batch's rows.

  Attributes:
    stages: the `Stage`s (from_step, image_size, batch_size), the first at step 0.
    aug_repeats: copies of each example per batch (repeated augmentation).
  """
  stages: tuple[Stage, ...]
  aug_repeats: int = 1

  def __post_init__(self):
    if not self.stages or self.stages[0].from_step != 0:
      raise ValueError("the first stage starts at step 0")
    starts = [s.from_step for s in self.stages]
    if starts != sorted(set(starts)):
      raise ValueError(f"stage steps must increase, got {starts}")
    for s in self.stages:
      if s.batch_size % self.aug_repeats:
        raise ValueError(f"batch size {s.batch_size} is not a multiple of "
                         f"aug_repeats={self.aug_repeats}")

  @classmethod
  def constant(cls, batch_size: int, aug_repeats: int = 1) -> "BatchPlan":
    return cls((Stage(0, None, batch_size),), aug_repeats)

  @property
  def boundaries(self) -> tuple[int, ...]:
    """The steps at which a new stage starts (after step 0)."""
    return tuple(s.from_step for s in self.stages[1:])

  def stage_index(self, step: int) -> int:
    return bisect.bisect_right([s.from_step for s in self.stages], step) - 1

  def stage(self, step: int) -> Stage:
    return self.stages[self.stage_index(step)]

  def batch_size(self, step: int) -> int:
    return self.stage(step).batch_size

  def rows_before(self, step: int) -> int:
    """Rows (repeats counted) in all global batches before `step`."""
    total = 0
    for s, nxt in zip(self.stages, [*self.stages[1:], None]):
      end = step if nxt is None else min(step, nxt.from_step)
      if end <= s.from_step:
        break
      total += (end - s.from_step) * s.batch_size
    return total

  def position(self, step: int) -> int:
    """Stream position of batch `step`'s first example (distinct examples before)."""
    return self.rows_before(step) // self.aug_repeats

  def steps_for_rows(self, rows: float) -> int:
    """The fewest steps whose batches hold at least `rows` rows."""
    for s, nxt in zip(self.stages, [*self.stages[1:], None]):
      if nxt is None or self.rows_before(nxt.from_step) >= rows:
        remaining = rows - self.rows_before(s.from_step)
        return s.from_step + max(0, math.ceil(remaining / s.batch_size))
    raise AssertionError("unreachable: the last stage has no end")

  def local_rows(self, step: int, process: int, count: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(stream positions, copy numbers) of process `process`'s rows of batch `step`.

    Process p of P holds global rows [p * B / P, (p + 1) * B / P).
    """
    batch = self.batch_size(step)
    local = batch // count
    rows = np.arange(process * local, (process + 1) * local)
    distinct = batch // self.aug_repeats
    return self.position(step) + rows % distinct, rows // distinct


def from_config(stages: Sequence[Sequence[int]], batch_size: int,
                aug_repeats: int = 1) -> BatchPlan:
  """The plan of `config.train.stages` (empty: one stage of `batch_size`).

  A stage's `image_size` or `batch_size` of 0 or None means the train transforms'
  own size / `train.batch_size`.
  """
  if not stages:
    return BatchPlan.constant(batch_size, aug_repeats)
  return BatchPlan(tuple(Stage(int(f), int(i) if i else None,
                               int(b) if b else batch_size)
                         for f, i, b in stages), aug_repeats)
