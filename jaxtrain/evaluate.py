"""Exact-once evaluation over a split: padded global batches with a mask."""
from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import NamedSharding

from jaxtrain import metrics as metrics_lib
from jaxtrain.data import pipeline
from jaxtrain.step import Metrics, sum_metrics


def evaluate(eval_step: Callable[..., Metrics], state, source, global_batch: int,
             sharding: NamedSharding, prefix: str = "eval") -> dict[str, float]:
  """Averages `eval_step`'s metric sums over every example of `source` once.

  Images come from the source's eval transforms, whose resolution may differ from
  training (FixRes); `eval_step` is jitted, so it compiles once for that shape.

  Returns:
    {"<prefix>/loss": ..., "<prefix>/accuracy": ..., ...}; the sums are fetched to
    the host once, after the last batch.
  """
  total = None
  for batch in pipeline.eval_batches(source, global_batch):
    total = sum_metrics(total, eval_step(state, pipeline.to_global(batch, sharding)))
  return metrics_lib.averages(jax.device_get(total), prefix)
