"""ResNet-50 train step: ours (runner path) vs the classic pmap step, FLOP/s, scaling.

One run prints, for ResNet-50 v1.5 at 224x224, global batch 16, float32:
  1. examples/s of our jitted step: `runner.make_jitted_steps` on a data-parallel
     mesh of the first --devices CPU devices (default 1);
  2. its achieved FLOP/s (FLOPs from the compiled program's cost analysis) over the
     f32 matmul peak measured in the same run (a 2048^3 matmul, interleaved too);
  3. the same step written the classic way, as in the Flax ImageNet example
     (examples/imagenet/train.py): `jax.pmap` over the same devices, gradients and
     batch statistics `lax.pmean`'d, `optax.sgd` with momentum; same model, batch
     and optimizer, and the ratio ours / classic;
  4. the 8-device data-parallel step time over the 1-device time for the same
     global batch (a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8;
     on one machine the 8 devices share its cores, so this measures the overhead of
     partitioning, not a speed-up).
Timed calls are interleaved (ours, classic, matmul, then the reverse order, ...)
and medians reported, so machine load affects all alike; the speed ratio is the
median of the per-round ratios classic / ours (with quartiles): steps of ~4 s vary
by +-5% on a shared machine, so a single ratio of medians can land either side of
1.0 for the same programs.

Differences in work, all against us: our step also guards against non-finite
updates (per-leaf sums of squares, a select over the state), draws a dropout key and
accumulates metric sums (loss, accuracy, top-5). With more than one device the
classic step normalizes each device's batch-norm statistics locally (only the
running averages are averaged), ours over the global batch.

  python benchmarks/train_step.py [--devices=1] [--repeats=9]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

if __name__ == "__main__":
  # The device count is fixed when JAX starts: read --devices before importing it.
  _args = " ".join(sys.argv[1:]).replace("--devices ", "--devices=").split()
  _n = next((int(a.split("=")[1]) for a in _args if a.startswith("--devices=")), 1)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if _n > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                               f"platform_device_count={_n}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from jaxtrain import runner  # noqa: E402
from jaxtrain.config import base_config  # noqa: E402
from jaxtrain.parallel import mesh as mesh_lib, sharding  # noqa: E402
from jaxtrain.state import create_train_state  # noqa: E402

BATCH, SIZE, CLASSES, LR, MOMENTUM = 16, 224, 1000, 0.1, 0.9


def config():
  c = base_config()
  c.model.name = "resnet50"
  c.data.source = "synthetic"
  c.data.synthetic.image_shape = (SIZE, SIZE, 3)
  c.data.synthetic.num_classes, c.data.synthetic.num_examples = CLASSES, BATCH
  c.optimizer.name, c.optimizer.learning_rate = "momentum", LR
  c.optimizer.momentum = MOMENTUM
  c.optimizer.schedule.name = "constant"
  c.train.batch_size, c.train.num_steps = BATCH, 10
  c.precision.compute_dtype = "float32"
  return c


def batch_arrays():
  rng = np.random.default_rng(0)
  images = rng.standard_normal((BATCH, SIZE, SIZE, 3), np.float32)
  labels = rng.integers(0, CLASSES, BATCH).astype(np.int32)
  return images, labels


def ours(devices):
  """Our step, its per-device FLOPs, and a timed call."""
  c = config()
  exp = runner.build(c, devices)
  state, shardings = create_train_state(exp.model, exp.tx, (SIZE, SIZE, 3), 0,
                                        exp.mesh, c.sharding.rules)
  images, labels = batch_arrays()
  batch = jax.device_put({"image": images, "label": labels},
                         mesh_lib.batch_sharding(exp.mesh))
  with sharding.activate(exp.mesh, c.sharding.rules):
    train_fn, _, init_sums = runner.make_jitted_steps(exp, state, shardings)
    sums = init_sums()
    compiled = train_fn.lower(state, sums, batch).compile()
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, list) else cost)["flops"])
  carry = [state, sums]

  def call():
    with sharding.activate(exp.mesh, c.sharding.rules):
      carry[0], carry[1] = compiled(carry[0], carry[1], batch)
    jax.block_until_ready(carry[0].params)
  return call, flops, exp.model


def classic(devices, model):
  """The Flax ImageNet example's step: pmap, pmean'd grads and batch_stats, sgd."""
  n = len(devices)
  tx = optax.sgd(LR, momentum=MOMENTUM)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                         jnp.zeros((1, SIZE, SIZE, 3)), train=False))()
  params, stats = variables["params"], variables["batch_stats"]

  def step(params, stats, opt_state, images, labels):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": stats}, images,
                                train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, new["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, "batch")
    new_stats = jax.lax.pmean(new_stats, "batch")
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_stats, opt_state,
            jax.lax.pmean(loss, "batch"))

  p_step = jax.pmap(step, axis_name="batch", devices=devices, donate_argnums=(0, 1, 2))
  # pmap's layout: leading axis of size n split over the devices.
  split = NamedSharding(Mesh(np.asarray(devices), ("batch",)), P("batch"))
  replicate = lambda t: jax.device_put(  # noqa: E731
      jax.tree.map(lambda x: np.broadcast_to(x, (n, *x.shape)), t), split)
  carry = [replicate(params), replicate(stats), replicate(tx.init(params))]
  images, labels = batch_arrays()
  images = jax.device_put(images.reshape(n, BATCH // n, SIZE, SIZE, 3), split)
  labels = jax.device_put(labels.reshape(n, BATCH // n), split)

  def call():
    carry[0], carry[1], carry[2], _ = p_step(*carry, images, labels)
    jax.block_until_ready(carry[0])
  return call


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


MATMUL = 2048


def matmul() -> Callable[[], Any]:
  """A timed call of one 2048^3 float32 matmul on the first device."""
  a = jax.device_put(jnp.ones((MATMUL, MATMUL), jnp.float32), jax.devices()[0])
  f = jax.jit(lambda x: x @ x)
  return lambda: jax.block_until_ready(f(a))


def measure(n: int, repeats: int, with_classic: bool) -> dict:
  devices = jax.devices()[:n]
  ours_call, flops, model = ours(devices)
  calls = {"ours": ours_call}
  if with_classic:
    calls["classic"] = classic(devices, model)
    calls["matmul"] = matmul()  # the peak, under the same machine load
  for f in calls.values():
    f()  # compile and warm up
  times = {k: [] for k in calls}
  for r in range(repeats):
    for k in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
      times[k].append(timed(calls[k]))
  out = {"flops_per_device": flops,
         **{k: statistics.median(v) for k, v in times.items()}}
  if with_classic:  # paired: each round's classic / ours, load drift cancels
    out["speed_ratios"] = [c / o for c, o in zip(times["classic"], times["ours"])]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.devices, args.repeats, with_classic=False)))
    return
  n = args.devices
  print(f"ResNet-50 v1.5, {SIZE}x{SIZE}, global batch {BATCH}, float32, {n} CPU "
        f"device(s), median of {args.repeats} interleaved steps", flush=True)
  m = measure(n, args.repeats, with_classic=True)
  peak = 2 * MATMUL**3 / m["matmul"]
  achieved = m["flops_per_device"] / m["ours"]
  print(f"ours (runner.make_jitted_steps, jit + NamedSharding): {m['ours']:.3f} s/step"
        f" = {BATCH / m['ours']:.2f} examples/s")
  print(f"classic (pmap, pmean grads + batch_stats, optax.sgd): {m['classic']:.3f} "
        f"s/step = {BATCH / m['classic']:.2f} examples/s")
  ratios = m["speed_ratios"]
  q1, med, q3 = (statistics.quantiles(ratios, n=4) if len(ratios) > 1
                 else ratios * 3)
  print(f"ours / classic speed: {med:.3f}x (median of the {len(ratios)} rounds' "
        f"ratios, quartiles {q1:.3f}-{q3:.3f}; ratio of medians "
        f"{m['classic'] / m['ours']:.3f}x)")
  print(f"FLOPs per step per device (cost analysis): {m['flops_per_device']:.4g}; "
        f"achieved {achieved / 1e9:.1f} GFLOP/s per device = "
        f"{100 * achieved / peak:.1f}% of the f32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, __file__, "--child", "--devices=8",
                        f"--repeats={args.repeats}"], env=env, check=True,
                       capture_output=True, text=True).stdout
  eight = json.loads(out.strip().splitlines()[-1])["ours"]
  one = m["ours"] if n == 1 else measure(1, args.repeats, with_classic=False)["ours"]
  print(f"8 devices data-parallel vs 1 device, same global batch {BATCH}: "
        f"{eight:.3f} s vs {one:.3f} s per step = {eight / one:.2f}x the time "
        f"(devices share this machine's {os.cpu_count()} cores)")


if __name__ == "__main__":
  main()
