"""End-to-end runs on the bundled digits: resume, devices, workdir contents."""
import json
import os

import jax
import numpy as np

from jaxtrain import runner
from jaxtrain.config import base_config


def _config(**train):
  c = base_config()
  c.model.name = "mlp"
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.05
  c.train.batch_size = 32
  c.train.num_steps = 24
  c.train.log_every = 4
  c.train.eval_every = 12
  c.checkpoint.every = 5
  c.checkpoint.async_save = True
  for k, v in train.items():
    c.train[k] = v
  return c


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def _log(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _without_timing(log):
  from jaxtrain.metrics import TIMING_KEYS
  return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in log]


def test_resumed_run_equals_straight_run_bit_for_bit(tmp_path):
  straight = runner.train(_config(), str(tmp_path / "a"))
  first = runner.train(_config(), str(tmp_path / "b"), stop_at=7)
  assert int(first.state.step) == 7
  resumed = runner.train(_config(), str(tmp_path / "b"))
  assert int(resumed.state.step) == 24
  for x, y in zip(_leaves(straight.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)
  assert _without_timing(_log(tmp_path / "a")) == _without_timing(_log(tmp_path / "b"))
  # A finished run re-run trains no more and reports the same final evaluation.
  again = runner.train(_config(), str(tmp_path / "b"))
  assert int(again.state.step) == 24
  assert again.metrics["eval/accuracy"] == straight.metrics["eval/accuracy"]


def test_eight_devices_follow_the_one_device_loss_trajectory(tmp_path):
  one = runner.train(_config(log_every=1, eval_every=0), str(tmp_path / "one"),
                     devices=jax.devices()[:1])
  eight = runner.train(_config(log_every=1, eval_every=0), str(tmp_path / "eight"))
  assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(eight.state))
  loss1 = [r["train/loss"] for r in _log(tmp_path / "one")]
  loss8 = [r["train/loss"] for r in _log(tmp_path / "eight")]
  assert len(loss1) == 24
  np.testing.assert_allclose(loss8, loss1, rtol=0, atol=1e-5)
  assert one.metrics["eval/accuracy"] == eight.metrics["eval/accuracy"]


def test_workdir_has_jsonl_tensorboard_and_kept_checkpoints(tmp_path):
  runner.train(_config(), str(tmp_path))
  log = _log(tmp_path)
  assert [r["step"] for r in log] == [4, 8, 12, 16, 20, 24]
  assert "eval/accuracy" in log[2] and "eval/accuracy" in log[-1]
  assert all(k == "step" or k.startswith(("train/", "eval/")) for r in log for k in r)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [15, 20, 24]  # keep=3 newest
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
  events.Reload()
  losses = [e.value for e in events.Scalars("train/loss")]
  np.testing.assert_allclose(losses, [r["train/loss"] for r in log], rtol=1e-6)


def test_block_dispatch_matches_single_steps_and_resumes_bit_for_bit(tmp_path):
  single = runner.train(_config(log_every=6, eval_every=0), str(tmp_path / "k1"))
  blocks = runner.train(_config(log_every=6, eval_every=0, steps_per_dispatch=4),
                        str(tmp_path / "k4"))
  for x, y in zip(_leaves(single.state.params), _leaves(blocks.state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # Stopped mid-block (step 7 of blocks 4,2 | 4,2 | ...) and resumed: same bits.
  first = runner.train(_config(log_every=6, eval_every=0, steps_per_dispatch=4),
                       str(tmp_path / "k4b"), stop_at=7)
  assert int(first.state.step) == 7
  resumed = runner.train(_config(log_every=6, eval_every=0, steps_per_dispatch=4),
                         str(tmp_path / "k4b"))
  for x, y in zip(_leaves(blocks.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)
  assert _without_timing(_log(tmp_path / "k4")) == _without_timing(
      _log(tmp_path / "k4b"))


def test_profile_steps_write_a_trace(tmp_path):
  runner.train(_config(num_steps=6, log_every=3, eval_every=0, profile_steps=(2, 4)),
               str(tmp_path), devices=jax.devices()[:1])
  traces = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "profile")
            for f in fs if f.endswith((".xplane.pb", ".trace.json.gz"))]
  assert traces, list(os.walk(tmp_path))


def test_linear_lr_scaling_reads_the_train_batch_size():
  # Goyal et al. 2017: peak LR = base LR x batch / base batch (0.05 x 32/8).
  c = _config()
  c.optimizer.lr_scaling, c.optimizer.base_batch_size = "linear", 8
  experiment = runner.build(c, jax.devices()[:1])
  np.testing.assert_allclose(float(experiment.lr_schedule(0)), 0.05 * 32 / 8, rtol=1e-6)
