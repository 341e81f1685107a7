"""What a training run tells its user: a start-up header and an end-of-run summary.

Printed by process 0 only (through `metrics.Writer.message`). The header says what
runs where before the first compile (experiment, devices and mesh, parameter count,
workdir); the summary says how it ended (final metrics, the best evaluation, where
the checkpoint is and how to open TensorBoard). Between them the progress lines of
`metrics.Writer` show steps/s and an ETA that leave out compile time, measured by
`CompileClock` from JAX's own compile events (`jax.monitoring`).
"""
from __future__ import annotations

import datetime
import importlib.util
import math
import shutil
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp

# Top-level tracing, lowering to MLIR and XLA compilation of a jitted function
# (jax/_src/dispatch.py); nested traces do not emit them, so nothing counts twice.
COMPILE_EVENTS = frozenset({"/jax/core/compile/jaxpr_trace_duration",
                            "/jax/core/compile/jaxpr_to_mlir_module_duration",
                            "/jax/core/compile/backend_compile_duration"})
READ_ME = "README.md, \"Using a trained model\""


class CompileClock:
  """Seconds this process has spent tracing and compiling since it was made.

  A `jax.monitoring` listener adds up the durations of `COMPILE_EVENTS`; `close`
  removes it. Steps/s and the ETA subtract this time from the wall clock, so the
  first window (which compiles the step) is not reported as slow.
  """

  def __init__(self):
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in COMPILE_EVENTS:
      self.seconds += duration

  def close(self) -> None:
    jax.monitoring.unregister_event_duration_listener(self._on_event)


def count_params(model: Any, image_shape: tuple[int, ...]) -> int:
  """Number of parameters of `model` (traced with `jax.eval_shape`, not run)."""
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
  params = variables["params"]
  return sum(math.prod(getattr(x, "value", x).shape)
             for x in jax.tree.leaves(params, is_leaf=lambda x: hasattr(x, "value")))


def _count(n: float) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.3g}{unit}"
  return str(int(n))


def header(exp: Any, workdir: str, name: str = "") -> list[str]:
  """The lines printed before anything compiles."""
  c, mesh = exp.settings, exp.mesh
  devices = mesh.devices.flat
  platform = devices[0].platform
  length = (f"{exp.total_steps} steps ({c.train.num_epochs:g} epochs)"
            if c.train.num_epochs else f"{exp.total_steps} steps")
  params = count_params(exp.model, tuple(exp.train_source.image_shape))
  processes = jax.process_count()
  return [
      f"jaxtrain train{': ' + name if name else ''}",
      f"  model {c.model.name} ({_count(params)} parameters, {params:,}); data "
      f"{c.data.name} ({len(exp.train_source):,} train / {len(exp.eval_source):,} "
      "eval examples)",
      f"  optimizer {c.optimizer.name}, learning rate {c.optimizer.learning_rate:g}, "
      f"batch {c.train.batch_size}, {length}",
      f"  devices: {mesh.devices.size} x {platform} in {processes} "
      f"process{'es' if processes > 1 else ''}; mesh "
      + " ".join(f"{k}={v}" for k, v in mesh.shape.items()),
      f"  workdir: {workdir}",
  ]


def best_eval(rows: Iterable[Mapping[str, float]], metric: str = "",
              mode: str = "") -> tuple[str, int, float] | None:
  """(metric, step, value) of the best evaluation in metrics.jsonl rows.

  `metric`/`mode` as early stopping's; by default eval/accuracy (higher is better),
  else eval/loss (lower is better). None when no row has the metric.
  """
  rows = list(rows)
  if not metric:
    metric, mode = next(((m, d) for m, d in (("eval/accuracy", "max"),
                                            ("eval/loss", "min"))
                         if any(m in r for r in rows)), ("", ""))
  found = [(r[metric], r["step"]) for r in rows if metric and metric in r]
  if not found:
    return None
  pick = max if mode == "max" else min
  # The earliest step among equal values: where the best was first reached.
  value, step = pick(found, key=lambda vs: (vs[0], -vs[1] if mode == "max" else vs[1]))
  return metric, int(step), float(value)


def tensorboard_line(workdir: str) -> str:
  logdir = f"{workdir.rstrip('/')}/tb"
  if shutil.which("tensorboard") or importlib.util.find_spec("tensorboard"):
    return f"  TensorBoard: tensorboard --logdir={logdir}"
  return (f"  TensorBoard: pip install 'jaxtrain[tensorboard]', then tensorboard "
          f"--logdir={logdir}")


def summary(step: int, total: int, seconds: float, compile_seconds: float,
            final: Mapping[str, float], best: tuple[str, int, float] | None,
            checkpoint: str, workdir: str, tensorboard: bool = True) -> list[str]:
  """The lines printed when a run has finished (how to open TensorBoard, when
  the run wrote TensorBoard files)."""
  wall = datetime.timedelta(seconds=round(seconds))
  shown = {k: v for k, v in final.items()
           if k.startswith(("eval/", "eval_ema/")) or k in ("train/loss",
                                                            "train/accuracy")}
  lines = [f"Finished: step {step}/{total} in {wall} ({compile_seconds:.1f} s of it "
           "compiling)"]
  if shown:
    lines.append("  final: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
  if best is not None:
    lines.append(f"  best {best[0]}: {best[2]:.4f} at step {best[1]}")
  lines.append(f"  checkpoint: {checkpoint} (to load it: {READ_ME})")
  if tensorboard:
    lines.append(tensorboard_line(workdir))
  return lines
