"""Per-process shards, resumption, and one real 2-process run."""
import json
import os
import sys
import textwrap

import numpy as np
import pytest

import processes

from jaxtrain.data import pipeline, transforms
from jaxtrain.data.sources import ArraySource

_AUGMENT = "random_crop(6, padding=1)|flip|normalize(100, 50)|mixup(0.5)"


def _source(n, spec=""):
  images = np.random.default_rng(0).integers(0, 256, (n, 6, 6, 3), np.uint8)
  chain = transforms.parse(spec, "data.train_transforms")
  return ArraySource(images, np.arange(n, dtype=np.int32) % 10, 10,
                     train_transforms=chain)


def _local_batches(source, global_batch, seed, process, count, num):
  it = pipeline.train_iterator(source, global_batch, seed, process_index=process,
                               process_count=count)
  return [next(it) for _ in range(num)]


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_are_disjoint_and_cover_each_epoch_once(count):
  n, global_batch = 48, 12  # 4 global batches per epoch
  shards = [_local_batches(_source(n), global_batch, 7, p, count, 8)
            for p in range(count)]
  for epoch in range(2):
    seen = [np.concatenate([b["index"] for b in shard[4 * epoch:4 * epoch + 4]])
            for shard in shards]
    for p in range(count):
      for q in range(p + 1, count):
        assert not set(seen[p]) & set(seen[q])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))


@pytest.mark.parametrize("count", [2, 4])
def test_global_batches_and_augmentations_do_not_depend_on_process_count(count):
  n, global_batch = 50, 8  # epochs end inside a batch
  one = _local_batches(_source(n, _AUGMENT), global_batch, 3, 0, 1, 14)
  shards = [_local_batches(_source(n, _AUGMENT), global_batch, 3, p, count, 14)
            for p in range(count)]
  for k in range(14):
    for key in ("index", "image", "targets"):
      np.testing.assert_array_equal(
          np.concatenate([shard[k][key] for shard in shards]), one[k][key])


def test_each_example_is_augmented_by_its_seed_epoch_and_index():
  n, spec = 10, "random_crop(6, padding=2)|flip"
  source = _source(n, spec)
  chain = transforms.parse(spec, "data.train_transforms")
  batches = _local_batches(source, 5, 4, 0, 1, 6)  # 3 epochs
  rows = [(b["index"][r], b["image"][r]) for b in batches for r in range(5)]
  for position, (index, image) in enumerate(rows):
    expected = chain.example(source.images[index], seed=4, epoch=position // n,
                             index=index)
    np.testing.assert_array_equal(image, expected)
  first, second = rows[0], next(r for r in rows[n:2 * n] if r[0] == rows[0][0])
  assert not np.array_equal(first[1], second[1])  # a new epoch, a new crop


def test_run_resumed_at_several_points_equals_a_straight_run():
  source = _source(30, _AUGMENT)
  straight = _local_batches(source, 8, 5, 0, 1, 12)
  it = pipeline.train_iterator(source, 8, 5)
  resumed = []
  for k in range(12):
    if k in (2, 5, 6, 11):  # a fresh iterator restored from the saved JSON
      state = json.loads(json.dumps(it.get_state()))
      it = pipeline.train_iterator(source, 8, 5)
      it.set_state(state)
    resumed.append(next(it))
  for a, b in zip(straight, resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_state_saved_by_one_process_restores_in_two():
  source = _source(30)
  one = pipeline.train_iterator(source, 8, 2)
  for _ in range(5):
    next(one)
  state = one.get_state()
  expected = next(one)["index"]
  parts = []
  for p in range(2):
    it = pipeline.train_iterator(source, 8, 2, process_index=p, process_count=2)
    it.set_state(state)
    parts.append(next(it)["index"])
  np.testing.assert_array_equal(np.concatenate(parts), expected)


_WORKER = textwrap.dedent("""
    import json, os, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, data_dir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxtrain.data import pipeline, sources
    c = sources.default_config()
    c.data_dir, c.train_split = data_dir, "train[:96]"
    source = sources.get_source(c, c.train_split)  # both prepare the digits at once
    it = pipeline.train_iterator(source, 16, seed=11)
    batches = [next(it) for _ in range(12)]  # 2 epochs of 96 / 16 = 6 global batches
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices())
    glob = pipeline.to_global(batches[0], NamedSharding(mesh, P("data")))
    total = int(jax.jit(lambda x: x.sum())(glob["index"]))
    with open(out, "w") as f:
      json.dump({"indices": [b["index"].tolist() for b in batches],
                 "devices": jax.device_count(), "sum": total}, f)
    jax.distributed.shutdown()
""")


def test_two_real_processes_read_disjoint_shards_covering_each_epoch(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  port, data_dir = processes.free_port(), str(tmp_path / "tfds")
  os.makedirs(data_dir)
  outs = [tmp_path / f"out{i}.json" for i in range(2)]
  processes.run_together(
      [[sys.executable, str(script), str(port), str(i), data_dir, str(outs[i])]
       for i in range(2)], processes.cpu_env(2), timeout=180)
  results = [json.loads(o.read_text()) for o in outs]
  assert [r["devices"] for r in results] == [4, 4]
  local = [np.asarray(r["indices"]) for r in results]  # (12 batches, 8 rows) each
  for epoch in range(2):
    rows = [x[6 * epoch:6 * epoch + 6].ravel() for x in local]
    assert not set(rows[0]) & set(rows[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(96))
  # The same global batches as one process reading alone (checked in this process).
  from jaxtrain.data import sources  # pylint: disable=g-import-not-at-top
  c = sources.default_config()
  c.data_dir, c.train_split = data_dir, "train[:96]"
  alone = _local_batches(sources.get_source(c, c.train_split), 16, 11, 0, 1, 12)
  for k in range(12):
    np.testing.assert_array_equal(np.concatenate([local[0][k], local[1][k]]),
                                  alone[k]["index"])
  assert results[0]["sum"] == results[1]["sum"] == int(alone[0]["index"].sum())
