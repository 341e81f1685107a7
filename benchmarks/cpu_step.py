"""ResNet-50 train step on CPU: ours vs the Flax ImageNet example vs PyTorch; digits.

One run prints, for ResNet-50 v1.5 at 224x224x3, batch 16, float32, one CPU device:
  1. ms/step of our step, built as a run builds it (`runner.build` on a synthetic-data
     config, `state.create_train_state`, `runner.make_jitted_steps`, ``model.impl``
     default ``auto``, i.e. the fused CPU formulation), and with ``--reference`` also
     of the same step with ``model.impl=reference`` (plain `nn.Conv`, autodiff BN);
  2. ms/step of a step written as in the Flax ImageNet example (examples/imagenet:
     its ResNet-50 of `nn.Conv` + `nn.BatchNorm(axis_name="batch")`, `jax.pmap`,
     `lax.pmean` of gradients and batch statistics, L2 in the loss, SGD with Nesterov
     momentum) and the ratio to ours (target >= 2);
  3. achieved FLOP/s of our step (XLA cost analysis / time) over the f32 matmul peak
     measured in the same rounds (a 2048^3 matmul);
  4. where `torch` is importable, the PyTorch peer (`torch_peer.py`, in a child
     process that runs only while this one waits) and our speed relative to it
     (target >= 0.6, stretch >= 1);
  5. digits CNN (experiments/digits_cnn.py): steps/s of the runner's train loop
     (`runner.train`, compile excluded) over the steps/s of the bare jitted step
     on a device-resident batch, in alternating rounds (target >= 0.8, i.e. the
     loop's step within 1.25x of the compute).

The machine is shared, so every figure is a median over interleaved rounds (ours,
Flax example, matmul, torch, ours, ...); ratios are medians of per-round ratios.
Model init uses rbg keys (every threefry draw in `model.init` takes seconds to compile
on XLA:CPU); the step itself is unchanged.

  python benchmarks/cpu_step.py [--rounds 5] [--reference] [--no-torch] [--no-digits]
  python benchmarks/cpu_step.py --only-digits [--digits-steps 400]
  python benchmarks/cpu_step.py --profile [--impl reference]  # per-op table instead
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import gzip
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

from jaxtrain import config as config_lib
from jaxtrain import runner
from jaxtrain.data import pipeline
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel import sharding
from jaxtrain.state import create_train_state

BATCH, SIZE, CLASSES = 16, 224, 1000
HERE = os.path.dirname(os.path.abspath(__file__))


# -- ours: the runner path --

def resnet50_config(impl: str = "auto"):
  c = config_lib.base_config()
  c.model.name = "resnet50"
  c.model.impl = impl
  c.data.source, c.data.name = "synthetic", "synthetic"
  c.data.synthetic.image_shape = (SIZE, SIZE, 3)
  c.data.synthetic.num_classes = CLASSES
  c.train.batch_size = BATCH
  c.precision.compute_dtype = "float32"
  c.optimizer.name = "momentum"
  c.mesh.data = 1
  return c


def images_and_labels(seed: int = 0):
  rng = np.random.RandomState(seed)
  return (rng.uniform(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
          rng.randint(0, CLASSES, BATCH).astype(np.int32))


def build_ours(impl: str):
  """Compiles our train step; returns (run_one_step, FLOPs per step, compiled)."""
  c = resnet50_config(impl)
  exp = runner.build(c, jax.devices()[:1])
  state, shardings = create_train_state(exp.model, exp.tx, exp.train_source.image_shape,
                                        c.seed, exp.mesh, c.sharding.rules)
  with sharding.activate(exp.mesh, c.sharding.rules):
    train_fn, _, init_sums = runner.make_jitted_steps(exp, state, shardings)
    images, labels = images_and_labels()
    batch_sh = mesh_lib.batch_sharding(exp.mesh)
    batch = {"image": jax.device_put(images, batch_sh),
             "label": jax.device_put(labels, batch_sh)}
    sums = init_sums()
    compiled = train_fn.lower(state, sums, batch).compile()
  carry = [state, sums]

  def run() -> None:
    carry[0], carry[1] = compiled(carry[0], carry[1], batch)
    jax.block_until_ready(carry)

  return run, _flops(compiled), (compiled, (state, sums, batch))


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


# -- the Flax ImageNet example's step (examples/imagenet/{models,train}.py) --

class _FlaxBottleneck(nn.Module):
  filters: int
  strides: tuple[int, int]

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, axis_name="batch")
    y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
    y = nn.relu(norm()(conv(self.filters, (3, 3), self.strides)(y)))
    y = norm(scale_init=nn.initializers.zeros)(conv(self.filters * 4, (1, 1))(y))
    if x.shape != y.shape:
      x = norm(name="norm_proj")(conv(self.filters * 4, (1, 1), self.strides,
                                      name="conv_proj")(x))
    return nn.relu(x + y)


class FlaxExampleResNet50(nn.Module):
  """The Flax example's ResNet50 (v1.5, `SAME` padding), float32."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                name="conv_init")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, axis_name="batch", name="bn_init")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, blocks in enumerate((3, 4, 6, 3)):
      for j in range(blocks):
        x = _FlaxBottleneck(64 * 2**i, (2, 2) if i > 0 and j == 0 else (1, 1))(x, train)
    return nn.Dense(CLASSES)(jnp.mean(x, axis=(1, 2)))


