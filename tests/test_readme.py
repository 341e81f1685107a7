"""The README's code runs and its commands exist."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import processes

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _text():
  with open(README, encoding="utf-8") as f:
    return f.read()


def test_optimizer_composition_example_runs_and_descends():
  block = _block_after("## Composing optimizers")
  namespace = {}
  exec(block, namespace)  # pylint: disable=exec-used
  # LARS excludes the 1-D bias from trust ratio and decay: plain momentum step with
  # the warmup LR of step 0 (0 * 2.0 / 5 = 0), so the bias has not moved; w has not
  # either, for the same reason. One more step at LR 2.0 * 1/5 moves both down.
  tx, params, grads, state = (namespace[k] for k in ("tx", "params", "grads", "state"))
  import optax  # pylint: disable=g-import-not-at-top
  updates, _ = tx.update(grads, state, params)
  moved = optax.apply_updates(params, updates)
  assert np.all(np.asarray(moved["b"]) < np.asarray(params["b"]))
  assert np.all(np.asarray(moved["w"]) < np.asarray(params["w"]))


def test_quickstart_names_files_that_exist():
  text = _text()
  for path in re.findall(r"--config=(experiments/[\w/]+\.py)", text):
    assert os.path.exists(os.path.join(os.path.dirname(README), path)), path


# --- the first hour: commands and code the README gives a new user -----------------

ROOT = os.path.dirname(README)


def _block_after(heading):
  """The first code block after a heading (or any other anchor text)."""
  text = _text().split(heading, 1)[1]
  return re.search(r"```\w*\n(.*?)```", text, flags=re.S).group(1)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A short run of the quickstart's experiment, as the README starts it."""
  workdir = str(tmp_path_factory.mktemp("digits_cnn"))
  subprocess.run(processes.jaxtrain_cmd(
      "train", "--config=experiments/digits_cnn.py", f"--workdir={workdir}",
      "--config.train.num_epochs=0", "--config.train.num_steps=60"),
      env=processes.cpu_env(1), cwd=ROOT, check=True, capture_output=True, timeout=600)
  return workdir


def test_using_a_trained_model_gives_the_runs_own_accuracy(digits_run, capsys):
  snippet = _block_after("## Using a trained model")
  assert 'workdir = "/tmp/digits_cnn"' in snippet  # the quickstart's workdir
  namespace = {}
  exec(snippet.replace("/tmp/digits_cnn", digits_run), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  with open(os.path.join(digits_run, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  assert last["step"] == namespace["step"] == 60
  assert printed == f"step 60: test accuracy {namespace['accuracy']:.4f}\n"
  # jaxtrain's evaluation (padded batches, masks) and the README's plain apply see
  # the same 360 test images: the same accuracy, give or take one image's rounding.
  assert abs(namespace["accuracy"] - last["eval/accuracy"]) <= 1 / 360 + 1e-6


def test_eval_command_reproduces_the_runs_final_evaluation(digits_run):
  command = _block_after("## Evaluating a checkpoint").strip()
  assert command == ("jaxtrain eval --config=experiments/digits_cnn.py "
                     "--workdir=/tmp/digits_cnn")
  args = command.replace("/tmp/digits_cnn", digits_run).split()[1:]
  proc = subprocess.run(processes.jaxtrain_cmd(*args), env=processes.cpu_env(1),
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(digits_run, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  with open(os.path.join(digits_run, f"eval_{last['step']}.json")) as f:
    result = json.load(f)
  assert result["metrics"]["eval/accuracy"] == last["eval/accuracy"]
  assert result["metrics"]["eval/loss"] == last["eval/loss"]
  assert f"top-1 {last['eval/accuracy']:.4f}" in proc.stdout


def test_tensorboard_command_reads_the_runs_event_files(digits_run):
  command = re.search(r"\.venv/bin/(tensorboard --logdir=\S+)",
                      _block_after("point it at the run")).group(1)
  assert command == "tensorboard --logdir=/tmp/digits_cnn/tb"
  tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
  proc = subprocess.run([tensorboard, "--inspect",
                         f"--logdir={digits_run}/tb"], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "train/loss" in proc.stdout and "eval/accuracy" in proc.stdout


def test_compile_for_cpu_8_runs_as_written_without_xla_flags():
  command = re.search(r"`(jaxtrain compile --config=experiments/digits_cnn.py "
                      r"--topology=cpu:8)`", _text()).group(1)
  env = {k: v for k, v in processes.cpu_env(1).items() if k != "XLA_FLAGS"}
  proc = subprocess.run(processes.jaxtrain_cmd(*command.split()[1:]), env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert "FLOPs per step" in proc.stdout
  assert "in all" in proc.stdout  # the per-device and the 8 devices' total


def test_fast_subsets_select_what_the_readme_says():
  block = _block_after("While working, run less:")
  commands = [line.split("#")[0].split() for line in block.splitlines() if line]
  assert [c[:3] for c in commands] == [[".venv/bin/pytest", "-q", "-m"]] * 2 + [
      [".venv/bin/pytest", "-q", "tests/test_cli.py"]]
  proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                         "-m", "quick"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:]
  files = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
  assert "tests/test_console.py" in files and "tests/test_cli_startup.py" in files
  assert not any(f.startswith("notebooks") for f in files)


def test_the_notebooks_named_are_the_notebooks_there():
  named = set(re.findall(r"`(notebooks/[\w.]+\.ipynb)`", _text()))
  there = {f"notebooks/{f}" for f in os.listdir(os.path.join(ROOT, "notebooks"))
           if f.endswith(".ipynb")}
  assert named == there
  assert "jupyter lab notebooks/" in _text()


@pytest.mark.slow  # three commands in fresh processes: ~90 s on 2 busy cores
def test_your_own_optimizer_is_the_experiment_files_and_trains_and_sweeps(tmp_path):
  """The README's Signum is the experiment file's; its train and sweep commands run
  (shortened), the sweep's two momenta as one vectorized group."""
  snippet = _block_after("## Your own optimizer")
  with open(os.path.join(ROOT, "experiments", "digits_signum.py")) as f:
    assert snippet in f.read()
  commands = [line.split() for line in _block_after("Train it, sweep it").splitlines()]
  assert [c[:2] for c in commands] == [["jaxtrain", "train"], ["jaxtrain", "sweep"],
                                       ["jaxtrain", "optim-summary"]]
  short = {"train": ["--config.train.num_epochs=0", "--config.train.num_steps=60"],
           "sweep": ["--config.study.batch_sizes=(128,)",
                     "--config.study.lr_grid=(1.0,)",
                     "--config.study.max_steps=16", "--config.study.eval_every=8"],
           "optim-summary": []}
  outputs = {}
  for command in commands:
    argv = [a.replace("/tmp/", f"{tmp_path}/") for a in command[1:]]
    proc = subprocess.run(processes.jaxtrain_cmd(*argv, *short[command[1]]),
                          env=processes.cpu_env(1), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs[command[1]] = proc.stdout
  with open(tmp_path / "digits_signum" / "metrics.jsonl") as f:
    log = [json.loads(line) for line in f]
  assert log[-1]["step"] == 60 and log[-1]["eval/accuracy"] > 0.5  # 10 classes
  assert "[1/1] batch 128, signum, 2 trials" in outputs["sweep"]
  with open(tmp_path / "signum_study" / "results.json") as f:
    trials = json.load(f)["trials"]
  assert sorted(t["momentum"] for t in trials) == [0.9, 0.99]
  assert outputs["optim-summary"].startswith(
      "optimizer: signum (plug-in _jaxtrain_experiment_digits_signum.signum, "
      "kwargs {'momentum': 0.9})")
