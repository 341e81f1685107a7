"""report.md's scaling regimes on hand-made results: boundaries at the grid's edge
are said to be edges, and the thresholds are stated."""
from jaxtrain.study import report


def _records(optimizer, steps_by_batch):
  return [{"trial": f"{optimizer}-{b}", "optimizer": optimizer, "batch_size": b,
           "status": "reached", "diverged": False, "wall_time_s": 1.0,
           "group_size": 1, "steps_to_target": s, "examples_to_target": s * b,
           "learning_rate": 0.1, "warmup_steps": 0}
          for b, s in steps_by_batch.items()]


# The study: efficiency at 64 is 1000 * 16 / (64 * 400) = 0.625 < 0.7, so
# perfect scaling ends at the smallest batch tried; steps still fall 42% from 64 to
# 256 (400 -> 232), so 256 is useful only as far as the grid goes.
SGD = _records("sgd", {16: 1000, 64: 400, 256: 232})
# Interior boundaries: efficiency 1.0, 0.95 (64), then 200 steps at 128 = 0.5;
# 210 steps at 64 is within 10% of the 195 at 256.
MOMENTUM = _records("momentum", {16: 800, 32: 400, 64: 210, 128: 200, 256: 195})
# Perfect scaling throughout: both boundaries are the largest batch tried.
ADAM = _records("adam", {16: 800, 32: 400, 64: 200})


def test_regimes_at_the_grids_edge_are_marked():
  regimes = report.scaling_regimes(report.summary_rows(SGD + MOMENTUM + ADAM))
  assert regimes["sgd"]["perfect_until"] == 16
  assert regimes["sgd"]["perfect_edge"] == "smallest"
  assert regimes["sgd"]["max_useful"] == 256
  assert regimes["sgd"]["useful_edge"] == "largest"
  assert abs(regimes["sgd"]["last_gain"] - (1 - 232 / 400)) < 1e-12
  assert (regimes["momentum"]["perfect_until"], regimes["momentum"]["max_useful"]) == (
      64, 64)
  assert regimes["momentum"]["perfect_edge"] is None
  assert regimes["momentum"]["useful_edge"] is None
  assert (regimes["adam"]["perfect_edge"], regimes["adam"]["useful_edge"]) == (
      "largest", "largest")


def test_report_says_which_boundaries_are_edges_and_states_the_thresholds():
  text = report.markdown({"target": "eval/accuracy >= 0.95"}, SGD + MOMENTUM + ADAM)
  assert ("- sgd: perfect scaling up to batch size 16 (smallest tried; efficiency "
          "is already 0.62 at 64); maximal useful batch size 256 (largest tried; "
          "not reached: steps still fell 42% from 64 to 256)") in text
  assert ("- momentum: perfect scaling up to batch size 64; maximal useful batch "
          "size 64\n") in text
  assert ("- adam: perfect scaling up to batch size 64 (largest tried; not "
          "reached: efficiency >= 0.7 throughout); maximal useful batch size 64 "
          "(largest tried; not reached: steps still fell 50% from 32 to 64)") in text
  assert "efficiency first falls below 0.7" in text
  assert "within 10% of the fewest at any larger batch size" in text


def test_one_batch_size_reaching_the_target_gives_no_regimes():
  text = report.markdown({}, _records("sgd", {32: 100}))
  assert "- sgd: only batch size 32 reached the target; no regimes" in text