class _ExampleState(train_state.TrainState):
  batch_stats: Any


def build_flax_example():
  """The example's pmapped train_step on one device; returns run_one_step."""
  model = FlaxExampleResNet50()
  images, labels = images_and_labels()
  init = jax.jit(lambda k: model.init(k, jnp.zeros((1, SIZE, SIZE, 3)), train=False))
  variables = init(jax.random.key(0, impl="rbg"))
  state = _ExampleState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables["batch_stats"],
      tx=optax.sgd(0.1, momentum=0.9, nesterov=True))

  def train_step(state, batch):
    def loss_fn(params):
      logits, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, batch["image"],
          mutable=["batch_stats"])
      onehot = jax.nn.one_hot(batch["label"], CLASSES)
      loss = jnp.mean(optax.softmax_cross_entropy(logits, onehot))
      l2 = sum(jnp.sum(p**2) for p in jax.tree.leaves(params) if p.ndim > 1)
      return loss + 1e-4 * 0.5 * l2, (updates, logits)
    grads, (updates, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, "batch")
    stats = jax.lax.pmean(updates["batch_stats"], "batch")
    accuracy = jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                             "batch")
    return state.apply_gradients(grads=grads, batch_stats=stats), accuracy

  step = jax.pmap(train_step, axis_name="batch", donate_argnums=(0,))
  carry = [jax.tree.map(lambda a: jnp.asarray(a)[None], state)]  # one replica
  batch = {"image": images[None], "label": labels[None]}

  def run() -> None:
    carry[0], accuracy = step(carry[0], batch)
    jax.block_until_ready((carry[0], accuracy))

  run()  # compiles
  return run


# -- the matmul peak and the PyTorch peer --

def build_matmul(n: int = 2048):
  a = jnp.asarray(np.random.RandomState(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  return (lambda: f(a).block_until_ready()), 2.0 * n**3


class TorchPeer:
  """`torch_peer.py --serve` in a child process, stepping only when asked."""

  def __init__(self):
    self.proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "torch_peer.py"), "--serve",
         f"--batch={BATCH}", f"--size={SIZE}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.version = json.loads(self.proc.stdout.readline())["torch"]

  def run(self) -> float:
    self.proc.stdin.write("1\n")
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())["ms"][0] / 1e3

  def close(self) -> None:
    self.proc.stdin.write("\n")
    self.proc.stdin.flush()
    self.proc.wait(timeout=60)


def torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list]:
  """Seconds of each callable per round, called in turn; a run may return its time."""
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      t = time.perf_counter()
      own = run()
      times[name].append(own if isinstance(own, float) else time.perf_counter() - t)
  return times


def ratio(times, num: str, den: str) -> float:
  return statistics.median(a / b for a, b in zip(times[num], times[den]))


# -- digits: the runner's loop vs the bare step --

def digits_config(steps: int):
  c = config_lib.load(os.path.join(HERE, os.pardir, "experiments", "digits_cnn.py"))
  c.train.num_epochs, c.train.num_steps = 0.0, steps
  c.train.log_every, c.train.eval_every = steps // 4, 0
  c.checkpoint.every = 0
  return c


