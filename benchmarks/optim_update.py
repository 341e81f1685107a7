"""Times one jitted optimizer update on a ResNet-50-shaped parameter tree.

Custom optimizers (jaxtrain.optim lars / addsign / powersign) against Optax
built-ins measured in the same run: optax.lars (same exclusions), optax.sgd with
momentum (one buffer, like AddSign/PowerSign), optax.lion (Chen et al. 2023, arXiv
2302.06675: also found by program search, also one buffer and a direction built
from the signs of g and m -- the built-in whose update has AddSign's and
PowerSign's shape) and optax.adam (two buffers, for reference). Each timed call
is update + apply_updates with params and optimizer state donated, the same
params and gradients for all.

Fairness and noise: after one warm-up round, every round times a block of `iters`
updates of each optimizer, in a fresh random order, so all see the same machine
load. A ratio is the median over rounds of the per-round ratio custom / built-in
(paired: load that drifts between rounds cancels), with its quartiles.

The update is memory-bound, so the printed "MB/update" (XLA's cost analysis of the
compiled update: bytes read + written, independent of load) is what the times
follow. On XLA:CPU every fusion has one output, so a one-buffer optimizer whose
direction needs g itself (AddSign, PowerSign: mult(sign(g) sign(m)) * g) streams
g twice -- once to update m, once with p and the new m -- 7 array passes against
momentum SGD's 6 (its update reads only the new m). Their time ratio lies between
1 and 7/6, nearer 1 where caches absorb the second read. XLA:TPU fuses each leaf's
whole update into one multi-output fusion, so there both move what momentum SGD
moves. Lion's update, sign(b1 m + (1 - b1) g), needs g and m in the same two
places, so on XLA:CPU it streams the same 7 passes. `--topology=v4:2x2x1` (needs
libtpu, no TPU) prints the update's MB/update compiled for that TPU's device, next
to the CPU timings.

  python benchmarks/optim_update.py [--repeats 25] [--iters 5] [--topology v4:2x2x1]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from jaxtrain import optim


def resnet50_params() -> dict:
  """ResNet-50 v1.5 parameter shapes: HWIO conv kernels, BN scale/bias, dense."""
  shapes = {"conv_init/kernel": (7, 7, 3, 64), "bn_init/scale": (64,),
            "bn_init/bias": (64,)}
  in_ch = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for block in range(blocks):
      prefix = f"stage{stage}_block{block}"
      convs = [(1, in_ch, width), (3, width, width), (1, width, 4 * width)]
      if block == 0:
        convs.append((1, in_ch, 4 * width))  # projection shortcut
      for i, (k, cin, cout) in enumerate(convs):
        shapes[f"{prefix}/conv{i}/kernel"] = (k, k, cin, cout)
        shapes[f"{prefix}/bn{i}/scale"] = (cout,)
        shapes[f"{prefix}/bn{i}/bias"] = (cout,)
      in_ch = 4 * width
  shapes["head/kernel"] = (2048, 1000)
  shapes["head/bias"] = (1000,)
  keys = jax.random.split(jax.random.key(0), len(shapes))
  return {name: 0.05 * jax.random.normal(k, s, jnp.float32)
          for k, (name, s) in zip(keys, sorted(shapes.items()))}


def optimizers() -> dict[str, optax.GradientTransformation]:
  excluded = lambda p: jax.tree.map(lambda x: x.ndim <= 1, p)
  included = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  return {
      "jaxtrain lars": optim.lars(0.1, momentum=0.9, weight_decay=1e-4,
                                   trust_coefficient=0.001, exclude=excluded),
      "optax.lars": optax.lars(0.1, weight_decay=1e-4, weight_decay_mask=included,
                               trust_coefficient=0.001,
                               trust_ratio_mask=included, momentum=0.9),
      "jaxtrain addsign": optim.addsign(0.1),
      "jaxtrain powersign": optim.powersign(0.1),
      "optax.sgd(momentum)": optax.sgd(0.1, momentum=0.9),
      "optax.lion": optax.lion(1e-4),
      "optax.adam": optax.adam(1e-3),
  }


def make_step(tx: optax.GradientTransformation):
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return jax.jit(step, donate_argnums=(0, 1))


def bytes_per_update(step, params, opt_state, grads, device=None) -> float:
  """Bytes read + written by the compiled update (XLA cost analysis), compiled
  for `device` (e.g. an AOT TPU device) or, by default, where the arrays are."""
  if device is not None:
    sharding = jax.sharding.SingleDeviceSharding(device)
    params, opt_state, grads = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        (params, opt_state, grads))
  cost = step.lower(params, opt_state, grads).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("bytes accessed", float("nan")))


def time_rounds(runs: dict, grads, rounds: int, iters: int) -> dict:
  """Per optimizer, the seconds per update of each round (rounds interleaved)."""
  times = {name: [] for name in runs}
  order = list(runs)
  shuffle = random.Random(0).shuffle
  for r in range(rounds + 1):  # round 0 warms up (page faults, thread pools)
    shuffle(order)
    for name in order:
      run = runs[name]
      step, p, s = run
      start = time.perf_counter()
      for _ in range(iters):
        p, s = step(p, s, grads)
      jax.block_until_ready((p, s))
      if r:
        times[name].append((time.perf_counter() - start) / iters)
      run[1], run[2] = p, s
  return times


PAIRS = (("jaxtrain lars", "optax.lars"),
         ("jaxtrain addsign", "optax.sgd(momentum)"),
         ("jaxtrain powersign", "optax.sgd(momentum)"),
         ("jaxtrain addsign", "optax.lion"),
         ("jaxtrain powersign", "optax.lion"),
         ("jaxtrain addsign", "optax.adam"),
         ("jaxtrain powersign", "optax.adam"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=25, help="timed rounds")
  parser.add_argument("--iters", type=int, default=5, help="updates per round")
  parser.add_argument("--topology", default="", help="also report MB/update "
                      "compiled for this TPU topology's device, e.g. v4:2x2x1")
  args = parser.parse_args()
  target = None
  if args.topology:
    from jaxtrain import aot  # pylint: disable=g-import-not-at-top
    target = aot.get_target(args.topology)

  params = resnet50_params()
  n = sum(p.size for p in jax.tree.leaves(params))
  grads = jax.tree.map(lambda p: 1e-3 * jnp.sign(p) + 1e-4, params)
  runs, traffic, target_traffic = {}, {}, {}
  for name, tx in optimizers().items():
    p = jax.tree.map(jnp.copy, params)
    step = make_step(tx)
    s = tx.init(p)
    traffic[name] = bytes_per_update(step, p, s, grads)
    if target:
      target_traffic[name] = bytes_per_update(step, p, s, grads,
                                              target.devices[0])
    p, s = step(p, s, grads)  # compile + warm up
    jax.block_until_ready((p, s))
    runs[name] = [step, p, s]
  times = time_rounds(runs, grads, args.repeats, args.iters)

  print(f"ResNet-50 params: {n:,}  backend: {jax.default_backend()}  "
        f"devices: {jax.device_count()}  rounds: {args.repeats} x {args.iters}")
  column = f"MB {target.kind}" if target else ""
  print(f"{'optimizer':<22}{'median ms/update':>18}{'min ms/update':>16}"
        f"{'MB/update':>12}{column:>14}")
  for name, t in times.items():
    on_target = (f"{target_traffic[name] / 1e6:>14.1f}" if target else "")
    print(f"{name:<22}{statistics.median(t) * 1e3:>18.2f}{min(t) * 1e3:>16.2f}"
          f"{traffic[name] / 1e6:>12.1f}{on_target}")
  print("ratios custom / closest built-in (target <= 1.15): median of per-round "
        "ratios [quartiles]; MB ratio")
  for custom, builtin in PAIRS:
    ratios = [a / b for a, b in zip(times[custom], times[builtin])]
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    on_target = (f"   {target.kind} MB "
                 f"{target_traffic[custom] / target_traffic[builtin]:.3f}"
                 if target else "")
    print(f"  {custom:<20} / {builtin:<20} {med:6.3f} [{q1:.3f}, {q3:.3f}]"
          f"   MB {traffic[custom] / traffic[builtin]:.3f}{on_target}")


if __name__ == "__main__":
  main()
