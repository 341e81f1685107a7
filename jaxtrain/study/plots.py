"""Plots of a scaling study (matplotlib PNGs), after Shallue et al. 2018's figures.

- steps-to-target vs batch size, log-log, one line per optimizer, with the perfect-
  scaling line (steps proportional to 1 / batch size) through the smallest batch size;
- the best learning rate vs batch size;
- learning curves of the best trial per (batch size, optimizer);
- the LR range test's smoothed loss vs learning rate (Smith 2017, arXiv 1506.01186).

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global backend), so
they work the same from the CLI, from tests and inside a notebook. PNGs are rendered
into memory and written through `etils.epath`: a path may be local or gs://.

Reference: Shallue et al., Measuring the Effects of Data Parallelism on Neural
Network Training, 2018, arXiv 1811.03600.
"""
from __future__ import annotations

import io
import os
from typing import Any, Mapping, Sequence

from etils import epath
from matplotlib.figure import Figure

from jaxtrain.study import targets

Record = Mapping[str, Any]
PathLike = str | os.PathLike


def _by_optimizer(records: Sequence[Record]) -> dict[str, list[Record]]:
  """Best trial per batch size, grouped by optimizer (study order), by batch size."""
  out: dict[str, list[Record]] = {}
  for r in records:
    out.setdefault(r["optimizer"], [])
  for (_, opt), r in sorted(targets.best_trials(records).items()):
    out[opt].append(r)
  return out


def _batch_axis(ax, records: Sequence[Record]) -> None:
  """Log2 x axis labelled with the study's batch sizes."""
  sizes = sorted({int(r["batch_size"]) for r in records})
  ax.set_xscale("log", base=2)
  ax.set_xticks(sizes, [str(b) for b in sizes])
  ax.minorticks_off()
  ax.set_xlabel("batch size")


def _legend(ax, **kwargs) -> None:
  if ax.get_legend_handles_labels()[0]:  # none when no trial reached the target
    ax.legend(**kwargs)


def _save(fig: Figure, path: PathLike) -> str:
  fig.tight_layout()
  png = io.BytesIO()  # savefig writes local files only; epath also writes gs://
  fig.savefig(png, format="png", dpi=110)
  epath.Path(path).write_bytes(png.getvalue())
  return str(path)


def steps_to_target(records: Sequence[Record], path: PathLike, target: str = "",
                    critical: Mapping[str, Any] | None = None) -> str:
  """Log-log steps-to-target vs batch size, with perfect-scaling lines and, given
  `critical` (`critical_batch.critical_batches`), each optimizer's measured knee
  and predicted critical batch."""
  return _save(steps_to_target_figure(records, target, critical), path)


def steps_to_target_figure(records: Sequence[Record], target: str = "",
                           critical: Mapping[str, Any] | None = None) -> Figure:
  """The figure `steps_to_target` saves."""
  # With the critical-batch marks the legend is long: beside the axes, not on them.
  fig = Figure(figsize=(9.6 if critical else 6.4, 4.6))
  ax = fig.subplots()
  lowest = float("inf")
  for i, (opt, best) in enumerate(_by_optimizer(records).items()):
    if not best:
      continue
    color = f"C{i}"
    sizes = [r["batch_size"] for r in best]
    steps = [r["steps_to_target"] for r in best]
    lowest = min(lowest, *steps)
    ax.plot(sizes, steps, "o-", color=color, label=opt)
    # Perfect scaling: doubling the batch halves the steps (Shallue et al. 2018).
    ax.plot(sizes, [steps[0] * sizes[0] / b for b in sizes], "--", color=color,
            alpha=0.5, linewidth=1)
    if critical and opt in critical:
      _critical_marks(ax, opt, critical[opt], color)
  _batch_axis(ax, records)
  ax.set_yscale("log")
  if lowest < float("inf"):  # Keep the measured points, not the ideal lines, in view.
    ax.set_ylim(bottom=lowest / 4)
  ax.set_ylabel("steps to target")
  ax.set_title((f"Steps to {target}" if target else "Steps to target")
               + "\n(dashed: perfect scaling from the smallest batch size)")
  ax.grid(True, which="both", alpha=0.3)
  if critical:
    _legend(ax, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  else:
    _legend(ax)
  return fig


def _critical_marks(ax, opt: str, crit: Any, color: str) -> None:
  """The measured knee (dash-dot line) and the predicted critical batch (dotted
  lines at the early and at-target noise scales, shaded between)."""
  if crit.knee is not None:
    ax.axvline(crit.knee, color=color, linestyle="-.", linewidth=1.2,
               label=f"{opt}: knee (efficiency 0.5) {crit.knee:.0f}")
  predicted = [v for v in (crit.predicted_early, crit.predicted_at_target)
               if v is not None]
  if not predicted:
    return
  early, at_target = crit.predicted_early, crit.predicted_at_target
  label = f"{opt}: noise scale " + ", ".join(
      f"{name} {v:.0f}" for name, v in (("early", early), ("at target", at_target))
      if v is not None)
  for j, v in enumerate(predicted):
    ax.axvline(v, color=color, linestyle=":", linewidth=1.5,
               label=label if j == 0 else None)
  if len(predicted) == 2:
    ax.axvspan(min(predicted), max(predicted), color=color, alpha=0.08)


def best_learning_rate(records: Sequence[Record], path: PathLike) -> str:
  """The learning rate of the best trial vs batch size, log-log."""
  fig = Figure(figsize=(6.4, 4.6))
  ax = fig.subplots()
  for i, (opt, best) in enumerate(_by_optimizer(records).items()):
    if best:
      ax.plot([r["batch_size"] for r in best], [r["learning_rate"] for r in best],
              "o-", color=f"C{i}", label=opt)
  _batch_axis(ax, records)
  ax.set_yscale("log")
  ax.set_ylabel("best learning rate")
  ax.set_title("Learning rate of the fastest trial")
  ax.grid(True, which="both", alpha=0.3)
  _legend(ax)
  return _save(fig, path)


def learning_curves(records: Sequence[Record], path: PathLike, metric: str,
                    target_value: float | None = None) -> str:
  """`metric` vs step for the best trial per batch size, one panel per optimizer."""
  groups = _by_optimizer(records)
  sizes = sorted({int(r["batch_size"]) for r in records})
  fig = Figure(figsize=(4.2 * max(len(groups), 1), 3.8))
  axes = fig.subplots(1, max(len(groups), 1), squeeze=False)[0]
  for ax, (opt, best) in zip(axes, groups.items()):
    for r in best:  # One colour per batch size in every panel.
      curve = [p for p in r.get("curve", []) if metric in p]
      ax.plot([p["step"] for p in curve], [p[metric] for p in curve],
              color=f"C{sizes.index(r['batch_size']) % 10}",
              label=f"batch {r['batch_size']}")
    if target_value is not None:
      ax.axhline(target_value, color="k", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(opt)
    ax.grid(True, alpha=0.3)
    _legend(ax, fontsize=7)
  return _save(fig, path)


def lr_range(lrs: Sequence[float], losses: Sequence[float], suggestion: float,
             path: PathLike) -> str:
  """Smoothed loss vs learning rate (log x) with the suggested learning rate."""
  fig = Figure(figsize=(6.4, 4.6))
  ax = fig.subplots()
  ax.plot(lrs, losses)
  ax.axvline(suggestion, color="C1", linestyle="--",
             label=f"suggested {suggestion:.3g}")
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("smoothed train loss")
  ax.set_title("LR range test")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  return _save(fig, path)
