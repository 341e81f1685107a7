"""The critical batch size per optimizer: measured from steps-to-target, and
predicted from the gradient noise scale the trials logged.

Measured knee. Per optimizer, with E(b) the examples batch size b needs to reach
the target (its best trial) and E_min the fewest at any batch size tried, the
efficiency

  efficiency(b) = E_min / E(b)

is 1 where no examples are wasted. McCandlish et al. 2018 (An Empirical Model of
Large-Batch Training, arXiv 1812.06162) sec. 2.3, eq. 2.11: steps S and examples E
to a given loss trade off as (S / S_min - 1)(E / E_min - 1) = 1, i.e.
E = E_min (1 + B / B_crit) and S = S_min (1 + B_crit / B) with B_crit = E_min /
S_min, so E_min / E(B) = 1 / (1 + B / B_crit) is `KNEE_EFFICIENCY` = 0.5 exactly
at B = B_crit (twice the minimum examples, twice the minimum steps). The knee is
the batch size where the efficiency first falls through 0.5 going up the grid,
interpolated linearly in log2(batch size) between the last batch size at >= 0.5
and the first below it (None when none falls below). The model's E_min is the limit
B -> 0; the fewest examples tried stand in for it, within a factor
(1 + b_smallest / B_crit). (The report's table keeps Shallue et al. 2018's
efficiency against the smallest batch size, arXiv 1811.03600; the two agree while
the smallest batch size needs the fewest examples, and E_min keeps a slow,
badly-tuned smallest batch size, e.g. LARS at batch 8, from moving the knee.)

Prediction. The simple noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al.
sec. 2.2, `jaxtrain.noise_scale`) predicts B_crit (the paper finds the two agree
within a small factor, both growing as training goes on). Trials log it as
`train/gradient_noise_scale`; per optimizer the prediction "early" is the median
over its best trials (one per batch size) of each one's first logged value, and "at
the target" the median of each one's value at the step it reached the target.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Mapping, Optional, Sequence

from jaxtrain.study import targets

KNEE_EFFICIENCY = 0.5
NOISE_SCALE_KEY = "train/gradient_noise_scale"
Record = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class CriticalBatch:
  """One optimizer's measured knee and predicted critical batch (None: unknown)."""
  knee: Optional[float]
  predicted_early: Optional[float]
  predicted_at_target: Optional[float]


def efficiency_knee(sizes: Sequence[int], efficiencies: Sequence[float],
                    threshold: float = KNEE_EFFICIENCY) -> Optional[float]:
  """The batch size where efficiency first falls below `threshold`, interpolated
  linearly in log2(batch size); None if it never does over `sizes` (ascending)."""
  points = list(zip(sizes, efficiencies))
  for (b0, e0), (b1, e1) in zip(points, points[1:]):
    if e0 >= threshold > e1:
      t = (e0 - threshold) / (e0 - e1)
      return 2 ** (math.log2(b0) + t * (math.log2(b1) - math.log2(b0)))
  return None


def _finite(value: Any) -> Optional[float]:
  if value is None or not math.isfinite(float(value)):
    return None
  return float(value)


def first_noise_scale(curve: Sequence[Record]) -> Optional[float]:
  """The first finite `train/gradient_noise_scale` of a learning curve."""
  for row in curve:
    value = _finite(row.get(NOISE_SCALE_KEY))
    if value is not None:
      return value
  return None


def noise_scale_at(curve: Sequence[Record], step: int) -> Optional[float]:
  """The last finite `train/gradient_noise_scale` logged at or before `step`."""
  found = None
  for row in curve:
    if row["step"] > step:
      break
    found = _finite(row.get(NOISE_SCALE_KEY)) or found
  return found


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
  present = [v for v in values if v is not None]
  return statistics.median(present) if present else None


def critical_batches(records: Sequence[Record], rows: Sequence[Mapping[str, Any]]
                     ) -> dict[str, CriticalBatch]:
  """Per optimizer (study order): the knee from the examples to target in `rows`
  (`report.summary_rows`) and the noise scale of its best trials
  (`targets.best_trials(records)`)."""
  best = targets.best_trials(records)
  out = {}
  for opt in dict.fromkeys(r["optimizer"] for r in rows):
    ok = [r for r in rows
          if r["optimizer"] == opt and r["examples_to_target"] is not None]
    trials = [best[(r["batch_size"], opt)] for r in ok]
    curves = [t.get("curve", []) for t in trials]
    e_min = min((r["examples_to_target"] for r in ok), default=None)
    out[opt] = CriticalBatch(
        knee=efficiency_knee([r["batch_size"] for r in ok],
                             [e_min / r["examples_to_target"] for r in ok]),
        predicted_early=_median([first_noise_scale(c) for c in curves]),
        predicted_at_target=_median([noise_scale_at(c, t["steps_to_target"])
                                     for c, t in zip(curves, trials)]))
  return out
