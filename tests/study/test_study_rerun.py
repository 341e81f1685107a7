"""A sweep re-run in the same workdir: recomputed for another target, refused for
another study, on hand-made results (the end-to-end case is in test_study_sweep)."""
import pytest

from jaxtrain.errors import ConfigError
from jaxtrain.study import rerun, targets

EVERY, BUDGET, BATCH = 10, 50, 16


def _record(trial, accuracies, status, group="g", diverged=False):
  curve = [{"step": EVERY * (i + 1), "eval/accuracy": a, "train/loss": 1.0}
           for i, a in enumerate(accuracies)]
  return {"trial": trial, "batch_size": BATCH, "num_steps": BUDGET, "group": group,
          "status": status, "diverged": diverged, "curve": curve,
          "steps_run": curve[-1]["step"], "final": dict(curve[-1]),
          "steps_to_target": None, "examples_to_target": None, "wall_time_s": 1.0}


# Stored for 'eval/accuracy >= 0.9' with stop_at_target and pruning: A reached it
# at step 40 and ended; B was pruned then; C diverged at 20; D ran alone to its
# budget without reaching it.
STORED = {"target": "eval/accuracy >= 0.9"}
RECORDS = [_record("A", [0.2, 0.5, 0.7, 0.9], "reached"),
           _record("B", [0.1, 0.3, 0.5, 0.8], "pruned"),
           _record("C", [0.1, 0.1], "diverged", diverged=True),
           _record("D", [0.1, 0.2, 0.3, 0.4, 0.5], "not_reached", group="D")]


def _reuse(target, log=None):
  lines = [] if log is None else log
  return rerun.reuse(STORED, RECORDS, targets.parse(target), stop_at_target=True,
                     prune=True, log=lines.append)


def test_a_looser_target_is_recomputed_as_a_fresh_run_would_record_it():
  lines = []
  got = _reuse("eval/accuracy >= 0.6", lines)
  # A meets 0.6 first, at step 30 (0.7), and stops there; B has not met it by
  # then (0.5) and is pruned at 30; C diverged at 20, before; D: 0.5 at most.
  assert (got["A"]["status"], got["A"]["steps_to_target"]) == ("reached", 30)
  assert got["A"]["examples_to_target"] == 30 * BATCH
  assert got["A"]["steps_run"] == 30 and len(got["A"]["curve"]) == 3
  assert got["A"]["final"]["eval/accuracy"] == 0.7
  assert (got["B"]["status"], got["B"]["steps_run"]) == ("pruned", 30)
  assert got["B"]["steps_to_target"] is None
  assert got["C"]["status"] == "diverged" and got["C"]["diverged"]
  assert got["D"]["status"] == "not_reached"
  assert lines == ["Target changed from 'eval/accuracy >= 0.9' (stored) to "
                   "'eval/accuracy >= 0.6': steps to target recomputed from the "
                   "stored learning curves of 4 trial(s)"]


def test_a_target_the_stored_curves_cannot_judge_reruns_the_group():
  lines = []
  got = _reuse("eval/accuracy >= 0.95", lines)
  # A stopped at 40 for 0.9 and B was pruned: whether either would reach 0.95 in
  # the remaining 10 steps is unknown, so their group runs again. D ran its whole
  # budget: not reached, known.
  assert sorted(got) == ["D"] and got["D"]["status"] == "not_reached"
  assert "3 trial(s) whose curves ended early for the old target run again" in lines[0]


def test_pruning_is_reapplied_and_without_it_every_reacher_counts():
  got = _reuse("eval/accuracy >= 0.5")
  assert got["A"]["steps_to_target"] == 20
  assert got["B"]["status"] == "pruned" and got["B"]["steps_run"] == 20
  got = rerun.reuse(STORED, RECORDS, targets.parse("eval/accuracy >= 0.5"),
                    stop_at_target=False, prune=False, log=lambda line: None)
  assert got["B"]["steps_to_target"] == 30 and got["B"]["curve"] == RECORDS[1]["curve"]


def test_the_same_target_keeps_the_records_as_stored():
  assert _reuse("eval/accuracy >= 0.9") == {r["trial"]: r for r in RECORDS}


HEADER = {"target": "eval/accuracy >= 0.9", "experiment": {"model": {"hidden": 16}},
          "study": {"batch_sizes": [16, 32], "divergence_loss": 0.0,
                    "stop_at_target": True, "prune": True}}


def test_another_experiment_is_refused_naming_the_changes():
  new = {**HEADER, "experiment": {"model": {"hidden": 8}}}
  with pytest.raises(ConfigError) as e:
    rerun.check_same_study(HEADER, new, RECORDS, ["A", "B", "C", "D"], "W/results.json")
  assert e.value.field == "--workdir"
  assert "another experiment config (model.hidden 16 -> 8)" in str(e.value)
  assert "new --workdir" in str(e.value)


def test_other_outcome_rules_are_refused():
  new = {**HEADER, "study": {**HEADER["study"], "divergence_loss": 5.0}}
  with pytest.raises(ConfigError, match=r"study.divergence_loss 0.0 -> 5.0"):
    rerun.check_same_study(HEADER, new, RECORDS, ["A", "B", "C", "D"], "W")


def test_a_grid_dropping_stored_trials_is_refused_one_growing_is_not():
  new = {**HEADER, "study": {**HEADER["study"], "batch_sizes": [32]}}
  with pytest.raises(ConfigError) as e:
    rerun.check_same_study(HEADER, new, RECORDS, ["A", "B"], "W")
  assert "2 trial(s) not in this study's grid" in str(e.value)
  assert "study.batch_sizes (16, 32) -> (32,)" in str(e.value)
  rerun.check_same_study(HEADER, HEADER, RECORDS, ["A", "B", "C", "D", "E"], "W")
