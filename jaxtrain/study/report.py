"""`jaxtrain report DIR`: plots and a Markdown summary from a sweep's results files.

Per (optimizer, batch size) the best trial (fewest steps to target), and the scaling
efficiency against the smallest batch size b0 of that optimizer,

  efficiency(b) = steps(b0) * b0 / (b * steps(b)),

1 on the perfect-scaling line, -> 0 where bigger batches stop saving steps. The three
regimes of Shallue et al. 2018 (arXiv 1811.03600) are read off it: perfect scaling
while efficiency stays >= `PERFECT_EFFICIENCY`, then diminishing returns, up to the
maximal useful batch size, past which steps fall by less than `FLAT_GAIN`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from etils import epath

from jaxtrain.study import critical_batch, plots, results, targets

PERFECT_EFFICIENCY = 0.7
FLAT_GAIN = 0.1
Record = Mapping[str, Any]


def summary_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
  """One row per (optimizer, batch size) in study order, with the best trial."""
  best = targets.best_trials(records)
  keys: dict[tuple[str, int], list[Record]] = {}
  for r in records:
    keys.setdefault((r["optimizer"], int(r["batch_size"])), []).append(r)
  order = list(dict.fromkeys(r["optimizer"] for r in records))
  rows, smallest = [], {}
  for (opt, b), trials in sorted(keys.items(),
                                 key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
    r = best.get((b, opt))
    row = {"optimizer": opt, "batch_size": b, "trials": len(trials),
           "reached": sum(t["status"] == "reached" for t in trials),
           "diverged": sum(bool(t["diverged"]) for t in trials),
           "steps_to_target": None, "examples_to_target": None,
           "learning_rate": None, "warmup_steps": None, "efficiency": None,
           "wall_time_s": round(sum(t["wall_time_s"] / t["group_size"]
                                    for t in trials), 1)}
    if r is not None:
      row.update(steps_to_target=r["steps_to_target"],
                 examples_to_target=r["examples_to_target"],
                 learning_rate=r["learning_rate"], warmup_steps=r["warmup_steps"])
      b0, s0 = smallest.setdefault(opt, (b, r["steps_to_target"]))
      row["efficiency"] = round(s0 * b0 / (b * r["steps_to_target"]), 3)
    rows.append(row)
  return rows


def scaling_regimes(rows: Sequence[Mapping[str, Any]],
                    perfect: float = PERFECT_EFFICIENCY,
                    flat: float = FLAT_GAIN) -> dict[str, dict[str, Any]]:
  """Per optimizer: the last batch size of perfect scaling and the maximal useful one.

  perfect_until: the largest batch size up to which every batch size (that reached
    the target) has efficiency >= `perfect`.
  max_useful: the smallest batch size whose steps are within (1 + flat) of the
    fewest steps at any batch size >= it.
  perfect_edge, useful_edge: "largest" or "smallest" when that boundary is the
    largest or smallest batch size tried (that reached the target), else None: the
    regime then goes on past the grid, or may end before it, untested.
  next_efficiency: efficiency at the batch size after `perfect_until`, if any.
  last_gain: the fraction of steps saved from the second-largest to the largest
    batch size tried (None with fewer than two).
  """
  out = {}
  for opt in dict.fromkeys(r["optimizer"] for r in rows):
    ok = [r for r in rows if r["optimizer"] == opt and r["steps_to_target"]]
    perfect_until, next_efficiency = None, None
    for r in ok:
      if r["efficiency"] < perfect:
        next_efficiency = r["efficiency"]
        break
      perfect_until = r["batch_size"]
    max_useful = None
    for i, r in enumerate(ok):
      if r["steps_to_target"] <= (1 + flat) * min(x["steps_to_target"]
                                                  for x in ok[i:]):
        max_useful = r["batch_size"]
        break
    sizes = [r["batch_size"] for r in ok]
    out[opt] = {"perfect_until": perfect_until, "max_useful": max_useful,
                "perfect_edge": _edge(perfect_until, sizes),
                "useful_edge": _edge(max_useful, sizes),
                "next_efficiency": next_efficiency,
                "last_gain": (1 - ok[-1]["steps_to_target"] / ok[-2]["steps_to_target"]
                              if len(ok) > 1 else None),
                "sizes": sizes}
  return out


def _edge(size: int | None, sizes: Sequence[int]) -> str | None:
  if size is None or not sizes:
    return None
  return "largest" if size == sizes[-1] else "smallest" if size == sizes[0] else None


def _fmt(value: Any, spec: str = "") -> str:
  return "-" if value is None else format(value, spec)


def _regime_line(opt: str, reg: Mapping[str, Any]) -> str:
  """One optimizer's regimes, saying when a boundary is only the grid's edge."""
  perfect, useful, sizes = reg["perfect_until"], reg["max_useful"], reg["sizes"]
  if not sizes:
    return f"- {opt}: no batch size reached the target"
  if len(sizes) == 1:
    return (f"- {opt}: only batch size {sizes[0]} reached the target; no regimes "
            "can be read off one batch size")
  text = f"- {opt}: perfect scaling up to batch size {_fmt(perfect)}"
  if reg["perfect_edge"] == "largest":
    text += (f" (largest tried; not reached: efficiency >= {PERFECT_EFFICIENCY} "
             "throughout)")
  elif reg["perfect_edge"] == "smallest":
    text += (f" (smallest tried; efficiency is already "
             f"{reg['next_efficiency']:.2f} at {sizes[1]})")
  text += f"; maximal useful batch size {_fmt(useful)}"
  if reg["useful_edge"] == "largest":
    text += (f" (largest tried; not reached: steps still fell "
             f"{reg['last_gain']:.0%} from {sizes[-2]} to {sizes[-1]})")
  elif reg["useful_edge"] == "smallest":
    text += (f" (smallest tried; larger batch sizes saved < {FLAT_GAIN:.0%} of "
             "steps)")
  return text


def markdown(header: Mapping[str, Any], records: Sequence[Record]) -> str:
  """The summary table and the scaling regimes, as Markdown."""
  rows = summary_rows(records)
  lines = [f"# Scaling study: steps to {header.get('target', 'target')}", "",
           f"{len(records)} trials. Best trial per (optimizer, batch size) = fewest "
           "steps to the target; efficiency = steps(b0) * b0 / (b * steps(b)) for the "
           "smallest batch size b0 (1 = perfect scaling).", "",
           "| optimizer | batch size | steps to target | examples | best LR | "
           "warmup steps | efficiency | reached / diverged / trials | time (s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {r['optimizer']} | {r['batch_size']} | {_fmt(r['steps_to_target'])} | "
        f"{_fmt(r['examples_to_target'])} | {_fmt(r['learning_rate'], '.4g')} | "
        f"{_fmt(r['warmup_steps'])} | {_fmt(r['efficiency'], '.2f')} | "
        f"{r['reached']} / {r['diverged']} / {r['trials']} | {r['wall_time_s']} |")
  lines += ["", f"Regimes (Shallue et al. 2018), over the batch sizes that reached "
            f"the target: perfect scaling up to the largest batch size before the "
            f"efficiency first falls below {PERFECT_EFFICIENCY}; the maximal useful "
            f"batch size is the smallest one whose steps are within "
            f"{FLAT_GAIN:.0%} of the fewest at any larger batch size. A boundary at "
            "the largest or smallest batch size tried is only the grid's edge: the "
            "regime goes on past it, or ends before it, untested.", ""]
  for opt, reg in scaling_regimes(rows).items():
    lines.append(_regime_line(opt, reg))
  lines += _critical_lines(critical_batch.critical_batches(records, rows), rows)
  return "\n".join(lines) + "\n"


def _critical_lines(crit: Mapping[str, critical_batch.CriticalBatch],
                    rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """The critical-batch table: measured knee beside the noise-scale prediction."""
  lines = ["", "## Critical batch size", "",
           "Measured knee: the batch size where E_min / E(b) first falls through "
           f"{critical_batch.KNEE_EFFICIENCY} (E: examples to the target; E_min: the "
           "fewest at any batch size tried; interpolated in log2 batch size): "
           "McCandlish et al. 2018 (arXiv 1812.06162, eq. 2.11) put the critical "
           "batch B_crit = E_min / S_min where a run needs twice the minimum "
           "examples. Predicted: the gradient noise scale B_simple "
           f"(`{critical_batch.NOISE_SCALE_KEY}`), median over the best trials of its "
           "first logged value (early) and of its value at the step the target was "
           "reached.", "",
           "| optimizer | measured knee | predicted early | predicted at target | "
           "knee / predicted at target |", "|---|---:|---:|---:|---:|"]
  for opt, c in crit.items():
    sizes = [r["batch_size"] for r in rows
             if r["optimizer"] == opt and r["examples_to_target"] is not None]
    knee = (_fmt(c.knee, ".0f") if c.knee is not None or not sizes
            else f"> {sizes[-1]} (efficiency >= {critical_batch.KNEE_EFFICIENCY} "
            "throughout)")
    ratio = (c.knee / c.predicted_at_target
             if c.knee is not None and c.predicted_at_target else None)
    lines.append(f"| {opt} | {knee} | {_fmt(c.predicted_early, '.0f')} | "
                 f"{_fmt(c.predicted_at_target, '.0f')} | {_fmt(ratio, '.2f')} |")
  if all(c.predicted_early is None for c in crit.values()):
    lines += ["", f"No trial logged `{critical_batch.NOISE_SCALE_KEY}`, so nothing is "
              "predicted: it needs `train.diagnostics` on and more than one "
              "data-parallel replica, without batch norm (on a CPU, e.g. "
              "XLA_FLAGS=--xla_force_host_platform_device_count=8)."]
  return lines


def write(workdir: str) -> str:
  """Regenerates the plots and report.md in `workdir` (a local directory or
  gs://BUCKET/PATH: written through etils.epath); returns the Markdown."""
  root = epath.Path(workdir)
  header, records = results.load_results(workdir)
  if not records:
    raise FileNotFoundError(f"no trials in {root / results.RESULTS_JSON}"
                            "; run `jaxtrain sweep --workdir` there first")
  target = header.get("target", "")
  critical = critical_batch.critical_batches(records, summary_rows(records))
  plots.steps_to_target(records, root / "steps_to_target.png", target, critical)
  plots.best_learning_rate(records, root / "best_learning_rate.png")
  parsed = targets.parse(target) if target else None
  plots.learning_curves(records, root / "learning_curves.png",
                        parsed.metric if parsed else "eval/accuracy",
                        parsed.value if parsed else None)
  text = markdown(header, records)
  results.write_atomic(root / "report.md", text)
  return text
