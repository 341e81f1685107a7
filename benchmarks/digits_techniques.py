"""Training techniques of issue #10, measured on the bundled digits; one table.

    python benchmarks/digits_techniques.py                    # all four, seeds 0,1,2
    python benchmarks/digits_techniques.py --only=distill --seeds=0,1,2,3,4

1. `distill`: knowledge distillation (Hinton et al. 2015, arXiv 1503.02531). The
   teacher is `experiments/digits_cnn.py` (seed 0), trained once; the student is
   `experiments/digits_distill.py` (an MLP with one hidden layer of 32), trained
   alone (`:alone`, labels only) and distilled (T = 4, 0.9 * T^2 KL + 0.1 * CE), for
   each seed. Pass: the distilled mean beats the alone mean.
2. `mixup`: `experiments/digits_mixup.py` variants (the digits CNN for 15 epochs
   with mixup(0.2), cutmix(1.0) and both in one chain with timm's per-pair switch,
   and loss.label_smoothing=0.1). Pass: >= 97% test accuracy each.
3. `early_stopping`: the digits CNN evaluated every 25 steps with
   `train.early_stopping.metric=eval/accuracy`, patience 4. Pass: it stops before
   the last step, ends with the best step's state (`state.step`), and that state,
   evaluated again here, gives the accuracy and loss logged at the best step.
4. `stages`: progressive resizing with a growing batch, `train.stages =
   ((0, 6, 32), (300, 0, 64))`: 6x6 images (`random_crop(8, padding=1)|resize(8)`
   resized to 6) in batches of 32, then 8x8 in batches of 64, on a ResNet-8
   (`cifar_resnet`, global pooling, so it takes both sizes). Pass: one stage
   message, two compiles of the train step (`jax_log_compiles`), the logged LR at
   the boundary equal to the warmup-cosine formula computed here, the optimizer's
   step count at the end equal to the run's steps (never restarted), and the
   batches either side of the switch reading consecutive positions of the same
   shuffled stream as an unstaged run.

Runs are single-process on the default (one) CPU device; the runner's console log
goes to `<workdir>.log` (kept with --keep). Every run is deterministic: a re-run
prints the same figures. Measured 2026-11-22 on 2 shared CPU cores (load ~9),
wall time 308 s (distill 141 s, mixup 94 s, early stopping 19 s, stages 52 s):

  distillation: teacher digits_cnn seed 0                  99.72%
    student MLP-32 alone, seeds 0,1,2                      mean 91.30% (90.0 92.8 91.1)
    student distilled, T=4, soft weight 0.9                mean 94.44% (94.4 94.4 94.4)
  CNN 15 epochs, shifts only (baseline)                    100.00% (train loss 0.038)
    + mixup(0.2)                                           100.00% (train loss 0.525)
    + cutmix(1.0)                                          98.89% (train loss 1.222)
    + mixup(0.2)|cutmix(1.0)                               99.44% (train loss 0.883)
    + loss.label_smoothing=0.1                             100.00% (train loss 0.626)
  early stopping: eval/accuracy every 25, patience 4       stopped 250/674, best step
                                                           150 99.44%, re-eval 99.44%
  stages: ResNet-8, 6px b32 -> 8px b64 after step 300/600  99.44%, 1 switch, 2 compiles

The three distilled students are different networks that each miss 20 of the 360
test images (eval losses 0.187 / 0.197 / 0.161; the sets of misclassified images
differ), against 36 / 26 / 32 misses alone. Boundary LRs (logged = formula):
step 299 0.057681, 300 0.057398 (last batch of 32), 301 0.057116, 302 0.056833.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")
SECTIONS = ("distill", "mixup", "early_stopping", "stages")
Row = tuple[str, str, str, str]  # technique, setting, result, check


def _experiment(spec: str):
  from jaxtrain import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load(os.path.join(EXPERIMENTS, spec))


def _train(config, workdir: str, **kwargs):
  """runner.train with its console log in `workdir`.log; returns (result, log)."""
  from jaxtrain import runner  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = runner.train(config, workdir, **kwargs)
  with open(workdir + ".log", "w", encoding="utf-8") as f:
    f.write(out.getvalue())
  return result, out.getvalue()


def _read_log(workdir: str) -> list[dict[str, float]]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _pct(x: float) -> str:
  return f"{100 * x:.2f}%"


def _ok(passed: bool) -> str:
  return "PASS" if passed else "FAIL"


# 1. Distillation ------------------------------------------------------------------


def distill(root: str, seeds: list[int]) -> list[Row]:
  teacher_dir = os.path.join(root, "teacher")
  t = _experiment("digits_cnn.py")
  t.train.eval_every, t.checkpoint.every = 0, 0  # only the final checkpoint is used
  teacher, _ = _train(t, teacher_dir)
  teacher_acc = teacher.metrics["eval/accuracy"]
  accs: dict[str, list[float]] = {"alone": [], "distilled": []}
  for seed in seeds:
    for mode in accs:
      c = _experiment("digits_distill.py" + (":alone" if mode == "alone" else ""))
      c.seed = seed
      if mode == "distilled":
        c.distill.teacher_workdir = teacher_dir
      result, _ = _train(c, os.path.join(root, f"student_{mode}_{seed}"))
      accs[mode].append(result.metrics["eval/accuracy"])
      print(f"  student {mode:9s} seed {seed}: test accuracy {_pct(accs[mode][-1])}, "
            f"loss {result.metrics['eval/loss']:.4f}", flush=True)
  means = {m: statistics.mean(a) for m, a in accs.items()}
  c = _experiment("digits_distill.py")
  per_seed = {m: " ".join(f"{100 * a:.1f}" for a in accs[m]) for m in accs}
  gain = 100 * (means["distilled"] - means["alone"])
  return [
      ("distillation", "teacher: digits_cnn, seed 0", _pct(teacher_acc), ""),
      ("distillation", f"student MLP-{c.model.hidden_sizes[0]} alone, seeds "
       f"{','.join(map(str, seeds))}", f"mean {_pct(means['alone'])} "
       f"({per_seed['alone']})", ""),
      ("distillation", f"student distilled, T={c.loss.temperature:g}, "
       f"soft weight {c.loss.weight:g}", f"mean {_pct(means['distilled'])} "
       f"({per_seed['distilled']})",
       f"{gain:+.2f} pts: {_ok(means['distilled'] > means['alone'])}"),
  ]


# 2. mixup / cutmix / label smoothing -----------------------------------------------


def mixup(root: str, variants: tuple[str, ...] = ("mixup", "cutmix", "mixup_cutmix",
                                                 "label_smoothing")) -> list[Row]:
  """Each variant, and the same CNN with the shifts only (no batch op) for scale."""
  rows = []
  for variant in ("baseline", *variants):
    spec = "digits_mixup.py" if variant == "baseline" else f"digits_mixup.py:{variant}"
    c = _experiment(spec)
    if variant == "baseline":
      c.data.train_transforms = c.data.train_transforms.split("|")[0]
    result, _ = _train(c, os.path.join(root, variant))
    acc, train_loss = result.metrics["eval/accuracy"], result.metrics["train/loss"]
    ops = (c.data.train_transforms.split("|", 1) + ["shifts only"])[1]
    # Soft targets show in the train loss: far above the one-hot baseline's.
    print(f"  {variant}: test accuracy {_pct(acc)}, last train loss {train_loss:.3f}",
          flush=True)
    rows.append((variant.replace("_", " "), f"{ops}, CNN {c.train.num_epochs:g} "
                 "epochs", f"{_pct(acc)} (train loss {train_loss:.3f})",
                 "" if variant == "baseline" else f">= 97%: {_ok(acc >= 0.97)}"))
  return rows


# 3. Early stopping ------------------------------------------------------------------

EVAL_EVERY, PATIENCE = 25, 4


def _early_stopping_config():
  c = _experiment("digits_cnn.py")
  c.train.log_every = EVAL_EVERY
  c.train.eval_every = EVAL_EVERY
  c.train.early_stopping.metric = "eval/accuracy"
  c.train.early_stopping.patience = PATIENCE
  c.checkpoint.every = 0
  return c


def _evaluate_again(config, state) -> dict[str, float]:
  """The eval metrics of `state`, from a fresh build and a fresh eval step."""
  from jaxtrain import runner, step as step_lib  # pylint: disable=g-import-not-at-top
  from jaxtrain.evaluate import evaluate  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import sharding  # pylint: disable=g-import-not-at-top
  exp = runner.build(config)
  with sharding.activate(exp.mesh, config.sharding.rules):
    eval_fn = jax.jit(step_lib.make_eval_step(exp.model))
    return evaluate(eval_fn, state, exp.eval_source, exp.eval_batch_size,
                    mesh_lib.batch_sharding(exp.mesh))


def early_stopping(root: str) -> list[Row]:
  c = _early_stopping_config()
  workdir = os.path.join(root, "early_stopping")
  result, out = _train(c, workdir)
  from jaxtrain import runner  # pylint: disable=g-import-not-at-top
  total = runner.build(c).total_steps
  log = _read_log(workdir)
  evals = {int(r["step"]): r["eval/accuracy"] for r in log if "eval/accuracy" in r}
  losses = {int(r["step"]): r["eval/loss"] for r in log if "eval/loss" in r}
  best_step = int(result.metrics["early_stopping/best_step"])
  stopped = int(result.metrics["early_stopping/last_step"])
  metrics = _evaluate_again(c, result.state)
  again, again_loss = metrics["eval/accuracy"], metrics["eval/loss"]
  print("  " + next((line for line in out.splitlines() if "Early stopping" in line),
                    "no early-stopping message"), flush=True)
  print("  evals: " + " ".join(f"{s}:{100 * a:.1f}" for s, a in evals.items()))
  print(f"  stopped at step {stopped} of {total}; best step {best_step} "
        f"(logged: accuracy {_pct(evals[best_step])}, loss {losses[best_step]:.6f}); "
        f"final state.step {int(result.state.step)}, re-evaluated: accuracy "
        f"{_pct(again)}, loss {again_loss:.6f}", flush=True)
  # The loss (continuous) tells apart steps of equal accuracy.
  passed = (stopped < total and stopped == best_step + PATIENCE * EVAL_EVERY
            and int(result.state.step) == best_step and again == evals[best_step]
            and math.isclose(again_loss, losses[best_step], rel_tol=1e-5)
            and evals[best_step] == max(evals.values()))
  return [("early stopping", f"eval/accuracy every {EVAL_EVERY}, patience "
           f"{PATIENCE}, CNN", f"stopped {stopped}/{total}, best step {best_step} "
           f"{_pct(evals[best_step])}, final state re-eval {_pct(again)}",
           f"restored best: {_ok(passed)}")]


# 4. Progressive resizing ----------------------------------------------------------

SWITCH, PEAK, WARMUP = 300, 0.1, 50


def _stages_config():
  from jaxtrain.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.model.name = "cifar_resnet"
  c.model.depth = 8
  c.data.train_transforms = "random_crop(8, padding=1)|resize(8)"
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = PEAK
  c.optimizer.schedule.name = "warmup_cosine"
  c.optimizer.schedule.warmup_steps = WARMUP
  c.train.batch_size = 64
  c.train.stages = ((0, 6, 32), (SWITCH, 0, 64))
  c.train.num_epochs = 20.0
  c.train.log_every = 1  # the LR of every step, for the boundary
  c.checkpoint.every = 0
  return c


def _warmup_cosine(t: int, total: int) -> float:
  """Linear warmup 0 -> PEAK over WARMUP steps, then half-cosine to 0 (Loshchilov &
  Hutter 2017, optax's warmup_cosine_decay_schedule), at update t (0-based)."""
  if t < WARMUP:
    return PEAK * t / WARMUP
  return PEAK * 0.5 * (1 + math.cos(math.pi * (t - WARMUP) / (total - WARMUP)))


class _CompileCounter(logging.Handler):
  """Counts JAX's "Compiling jit(<name>)" messages (`jax_log_compiles`)."""

  def __init__(self, name: str):
    super().__init__()
    self.needle, self.count = f"Compiling jit({name})", 0

  def emit(self, record: logging.LogRecord) -> None:
    if self.needle in record.getMessage():
      self.count += 1


def _stream(exp, config, plan, first: int, count: int) -> list[dict[str, Any]]:
  """Batches `first` .. `first + count - 1` of the train iterator under `plan`."""
  from jaxtrain.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.train_iterator(exp.train_source, config.train.batch_size,
                               config.seed, plan=plan)
  it.set_state({"next_index": first})
  batches = [next(it) for _ in range(count)]
  it.close()
  return batches


def _data_continuous(config) -> tuple[bool, str]:
  """Staged batches SWITCH-1 and SWITCH hold the unstaged stream's next examples."""
  from jaxtrain import runner  # pylint: disable=g-import-not-at-top
  from jaxtrain.data import batch_plan  # pylint: disable=g-import-not-at-top
  exp = runner.build(config)
  staged = _stream(exp, config, exp.plan, SWITCH - 1, 2)
  small = config.train.stages[0][2]
  # The unstaged reference: the same seed cut in batches of the first stage's size.
  flat = _stream(exp, config, batch_plan.BatchPlan.constant(small), SWITCH - 1, 3)
  same = (np.array_equal(staged[0]["index"], flat[0]["index"]) and np.array_equal(
      staged[1]["index"], np.concatenate([flat[1]["index"], flat[2]["index"]])))
  first = (SWITCH - 1) * small
  return same, (f"step {SWITCH} reads stream [{first}, {first + small}) as "
                f"{staged[0]['image'].shape}, step {SWITCH + 1} reads "
                f"[{first + small}, {first + 3 * small}) as {staged[1]['image'].shape}")


def _schedule_count(state) -> int:
  counts = [int(x) for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
            if "count" in jax.tree_util.keystr(p)]
  return max(counts)


def stages(root: str) -> list[Row]:
  c = _stages_config()
  workdir = os.path.join(root, "stages")
  counter = _CompileCounter("train_and_sum")
  jax_logger = logging.getLogger("jax")
  jax_logger.addHandler(counter)
  jax.config.update("jax_log_compiles", True)
  try:
    result, out = _train(c, workdir)
  finally:
    jax.config.update("jax_log_compiles", False)
    jax_logger.removeHandler(counter)
  log = {int(r["step"]): r for r in _read_log(workdir)}
  total = max(log)
  messages = [line for line in out.splitlines() if line.startswith("Stage ")]
  print("  " + "\n  ".join(messages))
  switches = [m for m in messages if not m.startswith("Stage 1/")]
  # Logged step s used the LR of update s - 1.
  lrs = [(s, log[s]["train/learning_rate"], _warmup_cosine(s - 1, total))
         for s in range(SWITCH - 1, SWITCH + 3)]
  for s, logged, formula in lrs:
    print(f"  step {s}: batch {'32' if s <= SWITCH else '64'}, LR logged {logged:.6f}"
          f", formula {formula:.6f}")
  lr_ok = all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8) for _, a, b in lrs)
  count = _schedule_count(result.state)
  data_ok, data_text = _data_continuous(c)
  print(f"  {counter.count} compiles of the train step; optimizer count at the end "
        f"{count} of {total} steps; {data_text}: same examples as unstaged "
        f"{data_ok}", flush=True)
  acc = result.metrics["eval/accuracy"]
  passed = (len(switches) == 1 and counter.count == 2 and lr_ok and count == total
            and data_ok)
  return [("progressive resizing", f"ResNet-8, 6px b32 -> 8px b64 after step "
           f"{SWITCH} of {total}", f"{_pct(acc)}; {len(switches)} switch, "
           f"{counter.count} train-step compiles",
           f"LR + data continuous: {_ok(passed)}")]


