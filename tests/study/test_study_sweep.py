"""`jaxtrain sweep` / `report` end to end on a tiny digits study; resume."""
import contextlib
import csv
import io
import os

import pytest

from jaxtrain import cli
from jaxtrain.study import grid, report, results, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
# SGD at batch 16 and 32; learning rates 0.8 * sqrt(b / 64) * (0.01, 1, 1000): too
# slow (pruned once the middle one reaches the target), right, diverging.
OVERRIDES = ["model.features=(8,)", "model.hidden=16", "study.batch_sizes=(16, 32)",
             "study.optimizers=('sgd',)",
             "study.optimizer_configs.sgd.learning_rate=0.8",
             "study.lr_grid=(0.01, 1.0, 1000.0)", "study.warmup_epochs=(0.0,)",
             "study.target=eval/accuracy >= 0.4", "study.max_steps=80",
             "study.eval_every=5", "study.eval_every_epochs=0"]


class _StopInSecondGroup:
  """A preemption watcher asking to stop at step 3 of the second group."""

  def __init__(self):
    self.groups = 0

  def should_stop(self, step):
    self.groups += step == 1
    return self.groups == 2 and step == 3


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
  """A sweep stopped in its second group, then resumed with `jaxtrain sweep`."""
  workdir = str(tmp_path_factory.mktemp("sweep"))
  partial = sweep.run_study(grid.load(STUDY, OVERRIDES), workdir,
                      watcher=_StopInSecondGroup(), log=lambda line: None)
  argv = ["sweep", f"--config={STUDY}", f"--workdir={workdir}"]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(argv + [f"--config.{o}" for o in OVERRIDES]) == 0
  return workdir, partial, out.getvalue()


def test_trials_record_steps_to_target_pruning_and_divergence(resumed):
  workdir = resumed[0]
  _, records = results.load_results(workdir)
  assert [(r["batch_size"], r["status"]) for r in records] == [
      (16, "pruned"), (16, "reached"), (16, "diverged"),
      (32, "pruned"), (32, "reached"), (32, "diverged")]
  for r in records:
    reached = r["status"] == "reached"
    assert (r["steps_to_target"] is not None) == reached
    if reached:
      first = next(p["step"] for p in r["curve"] if p["eval/accuracy"] >= 0.4)
      assert r["steps_to_target"] == first == r["steps_run"]
      assert r["examples_to_target"] == first * r["batch_size"]
      assert r["final"]["eval/accuracy"] >= 0.4
    else:
      assert r["examples_to_target"] is None and r["steps_run"] <= 80
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [row["trial"] for row in rows] == [r["trial"] for r in records]
  assert rows[0]["steps_to_target"] == "" and "final/eval/accuracy" in rows[0]


def test_report_regenerates_plots_and_the_summary_table(resumed, capsys):
  workdir = resumed[0]
  for name in ("steps_to_target.png", "best_learning_rate.png",
               "learning_curves.png", "report.md"):
    os.remove(os.path.join(workdir, name))
  assert cli.main(["report", workdir]) == 0
  out = capsys.readouterr().out
  for name in ("steps_to_target.png", "best_learning_rate.png",
               "learning_curves.png", "report.md"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  _, records = results.load_results(workdir)
  best = {r["batch_size"]: r for r in records if r["status"] == "reached"}
  assert f"| sgd | 16 | {best[16]['steps_to_target']} |" in out
  rows = report.summary_rows(records)
  want = (best[16]["steps_to_target"] * 16) / (32 * best[32]["steps_to_target"])
  assert rows[1]["efficiency"] == pytest.approx(want, abs=1e-3)
  assert cli.main(["report", os.path.join(workdir, "missing")]) == 2


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(resumed):
  workdir, partial, out = resumed
  assert [r["batch_size"] for r in partial] == [16, 16, 16]  # the first group
  assert "Resuming: 3 of 6 trials already in" in out
  assert [line[:6] for line in out.splitlines() if line.startswith("[")] == [
      "[1/1] "]  # only the second group ran again
  _, records = results.load_results(workdir)
  assert len(records) == 6
  by_id = {r["trial"]: r for r in records}
  for r in partial:  # kept as they were, not run again
    assert by_id[r["trial"]] == r


def _without_timing(records):
  return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


def test_rerun_with_another_target_recomputes_from_the_stored_curves(resumed,
                                                                     tmp_path):
  """The issue's case: a study run for one target, re-run in the same workdir for
  another, ends with the records a fresh run for that target writes."""
  workdir = str(tmp_path)
  stricter = [o for o in OVERRIDES if not o.startswith("study.target")]
  sweep.run_study(grid.load(STUDY, [*stricter, "study.target=eval/accuracy >= 0.6"]),
            workdir, log=lambda line: None)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(["sweep", f"--config={STUDY}", f"--workdir={workdir}",
                     *(f"--config.{o}" for o in OVERRIDES)]) == 0
  out = out.getvalue()
  assert ("Target changed from 'eval/accuracy >= 0.6' (stored) to 'eval/accuracy "
          ">= 0.4': steps to target recomputed from the stored learning curves of "
          "6 trial(s)") in out
  assert not [line for line in out.splitlines() if line.startswith("[")]  # no run
  header, records = results.load_results(workdir)
  _, fresh = results.load_results(resumed[0])  # run for 0.4 from the start
  assert header["target"] == "eval/accuracy >= 0.4"
  assert _without_timing(records) == _without_timing(fresh)
  with open(os.path.join(workdir, "report.md")) as f:
    assert f.readline().startswith("# Scaling study: steps to eval/accuracy >= 0.4")


@pytest.mark.parametrize("override,message", [
    ("model.hidden=8", "another experiment config (model.hidden 16 -> 8)"),
    ("study.batch_sizes=(32,)", "3 trial(s) not in this study's grid"),
    ("study.divergence_loss=5.0", "study.divergence_loss 0.0 -> 5.0"),
])
def test_rerun_of_another_study_in_the_same_workdir_is_refused(resumed, override,
                                                               message, capsys):
  workdir = resumed[0]
  before = open(os.path.join(workdir, "results.json")).read()
  code = cli.main(["sweep", f"--config={STUDY}", f"--workdir={workdir}",
                   *(f"--config.{o}" for o in [*OVERRIDES, override])])
  err = capsys.readouterr().err
  assert code == 2, err
  assert len(err.strip().splitlines()) == 1 and message in err, err
  assert open(os.path.join(workdir, "results.json")).read() == before


def test_a_target_on_a_metric_the_trials_do_not_report_is_refused(tmp_path, capsys):
  code = cli.main(["sweep", f"--config={STUDY}", f"--workdir={tmp_path}",
                   *(f"--config.{o}" for o in OVERRIDES),
                   "--config.study.target=eval/top1 >= 0.5"])
  err = capsys.readouterr().err
  assert code == 2 and "config.study.target='eval/top1 >= 0.5'" in err, err
  assert "eval/accuracy" in err
  assert not os.path.exists(tmp_path / "results.json")
