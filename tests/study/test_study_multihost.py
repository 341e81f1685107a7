"""`jaxtrain sweep` / `lr-find` on 2 processes x 4 CPU devices (gloo on 127.0.0.1).

Each process runs in its own directory with the same relative `--workdir`, as the
workers of a TPU pod with a local workdir do: each has its own disk. Only process 0
writes results, reports and plots; the others must finish without them.
"""
import csv
import os

import numpy as np

import processes
from jaxtrain.study import grid, lr_find

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
OVERRIDES = ["model.features=(8,)", "model.hidden=16", "study.batch_sizes=(32,)",
             "study.optimizers=('sgd',)", "study.lr_grid=(1.0,)",
             "study.warmup_epochs=(0.0,)", "study.max_steps=10", "study.eval_every=5",
             "study.eval_every_epochs=0"]
LR_FIND = ["--optimizer=sgd", "--min_lr=1e-3", "--max_lr=10", "--num_steps=10"]
SWEEP_FILES = {"results.json", "results.csv", "report.md", "steps_to_target.png",
               "best_learning_rate.png", "learning_curves.png"}


def _run_two_processes(tmp_path, command: str, *extra: str) -> list[str]:
  """Runs `jaxtrain COMMAND --workdir=out` in tmp_path/p0 and tmp_path/p1."""
  port = processes.free_port()
  cwds = [tmp_path / f"p{i}" for i in range(2)]
  for cwd in cwds:
    cwd.mkdir()
  return processes.run_together(
      [processes.jaxtrain_cmd(command, f"--config={STUDY}", "--workdir=out", *extra,
                              *(f"--config.{o}" for o in OVERRIDES),
                              *processes.multihost_flags(port, 2, i))
       for i in range(2)], processes.cpu_env(4), timeout=300, cwds=cwds)


def _written(tmp_path, i: int) -> set[str]:
  out = tmp_path / f"p{i}" / "out"
  return {f.name for f in out.iterdir() if f.is_file()} if out.exists() else set()


def test_sweep_writes_results_and_report_on_process_0_only(tmp_path):
  outs = _run_two_processes(tmp_path, "sweep")
  assert _written(tmp_path, 0) == SWEEP_FILES
  assert _written(tmp_path, 1) == set()
  assert "| sgd | 32 |" in outs[0] and "| sgd | 32 |" not in outs[1]
  assert "b32-sgd" in outs[1]  # process 1 ran the trial too


def test_lr_find_joins_the_processes_and_writes_on_process_0_only(tmp_path):
  outs = _run_two_processes(tmp_path, "lr-find", *LR_FIND)
  assert _written(tmp_path, 0) == {"lr_find.csv", "lr_find.png"}
  assert _written(tmp_path, 1) == set()
  assert "suggested learning rate" in outs[0]
  assert "suggested learning rate" not in outs[1]
  # 2 processes x 4 devices (each loading its half of every batch) = 1 x 8 devices.
  config = lr_find.range_config(grid.load(STUDY, OVERRIDES), 1e-3, 10.0, 10, "sgd")
  one = lr_find.run_range_test(config)
  with open(tmp_path / "p0" / "out" / "lr_find.csv") as f:
    rows = list(csv.DictReader(f))
  np.testing.assert_allclose([float(r["learning_rate"]) for r in rows],
                             1e-3 * 1e4 ** (np.arange(10) / 9), rtol=1e-5)
  np.testing.assert_allclose([float(r["loss"]) for r in rows], one.losses,
                             rtol=0, atol=1e-5)