# Table ------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
  header = ("technique", "setting", "result", "check")
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
  line = lambda r: " | ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
  print(line(header))
  print("-+-".join("-" * w for w in widths))
  for r in rows:
    print(line(r))


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default=",".join(SECTIONS),
                      help=f"comma-separated subset of {','.join(SECTIONS)}")
  parser.add_argument("--seeds", default="0,1,2", help="distillation student seeds")
  parser.add_argument("--keep", action="store_true", help="keep the workdirs")
  args = parser.parse_args(argv)
  only = [s for s in args.only.split(",") if s]
  unknown = sorted(set(only) - set(SECTIONS))
  if unknown:
    parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
  seeds = [int(s) for s in args.seeds.split(",")]
  root = tempfile.mkdtemp(prefix="digits_techniques_")
  rows: list[Row] = []
  t0 = time.perf_counter()
  try:
    for name in only:
      start = time.perf_counter()
      print(f"[{name}] workdirs in {root}", flush=True)
      rows += distill(root, seeds) if name == "distill" else globals()[name](root)
      print(f"[{name}] {time.perf_counter() - start:.0f} s", flush=True)
  finally:
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  print()
  print_table(rows)
  print(f"\nwall time {time.perf_counter() - t0:.0f} s")
  return 0 if all("FAIL" not in r[3] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
