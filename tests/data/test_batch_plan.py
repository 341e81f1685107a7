"""Batch plans: stage switches and repeated augmentation over the train stream."""
import collections

import grain
import numpy as np
import pytest

from jaxtrain.data import batch_plan, pipeline, transforms
from jaxtrain.data.sources import ArraySource

SEED = 5


def _source(n, spec, side=16):
  images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), np.uint8)
  return ArraySource(images, np.arange(n, dtype=np.int32) % 10, 10,
                     train_transforms=transforms.parse(spec, "data.train_transforms"))


def _reference_stream(n, length):
  """The stream the runner trains on, read from Grain: shuffled, reshuffled per epoch."""
  stream = grain.MapDataset.range(n).seed(SEED).shuffle().repeat(None)
  return np.asarray([stream[p] for p in range(length)])


def _batches(source, plan, num, process=0, count=1):
  it = pipeline.train_iterator(source, 0, SEED, plan=plan, process_index=process,
                               process_count=count)
  return [next(it) for _ in range(num)]


def _global(source, plan, num, count):
  shards = [_batches(source, plan, num, p, count) for p in range(count)]
  return [{k: np.concatenate([s[i][k] for s in shards]) for k in shards[0][i]}
          for i in range(num)]


@pytest.mark.parametrize("count", [1, 2, 4])
def test_repeated_augmentation_repeats_each_example_with_new_augmentations(count):
  n, batch, repeats, steps = 40, 24, 3, 5  # 8 distinct examples per batch
  plan = batch_plan.BatchPlan.constant(batch, aug_repeats=repeats)
  source = _source(n, "random_resized_crop(8)|flip")
  batches = _global(source, plan, steps, count)
  distinct = _reference_stream(n, steps * batch // repeats).reshape(steps, -1)
  for b, expected in zip(batches, distinct):
    # The multiset: each of the next 8 stream examples exactly 3 times...
    assert collections.Counter(b["index"].tolist()) == {
        int(i): repeats for i in expected}
    # ... as the 8 examples tiled 3 times: copies are 8 rows apart, so on 8
    # devices (3 rows each) the copies of an example sit on 3 different devices.
    np.testing.assert_array_equal(b["index"], np.tile(expected, repeats))
    for j in range(batch // repeats):
      copies = b["image"][j::batch // repeats]
      for a in range(repeats):
        for c in range(a + 1, repeats):
          assert not np.array_equal(copies[a], copies[c]), (j, a, c)
  if count > 1:  # the global batch does not depend on the number of processes
    for x, y in zip(batches, _global(source, plan, steps, 1)):
      np.testing.assert_array_equal(x["image"], y["image"])


def test_stage_switch_continues_the_stream_at_the_new_size_and_batch():
  n = 30
  plan = batch_plan.from_config([(0, 4, 8), (3, 6, 12)], batch_size=8)
  source = _source(n, "random_crop(6, padding=1)|flip", side=6)
  batches = _global(source, plan, 6, count=2)
  assert [b["image"].shape for b in batches] == [(8, 4, 4, 3)] * 3 + [(12, 6, 6, 3)] * 3
  seen = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(seen, _reference_stream(n, 3 * 8 + 3 * 12))
  # Resumed mid-stage from the iterator state: the same next batches.
  it = pipeline.train_iterator(source, 0, SEED, plan=plan)
  for _ in range(4):
    next(it)
  resumed = pipeline.train_iterator(source, 0, SEED, plan=plan)
  resumed.set_state(it.get_state())
  np.testing.assert_array_equal(next(resumed)["image"], next(it)["image"])


def test_rows_and_steps_of_a_staged_plan():
  plan = batch_plan.from_config([(0, 0, 4), (10, 0, 16)], batch_size=4)
  assert [plan.rows_before(s) for s in (0, 5, 10, 11, 20)] == [0, 20, 40, 56, 200]
  assert plan.batch_size(9) == 4 and plan.batch_size(10) == 16
  assert plan.boundaries == (10,)
  # 100 rows: 40 in the first stage, then ceil(60 / 16) = 4 steps of 16.
  assert plan.steps_for_rows(100) == 14 and plan.steps_for_rows(40) == 10
  assert batch_plan.BatchPlan.constant(32).steps_for_rows(1437 * 2) == 90


def test_stage_size_resizes_the_last_sized_op_only():
  chain = transforms.parse("resize(10)|random_crop(8, padding=1)|flip", "f")
  ops = chain.resized(6).example_ops
  assert (ops[0].size, ops[1].size, ops[1].padding) == (10, 6, 1)
  with pytest.raises(ValueError, match="no op with a size"):
    transforms.parse("flip", "f").resized(6)
