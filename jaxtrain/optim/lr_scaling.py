"""Batch-size learning-rate scaling: a learning rate tuned at one global batch size,
carried to another by the linear or the square-root rule."""
from __future__ import annotations

import math

RULES = ("linear", "sqrt")


def scale_lr(base_lr: float, batch_size: int, base_batch_size: int = 256,
             rule: str = "linear") -> float:
  """Scales a learning rate tuned at `base_batch_size` to `batch_size`.

  Args:
    base_lr: learning rate at `base_batch_size`.
    batch_size: the global batch size used.
    base_batch_size: the batch size `base_lr` was tuned for.
    rule: "linear" (lr * b / b0) or "sqrt" (lr * sqrt(b / b0)).

  Returns:
    The scaled learning rate.

  References:
    linear: Goyal et al. 2017, arXiv 1706.02677. sqrt: Krizhevsky 2014,
    arXiv 1404.5997; Hoffer et al. 2017, arXiv 1705.08741.
  """
  for name, value in (("batch_size", batch_size),
                      ("base_batch_size", base_batch_size)):
    if not value > 0:
      raise ValueError(f"{name}={value} must be > 0")
  ratio = batch_size / base_batch_size
  if rule == "linear":
    return base_lr * ratio
  if rule == "sqrt":
    return base_lr * math.sqrt(ratio)
  raise ValueError(f"rule={rule!r}: expected one of {RULES}")
