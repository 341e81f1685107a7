"""What a run prints: the header before compiling, steps/s without compile time, and
the end-of-run summary, checked against the run's own files (metrics.jsonl,
checkpoints) and independent counts."""
import contextlib
import io
import json
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import console, runner
from jaxtrain.config import base_config
from jaxtrain.models.mlp import MLP
from jaxtrain.models.registry import register

TRACE_SLEEP_S = 2.0


@register("mlp_slow_to_trace")
class MlpSlowToTrace(MLP):
  """The MLP, but tracing its training forward pass takes 2 s more (the Python of
  a module runs only while jit traces it): a compile time known to dwarf the
  steps, however busy the machine."""

  def __call__(self, x, train=False):
    if train:
      time.sleep(TRACE_SLEEP_S)
    return super().__call__(x, train)


def _config(**train):
  c = base_config()
  c.model.name = "mlp_slow_to_trace"
  c.mesh.data = 8
  c.train.batch_size = 32
  c.train.num_steps = 60
  c.train.log_every = 20
  c.train.eval_every = 20
  c.checkpoint.every = 0
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One short run; its console output, workdir and result."""
  workdir = str(tmp_path_factory.mktemp("console"))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = runner.train(_config(), workdir, name="experiments/x.py")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return out.getvalue().splitlines(), workdir, result, rows


def test_header_comes_before_compiling_and_says_what_runs_where(run):
  lines, workdir, result, _ = run
  compiling = lines.index("Compiling the train step...")
  head = "\n".join(lines[:compiling])
  assert lines[0] == "jaxtrain train: experiments/x.py"
  # The parameter count, counted here from the trained parameters.
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(result.state.params))
  assert f"{count:,}" in head
  assert "data digits (1,437 train / 360 eval examples)" in head
  assert "batch 32, 60 steps" in head
  assert "devices: 8 x cpu in 1 process; mesh data=8 fsdp=1 model=1" in head
  assert f"workdir: {workdir}" in head
  assert not any(line.startswith("step ") for line in lines[:compiling])


def test_first_window_steps_per_sec_leaves_out_the_compile(run):
  lines, _, _, rows = run
  compiled = next(line for line in lines if line.startswith("Compiled in "))
  seconds = float(re.search(r"Compiled in ([\d.]+) s", compiled).group(1))
  first = next(r for r in rows if "train/steps_per_sec" in r)
  # The first window (20 steps) holds the train step's compile, which sleeps 2 s
  # while tracing: had that time been counted, its rate could not exceed 20 steps
  # / compile seconds. The 20 steps of this MLP take a fraction of those 2 s.
  assert seconds >= TRACE_SLEEP_S
  assert first["train/steps_per_sec"] > 20 / seconds
  progress = next(line for line in lines if line.startswith(f"step {first['step']}/"))
  eta = re.search(r"ETA (\d+):(\d\d):(\d\d)", progress).groups()
  h, m, s = (int(x) for x in eta)
  expected = (60 - first["step"]) / first["train/steps_per_sec"]
  assert abs(3600 * h + 60 * m + s - expected) <= 0.5 + 1e-9


def test_summary_names_final_and_best_metrics_checkpoint_and_tensorboard(run):
  lines, workdir, result, rows = run
  start = next(i for i, line in enumerate(lines) if line.startswith("Finished: "))
  summary = lines[start:]
  assert summary[0].startswith("Finished: step 60/60 in ")
  last = rows[-1]
  assert last["step"] == 60
  assert f"eval/accuracy {last['eval/accuracy']:.4f}" in summary[1]
  assert f"train/loss {last['train/loss']:.4f}" in summary[1]
  evals = [(r["eval/accuracy"], r["step"]) for r in rows if "eval/accuracy" in r]
  best_acc = max(a for a, _ in evals)
  best_step = min(s for a, s in evals if a == best_acc)
  assert summary[2] == f"  best eval/accuracy: {best_acc:.4f} at step {best_step}"
  checkpoint = os.path.join(workdir, "checkpoints", "60")
  assert summary[3].startswith(f"  checkpoint: {checkpoint} ")
  assert os.path.isdir(checkpoint)
  assert summary[4].endswith(f"tensorboard --logdir={workdir}/tb")
  assert result.metrics["eval/accuracy"] == pytest.approx(last["eval/accuracy"])


def test_best_eval_picks_the_earliest_best_and_follows_the_mode():
  rows = [{"step": 10, "eval/loss": 0.5, "eval/accuracy": 0.8},
          {"step": 20, "train/loss": 0.1},
          {"step": 30, "eval/loss": 0.3, "eval/accuracy": 0.9},
          {"step": 40, "eval/loss": 0.4, "eval/accuracy": 0.9}]
  assert console.best_eval(rows) == ("eval/accuracy", 30, 0.9)
  assert console.best_eval(rows, "eval/loss", "min") == ("eval/loss", 30, 0.3)
  assert console.best_eval([{"step": 5, "eval/loss": 2.0}]) == ("eval/loss", 5, 2.0)
  assert console.best_eval([{"step": 5, "train/loss": 2.0}]) is None


def test_compile_clock_counts_compiles_only_while_open():
  clock = console.CompileClock()
  try:
    f = jax.jit(lambda x: jnp.sin(x) * 3 + x @ x.T)
    x = jnp.ones((64, 64))
    f(x).block_until_ready()
    compiled = clock.seconds
    assert compiled > 0
    for _ in range(3):
      f(x).block_until_ready()  # cached: no compile
    assert clock.seconds == compiled
    f(jnp.ones((32, 32))).block_until_ready()  # a new shape compiles again
    assert clock.seconds > compiled
  finally:
    clock.close()
  after = clock.seconds
  jax.jit(lambda x: x * 5 - 1)(jnp.ones(7)).block_until_ready()
  assert clock.seconds == after
  assert math.isfinite(after)
