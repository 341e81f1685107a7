"""Cost of checking checkpoint checksums on restore, on a ResNet-50 train state.

The state is ResNet-50's parameters, SGD momentum and batch-norm statistics (the
float32 trees of a real `jaxtrain` state, ~205 MB, random values), saved once with
`jaxtrain.checkpoint.Checkpointer`, which records an XXH3-64 hash of every saved piece
(`jaxtrain.checksums`). It is then restored alternately, in a fresh random order
each round:

  plain     Orbax's restore of the state and data items: jaxtrain's restore
            before checksums, and what it costs without them;
  verified  `Checkpointer.restore`: the same, plus reading every process's
            checksum record and hashing every restored piece against it.

The ratio is the median over rounds of verified / plain (paired, so load that
drifts between rounds cancels), with its quartiles; the target is <= 1.2. Also
printed: the hashing throughput (bytes hashed per second of verification) and the
save-side cost, `checksums.record` (hashing the shards before the asynchronous save
starts) against the save call itself. The load average is printed with the
figures: time them on a quiet machine. Without --cold the files are read from the
page cache (the fastest restore, so the largest ratio); --cold drops the page
cache before every restore (root only), as a restore after a restart reads them.

  python benchmarks/checkpoint_verify.py [--repeats 7] [--model resnet50] \\
      [--dir /tmp/checkpoint_verify] [--cold]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxtrain import checkpoint, checksums, models


class _Position:
  """A data iterator's checkpointed position (what the data item holds)."""

  def __init__(self):
    self.state = {"batches": 1234, "seed": 0}

  def get_state(self):
    return dict(self.state)

  def set_state(self, state):
    self.state = dict(state)


def resnet_state(name: str, seed: int = 0) -> dict:
  """{"train": {params, momentum, batch_stats}} of `name` at 224 px, random."""
  model = models.get_model(name, num_classes=1000)
  shapes = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False)))
  momentum = jax.eval_shape(optax.sgd(0.1, momentum=0.9).init, shapes["params"])
  tree = {"params": shapes["params"], "momentum": momentum,
          "batch_stats": shapes["batch_stats"]}
  rng = np.random.default_rng(seed)
  return {"train": jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), tree)}


def _drop_page_cache() -> None:
  os.sync()
  with open("/proc/sys/vm/drop_caches", "w") as f:
    f.write("3\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
  parser.add_argument("--cold", action="store_true",
                      help="drop the page cache before every restore (root)")
  args = parser.parse_args()

  state = resnet_state(args.model)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
  workdir = args.dir or tempfile.mkdtemp(prefix="checkpoint_verify_")
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  ckpt = checkpoint.Checkpointer(workdir, every=1, keep=1)
  position = _Position()

  t0 = time.perf_counter()
  checksums.record(state, {"iterator": position.get_state()})
  record_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  ckpt.save(1, state, position, ml_collections.ConfigDict({"model": args.model}))
  save_call_s = time.perf_counter() - t0  # includes a second record()
  ckpt.wait()

  target = checkpoint.abstract_like(state)
  manager = ckpt._manager  # pylint: disable=protected-access

  def plain():
    restored = manager.restore(1, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    jax.block_until_ready(restored["state"])

  def verified():
    jax.block_until_ready(ckpt.restore(1, target, position))

  for fn in (plain, verified):  # warm-up: imports, first-call costs
    fn()
  times: dict[str, list[float]] = {"plain": [], "verified": []}
  for _ in range(args.repeats):
    order = [("plain", plain), ("verified", verified)]
    random.shuffle(order)
    for name, fn in order:
      if args.cold:
        _drop_page_cache()
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  restored = manager.restore(1, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
      checksums=checksums.ChecksumRestore()))
  check_s = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    assert checksums.verify(restored["state"], restored["data"],
                            restored["checksums"]).ok
    check_s.append(time.perf_counter() - t0)
  hash_rate = nbytes / statistics.median(check_s)
  ratios = sorted(v / p for v, p in zip(times["verified"], times["plain"]))
  q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
  plain_s, verified_s = (statistics.median(times[k]) for k in ("plain", "verified"))
  ckpt.close()
  if args.dir is None:
    shutil.rmtree(workdir, ignore_errors=True)

  print(f"{args.model} state: {nbytes / 1e6:.1f} MB float32 "
        f"({len(jax.tree.leaves(state))} arrays) on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s); page cache "
        f"{'dropped' if args.cold else 'warm'}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"restore plain    {plain_s * 1e3:8.1f} ms (median of {args.repeats})")
  print(f"restore verified {verified_s * 1e3:8.1f} ms")
  print(f"verified / plain {med:.3f} (quartiles {q1:.3f} .. {q3:.3f}); target <= 1.2")
  print(f"checksums.verify alone: {nbytes / 1e6:.0f} MB in "
        f"{statistics.median(check_s) * 1e3:.1f} ms, {hash_rate / 1e9:.2f} GB/s")
  print(f"save: checksums.record {record_s * 1e3:.1f} ms before the async save; "
        f"the save call {save_call_s * 1e3:.1f} ms including it")


if __name__ == "__main__":
  main()
