"""`jaxtrain eval`: a checkpoint evaluated alone gives what the run logged, and
leaves the run as it was."""
import hashlib
import json
import os

import pytest

from jaxtrain import cli

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "digits_cnn.py")
# 40 steps of the digits CNN with an EMA, evaluated (and saved) at 20 and 40.
RUN = ["--config.train.num_epochs=0", "--config.train.num_steps=40",
       "--config.train.eval_every=20", "--config.checkpoint.every=20",
       "--config.train.log_every=20", "--config.optimizer.schedule.warmup_steps=5",
       "--config.train.ema_decay=0.9"]


def _digest(workdir):
  """Every file of the run (not the compilation cache, not eval*) -> hash."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(root, f)
      rel = os.path.relpath(path, workdir)
      if rel.startswith("compile_cache") or f.startswith("eval"):
        continue
      with open(path, "rb") as fh:
        out[rel] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _logged(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {row["step"]: row for row in map(json.loads, f)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  assert cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
                   *RUN]) == 0
  return workdir


def _eval(workdir, *flags):
  return cli.main(["eval", f"--config={EXPERIMENT}", f"--workdir={workdir}", *RUN,
                   *flags])


def _read(workdir, name):
  with open(os.path.join(workdir, name), encoding="utf-8") as f:
    return json.load(f)


def test_eval_reproduces_final_and_earlier_logged_evals_and_touches_nothing(
    run, capsys):
  before = _digest(run)
  logged = _logged(run)
  capsys.readouterr()
  assert _eval(run) == 0
  out = capsys.readouterr().out
  final = _read(run, "eval_40.json")
  assert final["step"] == 40 and final["split"] == "test" and not final["ema"]
  assert final["examples"] == 360  # the digits test split, each example once
  assert "train.ema_decay=0.9" in final["config_overrides"]
  for name in ("eval/accuracy", "eval/loss", "eval/top5_accuracy"):
    assert final["metrics"][name] == logged[40][name], name  # exactly
  assert f"top-1 {logged[40]['eval/accuracy']:.4f}" in out
  assert f"loss {logged[40]['eval/loss']:.4f}" in out
  assert _eval(run, "--step=20", "--ema") == 0
  earlier = _read(run, "eval_20_ema.json")
  for name in ("eval_ema/accuracy", "eval_ema/loss", "eval_ema/top5_accuracy"):
    assert earlier["metrics"][name] == logged[20][name], name
  assert _digest(run) == before


def test_eval_of_another_split_covers_it_once(run):
  assert _eval(run, "--split=train") == 0
  result = _read(run, "eval_40_train.json")
  assert result["split"] == "train" and result["examples"] == 1437
  assert 0 < result["metrics"]["eval/accuracy"] <= 1


@pytest.mark.parametrize("flags,named", [
    (["--step=30"], "--step=30"),  # kept: 20 and 40
    (["--split=validation"], "--split='validation'"),
])
def test_bad_step_or_split_exits_2_naming_the_flag(run, capsys, flags, named):
  capsys.readouterr()
  assert _eval(run, *flags) == 2
  err = capsys.readouterr().err
  assert named in err and len(err.strip().splitlines()) == 1, err


def test_missing_workdir_exits_2(tmp_path, capsys):
  assert _eval(str(tmp_path / "nothing_here")) == 2
  err = capsys.readouterr().err
  assert "--workdir=" in err and "no checkpoints in" in err, err
  assert not os.path.exists(tmp_path / "nothing_here")


def test_ema_on_a_run_without_ema_exits_2(tmp_path, capsys):
  workdir = str(tmp_path)
  small = ["--config.model.name=mlp", "--config.train.num_steps=2",
           "--config.train.num_epochs=0", "--config.train.log_every=2",
           "--config.optimizer.schedule.warmup_steps=1"]
  assert cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
                   *small]) == 0
  capsys.readouterr()
  assert cli.main(["eval", f"--config={EXPERIMENT}", f"--workdir={workdir}",
                   *small, "--ema"]) == 2
  err = capsys.readouterr().err
  assert "--ema=True" in err and "leave out --ema" in err, err


def test_a_config_whose_model_differs_exits_2_naming_config(run, capsys):
  capsys.readouterr()
  assert _eval(run, "--config.model.name=mlp") == 2
  err = capsys.readouterr().err
  assert "--config=" in err and "does not match the checkpoint" in err, err