def digits_loop_steps_per_sec(steps: int) -> float:
  """Median steps/s `runner.train` logs, its first window (with compile) dropped."""
  with tempfile.TemporaryDirectory() as workdir:
    with contextlib.redirect_stdout(io.StringIO()):  # the loop's progress lines
      runner.train(digits_config(steps), workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      rates = [r["train/steps_per_sec"] for r in map(json.loads, f)
               if "train/steps_per_sec" in r]
  return statistics.median(rates[1:])


def digits_compute_steps_per_sec(steps: int, calls: int, rounds: int) -> float:
  """Steps/s of the jitted step alone, called back to back on one resident batch."""
  c = digits_config(steps)
  exp = runner.build(c)
  state, shardings = create_train_state(exp.model, exp.tx, exp.train_source.image_shape,
                                        c.seed, exp.mesh, c.sharding.rules)
  batch_sh = mesh_lib.batch_sharding(exp.mesh)
  it = pipeline.train_iterator(exp.train_source, c.train.batch_size, c.seed)
  batch = pipeline.to_global(next(it), batch_sh)
  with sharding.activate(exp.mesh, c.sharding.rules):
    train_fn, _, init_sums = runner.make_jitted_steps(exp, state, shardings)
    sums = init_sums()
    state, sums = train_fn(state, sums, batch)
    rates = []
    for _ in range(rounds):
      jax.block_until_ready(sums)
      t = time.perf_counter()
      for _ in range(calls):
        state, sums = train_fn(state, sums, batch)
      jax.block_until_ready((state, sums))
      rates.append(calls / (time.perf_counter() - t))
  return statistics.median(rates)


def digits(steps: int, rounds: int = 3) -> None:
  """Loop and bare step in alternate rounds; the ratio is the median round's."""
  loops, bares = [], []
  for _ in range(rounds):
    bares.append(digits_compute_steps_per_sec(steps, steps // 4, 3))
    loops.append(digits_loop_steps_per_sec(steps))
  loop, bare = statistics.median(loops), statistics.median(bares)
  ratios = [a / b for a, b in zip(loops, bares)]
  r = statistics.median(ratios)
  print(f"digits CNN: runner loop {loop:.0f} steps/s, bare jitted step on a resident "
        f"batch {bare:.0f} steps/s (medians of {rounds} alternating rounds; load "
        f"average {os.getloadavg()[0]:.1f}): loop = {r:.2f} of pure compute "
        f"(target >= 0.8; rounds {', '.join(f'{x:.2f}' for x in ratios)})")


# -- per-op profile --

def profile(impl: str, top: int) -> None:
  """Per-op table of our step from a `jax.profiler` trace (XLA:CPU traces thunks)."""
  run, _, (compiled, _) = build_ours(impl)
  run()
  steps = 3
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    for _ in range(steps):
      run()
    jax.profiler.stop_trace()
    path = glob.glob(f"{logdir}/**/*.trace.json.gz", recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  hlo = compiled.as_text()
  lines = {m.group(1): m.group(0) for m in re.finditer(
      r"(?m)^\s*(?:ROOT )?%([\w.\-]+) = .*$", hlo)}
  ms = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e["name"] in lines:
      ms[e["name"]] += e["dur"] / 1e3 / steps
  bodies = dict(re.findall(r"\n%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
  by_kind, rows = collections.Counter(), []
  for name, t in ms.items():
    kind = _classify(lines[name], bodies)
    shape = lines[name].split(" = ")[1].split(" ")[0]
    op_name = re.search(r'op_name="([^"]*)"', lines[name])
    by_kind[kind] += t
    rows.append((t, name, kind, shape, op_name.group(1)[-60:] if op_name else ""))
  total = sum(ms.values())
  print(f"profile (impl={impl}): {total:.0f} ms/step in {len(ms)} thunks, mean of "
        f"{steps} steps; load average {os.getloadavg()[0]:.1f}")
  for kind, t in by_kind.most_common():
    print(f"  {kind:20s} {t:9.1f} ms {100 * t / total:5.1f}%")
  for t, name, kind, shape, op_name in sorted(rows, reverse=True)[:top]:
    print(f"  {t:8.1f} ms {kind:12s} {shape:26s} {name:26s} {op_name}")


def _classify(line: str, bodies: dict[str, str]) -> str:
  """The op that dominates a thunk: its own, or the heaviest in a fusion's body."""
  called = re.search(r"calls=%([\w.\-]+)", line)
  body = bodies.get(called.group(1), line) if called else line
  for op in ("convolution", "dot", "select-and-scatter", "reduce-window", "reduce",
             "transpose", "scatter", "iota"):
    if re.search(rf" {op}\(", body):
      return op
  return "elementwise"


# -- main --

def _compile_all(args) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
  runs, info = {}, {}
  for name, impl in [("ours", "auto")] + [("ours_reference", "reference")] * (
      args.reference):
    t = time.perf_counter()
    runs[name], info[f"{name}_flops"], _ = build_ours(impl)
    runs[name]()
    info[f"{name}_compile_s"] = time.perf_counter() - t
  t = time.perf_counter()
  runs["flax_example"] = build_flax_example()
  info["flax_example_compile_s"] = time.perf_counter() - t
  runs["matmul"], info["matmul_flops"] = build_matmul()
  return runs, info


def main() -> None:
  global SIZE  # --size shrinks every model input (smoke runs)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--reference", action="store_true",
                      help="also time our step with model.impl=reference")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--no-digits", action="store_true")
  parser.add_argument("--only-digits", action="store_true",
                      help="run only the digits loop-vs-compute comparison")
  parser.add_argument("--digits-steps", type=int, default=400)
  parser.add_argument("--profile", action="store_true",
                      help="print a per-op profile of our step and exit")
  parser.add_argument("--impl", default="auto", help="model.impl for --profile")
  parser.add_argument("--top", type=int, default=30)
  parser.add_argument("--size", type=int, default=SIZE, help="image size (smoke runs)")
  parser.add_argument("--cache-dir", default="",
                      help="persistent compilation cache (re-runs skip compiling)")
  args = parser.parse_args()
  SIZE = args.size
  jax.config.update("jax_default_prng_impl", "rbg")  # fast init compile, see above
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  if args.profile:
    profile(args.impl, args.top)
    return
  if args.only_digits:
    digits(args.digits_steps)
    return
  # The child builds and warms up torch while this process compiles.
  peer = TorchPeer() if torch_available() and not args.no_torch else None
  runs, info = _compile_all(args)
  if peer:
    runs["torch"] = peer.run
  times = interleaved(runs, args.rounds)
  if peer:
    peer.close()
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f"ResNet-50 v1.5, {SIZE}x{SIZE}x3, batch {BATCH}, float32, 1 CPU device "
        f"({os.cpu_count()} cores), median of {args.rounds} interleaved rounds; "
        f"load average {os.getloadavg()[0]:.1f} (others' work shares the cores)")
  for name in runs:
    if name != "matmul":
      print(f"  {name:16s} {1e3 * med[name]:8.0f} ms/step (best round "
            f"{1e3 * min(times[name]):.0f})")
  print(f"  compile: ours {info['ours_compile_s']:.0f} s, Flax example "
        f"{info['flax_example_compile_s']:.0f} s")
  print(f"ours vs Flax example (pmap): {ratio(times, 'flax_example', 'ours'):.2f}x "
        "faster (target >= 2.0)")
  if args.reference:
    print(f"ours vs impl=reference:      "
          f"{ratio(times, 'ours_reference', 'ours'):.2f}x faster")
  if peer:
    print(f"ours vs PyTorch {peer.version}:   {ratio(times, 'torch', 'ours'):.2f}x "
          "its speed (target >= 0.6, stretch >= 1.0)")
  peak = statistics.median(info["matmul_flops"] / t for t in times["matmul"])
  achieved = statistics.median(info["ours_flops"] / t for t in times["ours"])
  print(f"achieved {achieved / 1e9:.0f} GFLOP/s ({info['ours_flops'] / 1e9:.0f} GFLOP "
        f"per step, XLA cost analysis) = {achieved / peak:.2f} of the f32 matmul peak "
        f"measured alongside ({peak / 1e9:.0f} GFLOP/s)")
  if not args.no_digits:
    digits(args.digits_steps)


if __name__ == "__main__":
  main()
