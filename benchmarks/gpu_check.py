"""One-GPU check of jaxtrain: one table, in <= 8 minutes on one H200.

Rows:
  1. the default experiment (experiments/digits_cnn.py) trained by `runner.train`,
     as `jaxtrain train` runs it: test accuracy (>= 98.5% expected) and wall time;
  2. ResNet-50 v1.5, 224x224, batch 256, `precision.compute_dtype=auto` (bfloat16 on
     GPU), synthetic data already on the device: images/s of jaxtrain's own train
     step (`runner.build` -> `runner.initial_state` -> `runner.make_jitted_steps`,
     the program `jaxtrain train` runs) against PyTorch in the same run on the same
     GPU (benchmarks/gpu_torch_peer.py: torchvision resnet50, autocast bfloat16,
     channels_last, SGD momentum; eager, and torch.compile within a time budget);
  3. ViT-B/16 the same way (jaxtrain `vit` 16/768/12/12/3072 against torchvision
     vit_b_16; jaxtrain mean-pools 196 tokens, torchvision adds a class token).
Timing rounds alternate between the frameworks (order reversed every round) and
the speed ratio is the median of the per-round ratios. TFLOP/s: FLOPs of one step
from the compiled program's cost analysis (XLA), from FlopCounterMode (PyTorch),
over the measured step time; MFU against the chip's dense bfloat16 peak (H100/H200
SXM: 989 TFLOP/s, NVIDIA H100/H200 datasheets: 1,979 TFLOP/s "with sparsity") and
against a bfloat16 8192^3 matmul measured in the same run. Memory: the compiled
step's arguments + outputs + temporaries (XLA memory analysis), the device's peak
bytes in use so far, and torch.cuda.max_memory_allocated.

Each row is wrapped: a failure prints its error in the table and the check goes on.
JAX rounds run under `jax.transfer_guard("disallow")`: an implicit host transfer in
the step loop fails the row. The table is also written to $OUT/gpu_check.txt and
$OUT/gpu_check.json when OUT is set, after every row.

  python3 benchmarks/gpu_check.py              # a GPU machine (see gpu/README.md)
  python3 benchmarks/gpu_check.py --dry-run    # CPU, toy sizes, the same code

On a machine that has JAX (CUDA), Flax, Optax, Orbax, PyTorch and torchvision but
no internet and not jaxtrain's other dependencies, carry these Python 3.12
manylinux x86-64 wheels in `.whl/` (11 MB; `pip download --no-deps --only-binary=:all:
--python-version 3.12 --platform manylinux_2_28_x86_64 ... -d .whl NAME==VERSION`):
grain 0.2.18, tensorflow-datasets 4.9.10, array-record 0.8.6, ml-collections 1.1.0,
tensorboardX 2.6.5, dm-tree 0.1.10, docstring-parser 0.18.0, googleapis-common-protos
1.76.0, immutabledict 4.3.1, portpicker 1.6.0, promise 2.3, protobuf 7.36.2,
simple-parsing 0.1.9, tensorflow-metadata 1.21.0, termcolor 3.3.0, toml 0.10.2; then,
from the repository root (jaxtrain itself is not installed there):

  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py \
      --budget=420 | tee gpu_check.log

The figures of 2026-12-04 on one H200 are in gpu/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "benchmarks", "gpu_torch_peer.py")
# Dense bfloat16 tensor-core peaks, TFLOP/s (datasheets: half the "with sparsity").
PEAKS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 SXM": 989.0,
         "H100 PCIe": 756.0, "A100": 312.0}


@dataclasses.dataclass
class Sizes:
  """What each row runs; `full` on a GPU, `toy` for --dry-run on CPU."""
  digits_steps: int          # 0: the experiment's own schedule (30 epochs)
  resnet: dict               # jaxtrain model config
  vit: dict
  image: int
  batch: int
  steps_per_round: int
  rounds: int
  compile_budget_s: float    # per torch.compile peer
  toy: bool


FULL = Sizes(0, {"name": "resnet50"},
             {"name": "vit", "patch_size": 16, "width": 768, "depth": 12,
              "num_heads": 12, "mlp_dim": 3072},
             224, 256, 10, 5, 120.0, False)
TOY = Sizes(12, {"name": "resnet18", "width": 8},
            {"name": "vit", "patch_size": 8, "width": 32, "depth": 2, "num_heads": 2,
             "mlp_dim": 64},
            32, 8, 2, 2, 120.0, True)


class Report:
  """The table's rows, printed and (with $OUT) written after every row."""

  def __init__(self, header: dict[str, Any]):
    self.header, self.rows = header, []

  def add(self, **row: Any) -> None:
    self.rows.append(row)
    print("gpu_check row: " + self.table().splitlines()[-1], flush=True)
    out = os.environ.get("OUT")
    if out:
      with open(os.path.join(out, "gpu_check.txt"), "w", encoding="utf-8") as f:
        f.write(self.table() + "\n")
      with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump({"header": self.header, "rows": self.rows}, f, indent=1, default=str)

  def table(self) -> str:
    cols = ("row", "variant", "images/s", "TFLOP/s", "MFU", "memory", "vs torch",
            "notes")
    lines = ["GPU check: " + ", ".join(f"{k} {v}" for k, v in self.header.items()),
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in self.rows:
      lines.append("| " + " | ".join(_fmt(r.get(c.replace("/", "_").replace(
          " ", "_"))) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
  return str(v).replace("|", "/").replace("\n", " ")


def _gib(n: float | None) -> str:
  return "" if n is None else f"{n / 2**30:.1f} GiB"


# --- the digits experiment -----------------------------------------------------

def digits_row(sizes: Sizes, report: Report) -> None:
  from jaxtrain import config as config_lib, runner  # pylint: disable=g-import-not-at-top
  config = config_lib.load(os.path.join(ROOT, "experiments", "digits_cnn.py"))
  if sizes.digits_steps:
    config_lib.apply_overrides(config, [f"train.num_steps={sizes.digits_steps}",
                                        "train.num_epochs=0.0",
                                        "optimizer.schedule.warmup_steps=2"])
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    result = runner.train(config, workdir)
    wall = time.perf_counter() - t0
  acc = result.metrics["eval/accuracy"]
  verdict = "" if sizes.toy else (" (>= 98.5%: ok)" if acc >= 0.985 else
                                  " (BELOW the expected 98.5%)")
  report.add(row="digits CNN (jaxtrain train)", variant="jaxtrain",
             notes=f"test accuracy {100 * acc:.2f}%{verdict}; wall {wall:.1f} s incl. "
             f"data build + compile; {int(result.state.step)} steps")


# --- jaxtrain's train step ------------------------------------------------------

def _config(model: dict, sizes: Sizes):
  from jaxtrain.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config()
  for k, v in model.items():
    c.model[k] = v
  c.data.source = "synthetic"
  c.data.synthetic.image_shape = (sizes.image, sizes.image, 3)
  c.data.synthetic.num_classes, c.data.synthetic.num_examples = 1000, sizes.batch
  c.optimizer.name, c.optimizer.learning_rate = "momentum", 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.schedule.name = "constant"
  c.train.batch_size, c.train.num_steps = sizes.batch, 1000
  c.precision.compute_dtype = "auto"
  return c


@dataclasses.dataclass
class JaxStep:
  run: Callable[[int], float]   # n steps -> seconds
  flops: float | None           # per step, compiled cost analysis
  flops_lowered: float | None   # per step, unoptimized HLO
  step_bytes: float | None      # arguments + outputs - aliased + temporaries
  hlo: str
  compute_dtype: str
  compile_s: float


def _flops(analysis: Any) -> float | None:
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


VARIANTS = {"amp": ("jaxtrain, weight_grad_dtype=compute",
                    "precision.weight_grad_dtype=compute (autocast's bf16 weight "
                    "grads, then cast)")}


def jax_step(model: dict, sizes: Sizes, variant: str = "") -> JaxStep:
  """jaxtrain's train step for `model`, compiled, and a timer of n steps.

  `variant` "amp" sets `precision.weight_grad_dtype=compute`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import runner  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import mesh as mesh_lib, sharding  # pylint: disable=g-import-not-at-top
  c = _config(model, sizes)
  if variant == "amp":
    c.precision.weight_grad_dtype = "compute"
  exp = runner.build(c)
  state, shardings = runner.initial_state(exp)
  k1, k2 = jax.random.split(jax.random.key(0))
  shape = (sizes.batch, sizes.image, sizes.image, 3)
  batch = jax.device_put({"image": jax.random.normal(k1, shape),
                          "label": jax.random.randint(k2, shape[:1], 0, 1000)},
                         mesh_lib.batch_sharding(exp.mesh))
  t0 = time.perf_counter()
  with sharding.activate(exp.mesh, c.sharding.rules):
    train_fn, _, init_sums = runner.make_jitted_steps(exp, state, shardings)
    carry = [state, init_sums()]
    lowered = train_fn.lower(carry[0], carry[1], batch)
    compiled = lowered.compile()
  mem = compiled.memory_analysis()
  step_bytes = None if mem is None else float(
      mem.argument_size_in_bytes + mem.output_size_in_bytes
      - mem.alias_size_in_bytes + mem.temp_size_in_bytes)

  def run(n: int) -> float:
    with sharding.activate(exp.mesh, c.sharding.rules), jax.transfer_guard("disallow"):
      t = time.perf_counter()
      for _ in range(n):
        carry[0], carry[1] = compiled(carry[0], carry[1], batch)
      jax.block_until_ready(carry)
      return time.perf_counter() - t

  run(2)  # warm-up: allocations
  return JaxStep(run, _flops(compiled.cost_analysis()), _flops(lowered.cost_analysis()),
                 step_bytes, compiled.as_text(), str(exp.model.dtype.__name__
                                                     if hasattr(exp.model.dtype, "__name__")
                                                     else exp.model.dtype),
                 time.perf_counter() - t0)


def hlo_census(hlo: str) -> str:
  """Library calls of the compiled step by operand dtype, and any float64."""
  counts: dict[str, int] = {}
  for line in hlo.splitlines():
    m = re.search(r'custom_call_target="(__cudnn\$conv\w*|__cublas\$\w+)"', line)
    kind = None
    if m:
      kind = "conv" if "conv" in m.group(1) else "gemm"
      dt = re.search(r"custom-call\((\w+)\[", line)
    elif "__triton_gemm" in line:
      kind, dt = "triton gemm", re.search(r"fusion\((\w+)\[", line)
    if kind:
      key = f"{kind} {dt.group(1) if dt else '?'}"
      counts[key] = counts.get(key, 0) + 1
  f64 = sum(1 for line in hlo.splitlines() if "f64[" in line)
  parts = [f"{k} x{v}" for k, v in sorted(counts.items())]
  return (", ".join(parts) or "no library calls") + f"; f64 ops {f64}"


# --- the PyTorch peers ----------------------------------------------------------

class Peer:
  """A gpu_torch_peer.py process: ready line, then timed rounds on request."""

  def __init__(self, model: str, sizes: Sizes, compiled: bool):
    self.name = "torch.compile" if compiled else "torch eager"
    cmd = [sys.executable, PEER, f"--model={model}", f"--batch={sizes.batch}",
           f"--size={sizes.image}"] + (["--compile"] if compiled else []) + (
               ["--toy"] if sizes.toy else [])
    self.err = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.err, text=True)
    self.lines: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()
    self.info: dict = {}

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.lines.put(line)
    self.lines.put(None)

  def _answer(self, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
      try:
        line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
      except queue.Empty:
        raise TimeoutError(f"{self.name}: no answer in {timeout:.0f} s") from None
      if line is None:
        self.err.seek(0)
        raise RuntimeError(f"{self.name} exited: {self.err.read()[-800:]}")
      if line.startswith("{"):
        return json.loads(line)

  def ready(self, timeout: float) -> dict:
    self.info = self._answer(timeout)
    return self.info

  def run(self, n: int) -> float:
    self.proc.stdin.write(f"{n}\n")
    self.proc.stdin.flush()
    return self._answer(600)["seconds"]

  def peak_bytes(self) -> float | None:
    self.proc.stdin.write("mem\n")
    self.proc.stdin.flush()
    return self._answer(60)["peak_bytes"]

  def close(self, kill: bool = False) -> None:
    if kill and self.proc.poll() is None:
      self.proc.kill()
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
      except (OSError, subprocess.TimeoutExpired):
        self.proc.kill()
    self.err.close()


def _start_peers(model: str, sizes: Sizes, report: Report, label: str,
                 kinds: tuple[str, ...] = ("eager", "compile")):
  """Eager and compiled peers, started now (they build while JAX compiles)."""
  if importlib.util.find_spec("torch") is None:
    report.add(row=label, variant="torch", notes="skipped: torch is not installed")
    return []
  return [Peer(model, sizes, compiled=k == "compile") for k in ("eager", "compile")
          if k in kinds]


def _ready_peers(peers: list[Peer], sizes: Sizes, t_start: float, deadline: float,
                 report: Report, label: str) -> list[Peer]:
  ready = []
  for p in peers:
    budget = 240.0 if p.name == "torch eager" else sizes.compile_budget_s
    wait = min(deadline - time.monotonic(), t_start + budget - time.monotonic())
    try:
      p.ready(max(wait, 1.0))
      ready.append(p)
    except Exception as e:  # pylint: disable=broad-except
      p.close(kill=True)
      why = "skipped (time)" if isinstance(e, TimeoutError) else f"failed: {e}"
      report.add(row=label, variant=p.name, notes=why)
  return ready


# --- one model: jaxtrain vs PyTorch ---------------------------------------------

def _rounds(timers: dict[str, Callable[[int], float]], sizes: Sizes
            ) -> dict[str, list[float]]:
  """Seconds per step of each timer, rounds alternating (order reversed each)."""
  out = {k: [] for k in timers}
  for r in range(sizes.rounds):
    for k in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
      out[k].append(timers[k](sizes.steps_per_round) / sizes.steps_per_round)
  return out


def model_rows(label: str, torch_model: str, model: dict, sizes: Sizes,
               env: dict, report: Report, deadline: float,
               variants: tuple[str, ...] = (),
               peer_kinds: tuple[str, ...] = ("eager", "compile")) -> None:
  """Row 2 or 3: jaxtrain's step against the torch peers, same GPU, same run."""
  import jax  # pylint: disable=g-import-not-at-top
  t_start = time.monotonic()
  peers = _start_peers(torch_model, sizes, report, label, peer_kinds)
  eager = [p for p in peers if p.name == "torch eager"]
  compiled = [p for p in peers if p.name != "torch eager"]
  try:
    # The eager peer's warm-up would disturb XLA's autotuning: let it finish
    # first. torch.compile's compilation (CPU) overlaps JAX's.
    ready = _ready_peers(eager, sizes, t_start, deadline, report, label)
    steps = {"jaxtrain": jax_step(model, sizes)}
    for v in variants:
      steps[VARIANTS[v][0]] = jax_step(model, sizes, v)
    peers = ready + _ready_peers(compiled, sizes, t_start, deadline, report, label)
    timers = {**{k: s.run for k, s in steps.items()}, **{p.name: p.run for p in peers}}
    secs = _rounds(timers, sizes)
    peak = env.get("peak_tflops")
    matmul = env.get("matmul_tflops")
    stats = jax.devices()[0].memory_stats() or {}
    flops = {**{k: s.flops for k, s in steps.items()},
             **{p.name: p.info.get("flops_per_step") for p in peers}}
    flops["torch.compile"] = flops.get("torch eager")  # same model, same FLOPs
    # XLA:GPU's cost analysis leaves out cuDNN/cuBLAS calls (a ResNet-50 step
    # "costs" 1e11 FLOPs there, 6e12 counted by PyTorch): the same architecture's
    # count from FlopCounterMode, where a peer ran, is the model's FLOPs.
    model_flops = flops.get("torch eager") if jax.default_backend() == "gpu" else None
    if model_flops:
      flops.update({k: model_flops for k in steps})
    mem = {k: f"step {_gib(s.step_bytes)}, device peak so far "
              f"{_gib(stats.get('peak_bytes_in_use'))}" for k, s in steps.items()}
    for p in peers:
      mem[p.name] = f"max allocated {_gib(p.peak_bytes())}"
    for k, s in secs.items():
      t = statistics.median(s)
      tf = flops[k] / t / 1e12 if flops.get(k) else None
      ratio = ""
      if k in steps and peers:
        ratio = "; ".join(
            f"{statistics.median(a / b for a, b in zip(secs[p.name], s)):.2f}x "
            f"{p.name}" for p in peers)
      notes = (f"batch {sizes.batch}, {sizes.image}px, step {1e3 * t:.1f} ms, "
               f"median of {sizes.rounds} rounds x {sizes.steps_per_round} steps")
      if k in steps:
        js = steps[k]
        if k != "jaxtrain":
          what = next(d for n, d in VARIANTS.values() if n == k)
          notes += (f"; {what}, "
                    f"{statistics.median(a / b for a, b in zip(secs['jaxtrain'], s)):.2f}x "
                    "the default step")
        notes += (f"; compute {js.compute_dtype}; compile {js.compile_s:.0f} s; "
                  f"FLOPs/step compiled {js.flops or 0:.3g}, lowered "
                  f"{js.flops_lowered or 0:.3g}"
                  + (f" (TFLOP/s and MFU from the torchvision model's count, "
                     f"{model_flops:.3g})" if model_flops else "")
                  + f"; {hlo_census(js.hlo)}")
      else:
        info = next(p for p in peers if p.name == k).info
        if flops.get(k):
          notes += f"; FLOPs/step {flops[k]:.3g} (FlopCounterMode, eager)"
        notes += f"; ready after {info.get('warmup_seconds', 0):.0f} s"
      report.add(row=label, variant=k, images_s=sizes.batch / t, TFLOP_s=tf,
                 MFU=_mfu(tf, peak, matmul),
                 memory=mem.get(k), vs_torch=ratio, notes=notes)
  finally:
    for p in peers:
      p.close()


def _mfu(tflops: float | None, peak: float | None, matmul: float | None) -> str:
  parts = []
  if tflops and peak:
    parts.append(f"{100 * tflops / peak:.1f}%")
  if tflops and matmul:
    parts.append(f"{100 * tflops / matmul:.0f}% of the measured matmul")
  return "; ".join(parts)


def _matmul_tflops(n: int) -> float:
  """bfloat16 n^3 matmul rate on device 0, TFLOP/s (median of 5 after warm-up)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times) / 1e12


def environment(sizes: Sizes) -> dict[str, Any]:
  """Device, versions, the precision policy `auto` resolves to, the peaks."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtrain import precision  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  policy = precision.make_policy("auto")
  env = {"device": f"{len(jax.devices())} x {kind}", "jax": jax.__version__,
         "flax": flax.__version__, "python": sys.version.split()[0],
         "compute_dtype(auto)": policy.compute_dtype.__name__,
         "impl(auto)": policy.impl,
         "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
  env["peak_tflops"] = next((v for k, v in PEAKS.items() if k in kind), None)
  env["matmul_tflops"] = round(_matmul_tflops(512 if sizes.toy else 8192), 1)
  return env


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dry-run", action="store_true",
                      help="CPU, toy sizes: the same code, for tests")
  parser.add_argument("--budget", type=float, default=450.0,
                      help="seconds for the whole check; late rows are skipped [450]")
  parser.add_argument("--rows", default="digits,resnet50,vit",
                      help="comma-separated subset of digits, resnet50, vit")
  parser.add_argument("--variants", default="amp",
                      help="jaxtrain configurations timed beside the default one "
                      "(amp: precision.weight_grad_dtype=compute; '' for none) [amp]")
  parser.add_argument("--peers", default="eager,compile",
                      help="PyTorch peers: eager, compile or both [eager,compile]")
  args = parser.parse_args(argv)
  variants = tuple(v for v in args.variants.split(",") if v)
  peer_kinds = tuple(k for k in args.peers.split(",") if k)
  deadline = time.monotonic() + args.budget
  sizes = TOY if args.dry_run else FULL
  rows = args.rows.split(",")
  try:
    env = environment(sizes)
  except Exception as e:  # pylint: disable=broad-except
    env = {"environment": f"failed: {e!r}"}
  report = Report(env)
  sections = [
      ("digits", "digits CNN (jaxtrain train)", lambda: digits_row(sizes, report)),
      ("resnet50", "ResNet-50 train step", lambda: model_rows(
          "ResNet-50 train step", "resnet50", sizes.resnet, sizes, env, report,
          deadline, variants=variants, peer_kinds=peer_kinds)),
      ("vit", "ViT-B/16 train step", lambda: model_rows(
          "ViT-B/16 train step", "vit_b16", sizes.vit, sizes, env, report,
          deadline, variants=variants, peer_kinds=peer_kinds)),
  ]
  for key, label, run in sections:
    if key not in rows:
      continue
    if time.monotonic() > deadline - 30:
      report.add(row=label, notes="skipped (time budget)")
      continue
    try:
      run()
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      report.add(row=label, notes=f"FAILED: {type(e).__name__}: {str(e)[:300]}")
  print(report.table(), flush=True)
  return 0


if __name__ == "__main__":
  if "--dry-run" in sys.argv[1:]:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # JAX takes what it allocates, not 75% of the GPU up front: the PyTorch peers
  # share the device (https://docs.jax.dev/en/latest/gpu_memory_allocation.html).
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  sys.path.insert(0, ROOT)
  sys.exit(main())
