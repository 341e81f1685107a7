"""FLOPs of the train step and MFU, against FLOPs counted by hand.

The MLP below (64 inputs, hidden 512 and 512, 10 classes) is matrix multiplies plus
little else. Forward, 2 FLOPs per multiply-add: 2 * (64*512 + 512*512 + 512*10) per
example. Backward: each layer's weight gradient costs its forward again, and every
layer but the first also its input gradient (the image needs none): 2x the first
layer's forward, 3x each other layer's. Under data parallelism over 8 devices each
device runs 1/8 of the batch; the replicated SGD update, biases, ReLUs and the
softmax add ~2% on top.
"""
import json
import os
import types

import jax
import pytest

from jaxtrain import console, flops_meter, runner
from jaxtrain import loop as loop_lib
from jaxtrain.config import base_config

BATCH = 512
TPU_V4 = types.SimpleNamespace(device_kind="TPU v4", num_cores=2)  # megacore chip


def _matmul_flops_per_example() -> int:
  fwd = lambda a, b: 2 * a * b  # noqa: E731
  return 2 * fwd(64, 512) + 3 * fwd(512, 512) + 3 * fwd(512, 10)


def _config(**train):
  c = base_config()
  c.model.name, c.model.hidden_sizes = "mlp", (512, 512)
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.01
  c.train.batch_size, c.train.num_steps, c.train.log_every = BATCH, 8, 4
  c.checkpoint.every = 0
  for k, v in train.items():
    c.train[k] = v
  return c


def _train_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "train/steps_per_sec" in r]


@pytest.mark.parametrize("devices,steps_per_dispatch", [(8, 1), (8, 4), (1, 1)])
def test_logged_flops_per_step_match_the_mlp_counted_by_hand(
    tmp_path, capsys, devices, steps_per_dispatch):
  runner.train(_config(steps_per_dispatch=steps_per_dispatch), str(tmp_path),
               devices=jax.devices()[:devices])
  rows = _train_rows(tmp_path)
  assert [r["step"] for r in rows] == [4, 8]
  expected = BATCH // devices * _matmul_flops_per_example()
  for r in rows:
    # The window's FLOPs over its seconds, divided by its steps over the same
    # seconds: the per-device FLOPs of one step.
    per_step = r["train/tflops_per_device"] * 1e12 / r["train/steps_per_sec"]
    assert 1.0 <= per_step / expected < 1.04, (per_step, expected)
    assert "train/mfu" not in r  # no peak known for a CPU
  out = capsys.readouterr().out
  assert out.count("no peak FLOP/s known for device kind 'cpu'") == 1, out


def test_mfu_is_the_rate_over_train_peak_tflops(tmp_path, capsys):
  runner.train(_config(peak_tflops=0.25), str(tmp_path))
  for r in _train_rows(tmp_path):
    assert r["train/mfu"] == pytest.approx(r["train/tflops_per_device"] / 0.25)
  assert "train/mfu against 0.25 TFLOP/s per device, the train.peak_tflops" in (
      capsys.readouterr().out)


class _NoCompileClock:
  seconds = 0.0

  def close(self):
    pass


def test_rates_count_only_the_steps_timed_since_the_last_write(tmp_path,
                                                             monkeypatch):
  # A clock that moves only where this test says: 1 s per step, 100 s per
  # evaluation. Evaluating every 3 steps and logging every 4, each log's window
  # starts after the evaluation before it (steps 3, 6, 9), so it times 1, 2 and 3
  # steps in 1, 2 and 3 s; counting from the previous log instead would give
  # 4 steps in 1 s at step 4.
  clock = types.SimpleNamespace(now=0.0)
  monkeypatch.setattr(loop_lib, "time",
                      types.SimpleNamespace(perf_counter=lambda: clock.now))
  monkeypatch.setattr(console, "CompileClock", _NoCompileClock)
  dispatch, evaluate = loop_lib.Loop._dispatch, loop_lib.Loop.evaluate

  def timed_dispatch(self, state, sums, n):
    clock.now += n
    return dispatch(self, state, sums, n)

  def slow_evaluate(self, state):
    clock.now += 100.0
    return evaluate(self, state)

  monkeypatch.setattr(loop_lib.Loop, "_dispatch", timed_dispatch)
  monkeypatch.setattr(loop_lib.Loop, "evaluate", slow_evaluate)
  runner.train(_config(log_every=4, eval_every=3, num_steps=12), str(tmp_path))
  rows = _train_rows(tmp_path)
  assert [r["step"] for r in rows] == [4, 8, 12]
  flops = {r["train/tflops_per_device"] for r in rows}
  assert len(flops) == 1, flops  # the same FLOPs per step, each over 1 s
  for r in rows:
    assert r["train/steps_per_sec"] == 1.0
    assert r["train/examples_per_sec"] == BATCH


class _Compiled:
  def __init__(self, flops):
    self.flops = flops

  def cost_analysis(self):
    return {} if self.flops is None else {"flops": self.flops}


class _Lowered:
  def __init__(self, flops):
    self.flops, self.compiles = flops, 0

  def compile(self):
    self.compiles += 1
    return _Compiled(self.flops)


def test_meter_counts_each_program_once_and_divides_by_the_tpu_v4_peak():
  meter = flops_meter.FlopsMeter(TPU_V4)
  small, large = _Lowered(1e12), _Lowered(3e12)
  meter.count("batch 32", 2, lambda: small)
  meter.count("batch 32", 2, lambda: small)
  meter.count("batch 64", 1, lambda: large)  # a stage with a larger batch
  values = meter.values(seconds=0.1)
  assert small.compiles == 1 and large.compiles == 1
  # (4 * 1e12 + 3e12) FLOPs in 0.1 s = 70 TFLOP/s; of TPU v4's 275: 25.45%.
  assert values["train/tflops_per_device"] == pytest.approx(70.0)
  assert values["train/mfu"] == pytest.approx(70 / 275)
  meter.reset()
  assert meter.values(seconds=1.0) == {}  # a new window, nothing dispatched


def test_meter_logs_nothing_when_the_backend_counts_no_flops():
  meter = flops_meter.FlopsMeter(TPU_V4)
  meter.count("b", 3, lambda: _Lowered(None))
  assert meter.values(seconds=1.0) == {}
  assert "gives no FLOP count" in meter.describe()
