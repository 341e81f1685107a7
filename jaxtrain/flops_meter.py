"""Achieved FLOP/s per device and model FLOPs utilization (MFU) of the train loop.

The FLOPs of one train step are XLA's cost analysis of the compiled step
(`jax.stages.Compiled.cost_analysis()["flops"]`). Under SPMD (`jit` over a mesh)
the compiled program is the one each device runs, so the count is already per
device: a data-parallel step on n devices reports about 1/n of the global
matrix-multiply FLOPs plus the work every device repeats (e.g. a replicated
optimizer update). The achieved rate is those FLOPs times the steps of a log
window over the window's wall time without compile time (the same clock as
`train/steps_per_sec`), so `train/tflops_per_device / train/steps_per_sec` is the
per-device FLOPs of one step. MFU is that rate over the device's peak
(Chowdhery et al. 2022, PaLM, arXiv 2204.02311, appendix B; peaks in
`jaxtrain.peak_flops`).

XLA counts the program as compiled: recomputed activations (`nn.remat`) count, so
with rematerialization the figure is PaLM's hardware FLOPs utilization rather than
its MFU. XLA's cost analysis counts a loop body once whatever its trip count, so a
block of `train.steps_per_dispatch` steps (one `lax.scan`) is not counted from its
own program: the one-step program is compiled once more (the compile clock keeps
that time out of the step rate) and its FLOPs are counted per step.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Optional

import jax

from jaxtrain import peak_flops

TERA = peak_flops.TERA


def compiled_flops(compiled: Any) -> Optional[float]:
  """FLOPs of one run of a compiled program on one device, or None when the
  backend reports none (XLA cost analysis)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  flops = cost.get("flops") if cost else None
  return float(flops) if flops and flops > 0 else None


def batch_key(batch: Mapping[str, Any]) -> Hashable:
  """What decides a step's program: the batch's keys, shapes and dtypes."""
  return tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))


def one_step_batch(block: Mapping[str, Any], sharding: Any
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """One batch of a stacked block (steps, batch, ...), as sharded structs."""
  return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype, sharding=sharding)
          for k, v in block.items()}


class FlopsMeter:
  """Adds up the FLOPs of the steps dispatched in a log window.

  Args:
    device: one of the `jax.Device`s the step runs on.
    peak_tflops: the peak TFLOP/s per device to compute MFU against; 0: the dense
      bf16 figure of `jaxtrain.peak_flops.device_peak_flops` (none for CPUs).
  """

  def __init__(self, device: Any, peak_tflops: float = 0.0):
    self.device_kind = device.device_kind
    self.peak = (peak_tflops * TERA if peak_tflops
                 else peak_flops.device_peak_flops(device))
    self._from_table = not peak_tflops
    self._per_step: dict[Hashable, Optional[float]] = {}
    self._flops = 0.0
    self._uncounted = False  # a step in the window has no FLOP count

  def count(self, key: Hashable, steps: int,
            lower: Callable[[], jax.stages.Lowered]) -> None:
    """Adds `steps` steps of the program `key` names to the window.

    `lower()` lowers the one-step program; it is compiled (a cache hit when the
    step itself already compiled it) the first time `key` is seen.
    """
    if key not in self._per_step:
      self._per_step[key] = compiled_flops(lower().compile())
    flops = self._per_step[key]
    if flops is None:
      self._uncounted = True
    else:
      self._flops += flops * steps

  def values(self, seconds: float) -> dict[str, float]:
    """`train/tflops_per_device` (and `train/mfu` with a known peak) of the steps
    counted since `reset`, over their `seconds`. Empty when a step had no count."""
    out = {}
    if self._flops and not self._uncounted:
      rate = self._flops / seconds
      out["train/tflops_per_device"] = rate / TERA
      if self.peak:
        out["train/mfu"] = rate / self.peak
    return out

  def reset(self) -> None:
    """Starts the next window."""
    self._flops, self._uncounted = 0.0, False

  def describe(self) -> str:
    """One line on what `train/mfu` is measured against, or why it is absent."""
    if any(f is None for f in self._per_step.values()):
      return ("MFU: this backend's cost analysis gives no FLOP count for the train "
              "step; train/tflops_per_device and train/mfu are not logged")
    if self.peak is None:
      return (f"MFU: no peak FLOP/s known for device kind '{self.device_kind}'; "
              "logging train/tflops_per_device only (set train.peak_tflops, e.g. "
              "to a measured matmul rate from `python -m jaxtrain.peak_flops`, to "
              "log train/mfu)")
    source = ("dense bf16 peak of the device kind (jaxtrain.peak_flops)"
              if self._from_table else "train.peak_tflops")
    return (f"MFU: train/mfu against {self.peak / TERA:.4g} TFLOP/s per device, "
            f"the {source}")
