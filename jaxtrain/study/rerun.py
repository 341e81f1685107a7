"""What a sweep re-run in the same workdir may keep from its results.json.

A trial's id hashes its whole experiment config, so a stored trial is reused only
by the same trial. Three things can still make stored numbers wrong for the study
now asked for, and each is handled here, before any trial runs:

- Another experiment, or other study fields that decide a trial's outcome
  (`OUTCOME_FIELDS`): refused, naming each changed field, with the way out (a new
  --workdir). Mixing old and new trials in one report would compare different
  things.
- A grid that no longer holds stored trials (a batch size dropped, max_steps
  changed: every trial config changes): refused likewise, rather than dropping the
  stored trials from results.json. A grid that only grows keeps them all.
- Another target: each record is recomputed from its stored learning curve as the
  sweep would have written it for the new target: steps-to-target is the first
  evaluated step meeting it, `stop_at_target` cuts the curve there, and pruning is
  re-applied within the group the trial ran in. A curve that ended early for the
  old target (`stop_at_target` or pruning) before the new one could be judged says
  nothing about the new target: its whole group runs again.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from jaxtrain.errors import ConfigError
from jaxtrain.study import targets

# Study fields besides the target and the grid that decide a trial's record.
OUTCOME_FIELDS = ("divergence_loss", "stop_at_target", "prune")
Record = dict[str, Any]


def _tuples(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in (node or {}).items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = _tuples(value)
  return out


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
  a, b = _flat(old), _flat(new)
  return [f"{prefix}{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]


def _refuse(where: str, what: str) -> None:
  raise ConfigError("--workdir", where, f"{what}; use a new --workdir (or move "
                    "results.json away) so old and new trials are not mixed")


def check_same_study(stored: Mapping[str, Any], header: Mapping[str, Any],
                     records: Sequence[Record], trial_ids: Sequence[str],
                     where: str) -> None:
  """Refuses results of another experiment, outcome rules or grid (see module).

  Args:
    stored: the header of results.json (may lack fields older versions did not
      write: those are not compared).
    header: the header this run writes (`experiment`, `study`, `target`).
    records: the stored trial records.
    trial_ids: the ids of this study's trials.
    where: results.json's path, for the message.
  """
  if not records:
    return
  if "experiment" in stored:
    changed = _diff(stored["experiment"], header["experiment"], "")
    if changed:
      _refuse(where, "it holds trials of another experiment config ("
              + ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "") + ")")
  old_study, new_study = stored.get("study", {}), header["study"]
  changed = [f"study.{f} {old_study[f]!r} -> {new_study[f]!r}"
             for f in OUTCOME_FIELDS if f in old_study and f in new_study
             and old_study[f] != new_study[f]]
  if changed:
    _refuse(where, "its trials were recorded under other rules ("
            + ", ".join(changed) + ")")
  gone = [r["trial"] for r in records if r["trial"] not in set(trial_ids)]
  if gone:
    grid_changes = [d for d in _diff(old_study, new_study, "study.")
                    if not d.startswith(("study.target ",))]
    _refuse(where, f"it holds {len(gone)} trial(s) not in this study's grid, e.g. "
            f"{gone[0]}" + (" (changed: " + ", ".join(grid_changes[:6]) + ")"
                            if grid_changes else ""))


def _at(record: Record, step: int, status: str, reached: int | None) -> Record:
  """`record` as a fresh run would end it at `step` (curve, final metrics cut)."""
  curve = [row for row in record["curve"] if row["step"] <= step]
  return {**record, "curve": curve, "steps_run": step, "status": status,
          "diverged": False, "final": {k: v for k, v in curve[-1].items()
                                       if k != "step"},
          "steps_to_target": reached,
          "examples_to_target": None if reached is None else
          reached * int(record["batch_size"])}


def _retarget_group(group: Sequence[Record], target: targets.Target,
                    stop_at_target: bool, prune: bool) -> list[Record] | None:
  """A group's records under `target`, as `sweep.run_group` would have written
  them; None when a stored curve ended too early to tell (the group runs again)."""
  reach = [targets.steps_to_target(r.get("curve", []), target) for r in group]
  first = min((s for s in reach if s is not None), default=None) if prune else None
  out = []
  for r, s in zip(group, reach):
    end, diverged = int(r["steps_run"]), bool(r.get("diverged"))
    if s is not None and (first is None or s == first):
      out.append(_at(r, s, "reached", s) if stop_at_target else
                 {**r, "status": "reached", "steps_to_target": s,
                  "examples_to_target": s * int(r["batch_size"])})
    elif first is not None and not (diverged and end <= first) and end >= first:
      out.append(_at(r, first, "pruned", None))  # a groupmate reached it first
    elif diverged:
      out.append({**r, "status": "diverged", "steps_to_target": None,
                  "examples_to_target": None})
    elif first is None and end >= int(r["num_steps"]):
      out.append({**r, "status": "not_reached", "steps_to_target": None,
                  "examples_to_target": None})
    else:
      return None  # ended for the old target before the new one could be judged
  return out


def reuse(stored: Mapping[str, Any], records: Sequence[Record],
          target: targets.Target, stop_at_target: bool, prune: bool,
          log: Callable[[str], None]) -> dict[str, Record]:
  """The stored records valid for `target`, by trial id (recomputed if it changed).

  Records are recomputed group by group (the `group` a record names: the trials
  that ran, and were pruned, together; a record without one is its own group).
  Trials missing from the result run again.
  """
  old = stored.get("target")
  if old is None or old == str(target):
    return {r["trial"]: r for r in records}
  groups: dict[str, list[Record]] = {}
  for r in records:
    groups.setdefault(r.get("group", r["trial"]), []).append(r)
  kept = {}
  for group in groups.values():
    for r in _retarget_group(group, target, stop_at_target, prune) or []:
      kept[r["trial"]] = r
  rerun = len(records) - len(kept)
  log(f"Target changed from '{old}' (stored) to '{target}': steps to target "
      f"recomputed from the stored learning curves of {len(kept)} trial(s)"
      + (f"; {rerun} trial(s) whose curves ended early for the old target run "
         "again" if rerun else ""))
  return kept
