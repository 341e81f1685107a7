"""Real multi-process JAX on one machine: 2 processes x 4 CPU devices over gloo.

The same runtime path a TPU pod takes (`jax.distributed.initialize`, per-process data
loading assembled into global arrays, multi-host Orbax checkpoints), checked against
1 process x 8 devices, and checkpoints moved between the two layouts.
"""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import processes

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
FLAGS = ["--config.train.num_steps=24", "--config.train.num_epochs=0",
         "--config.train.batch_size=64", "--config.train.log_every=6",
         "--config.train.eval_every=12", "--config.checkpoint.every=12",
         "--config.optimizer.schedule.warmup_steps=4"]


def _cmd(workdir, *extra):
  return processes.jaxtrain_cmd("train", f"--config={EXPERIMENT}",
                                f"--workdir={workdir}", *FLAGS, *extra)


def _run_one_process(workdir):
  proc = subprocess.run(_cmd(workdir), env=processes.cpu_env(8), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def _run_two_processes(workdir):
  port = processes.free_port()
  return processes.run_together(
      [_cmd(workdir, *processes.multihost_flags(port, 2, i)) for i in range(2)],
      processes.cpu_env(4), timeout=600)


def _log(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final(workdir):
  return {k: v for k, v in _log(workdir)[-1].items()
          if k.startswith("eval/") or k in ("train/loss", "train/accuracy")}


def _keep_until(src, dst, step):
  """A copy of workdir `src` that ends at its checkpoint of `step`."""
  shutil.copytree(src, dst)
  ckpt = os.path.join(dst, "checkpoints")
  for d in os.listdir(ckpt):
    if d.isdigit() and int(d) > step:
      shutil.rmtree(os.path.join(ckpt, d))


def _assert_close(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_two_processes_match_one_process_and_share_checkpoints(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _run_one_process(one)
  outs = _run_two_processes(two)
  # Only process 0 writes logs; both trained.
  assert "step 24/24" in outs[0] and "step 24/24" not in outs[1]
  _assert_close(_final(one), _final(two))

  # 2-process checkpoint -> 1 process (resharded from 2x4 onto 8 local devices).
  _keep_until(two, tmp_path / "two_then_one", 12)
  out = _run_one_process(tmp_path / "two_then_one")
  assert "Resumed from the checkpoint at step 12" in out
  _assert_close(_final(one), _final(tmp_path / "two_then_one"))

  # 1-process checkpoint -> 2 processes.
  _keep_until(one, tmp_path / "one_then_two", 12)
  outs = _run_two_processes(tmp_path / "one_then_two")
  assert "Resumed from the checkpoint at step 12" in outs[0]
  _assert_close(_final(one), _final(tmp_path / "one_then_two"))
