"""Grain input pipelines that end in global `jax.Array`s sharded over the mesh.

Train: a Grain `MapDataset` over example indices, shuffled globally by seed and
reshuffled every epoch (Grain's `shuffle().repeat()` re-keys the permutation per
epoch), each element tagged with its epoch: the stream. A `BatchPlan` cuts it into
global batches (by default all of size B: batch k is stream elements
[k*B, (k+1)*B); with stages the size changes by step, with repeated augmentation
each example fills several rows) and process p of P reads its contiguous block of
every global batch's rows, so the global batch is the same whatever the number of
processes: 1 process x 8 devices and 2 processes x 4 devices train on the same rows
in the same order. Each local batch is
read and transformed as one unit (`Source.load_batch`, randomness a pure function of
(seed, epoch, example index)), in-process with `prefetch` threads or in `num_workers`
Grain worker processes (`mp_prefetch`, order preserved).

The iterator's state is one number, the local batches consumed, which is the same on
every process and independent of the worker count: a checkpoint written by any
number of processes and workers restores under any other.

Eval: the split in order, padded to whole global batches with `mask` = 0 rows, so
every example is counted exactly once across all processes.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Iterator, Protocol

import grain
import jax
from absl import flags
import numpy as np
from jax.sharding import NamedSharding

from jaxtrain.data import index_shuffle
from jaxtrain.data.batch_plan import BatchPlan

Batch = dict[str, np.ndarray]


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, i: int) -> dict[str, Any]: ...


def _processes(index: int | None, count: int | None) -> tuple[int, int]:
  """(process index, process count), from JAX unless given (tests, dry runs)."""
  count = jax.process_count() if count is None else count
  index = jax.process_index() if index is None else index
  if not 0 <= index < count:
    raise ValueError(f"process index {index} is not in [0, {count})")
  return index, count


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
  count = jax.process_count() if process_count is None else process_count
  if global_batch % count:
    raise ValueError(f"global batch {global_batch} does not divide over {count} "
                     "processes")
  return global_batch // count


def _load(source: Source, indices: np.ndarray, train: bool, seed: int = 0,
          epochs: np.ndarray | None = None, **options: Any) -> Batch:
  """One batch through the source's chain (`Source.load_batch`), or stacked items.

  `options` (repeated-augmentation copies, a stage's chain) go to `load_batch`.
  """
  if hasattr(source, "load_batch"):
    return source.load_batch(indices, train=train, seed=seed, epochs=epochs,
                             **options)
  examples = [source[int(i)] for i in indices]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  batch["index"] = np.asarray(indices, np.int32)
  return batch


def _tag_epoch(num_examples: int, position: int, index: int) -> tuple[int, int]:
  return position // num_examples, index


class _StreamOrder:
  """(epoch, example index) at positions of the stream, a whole epoch at a time.

  Grain's stream gives them one position at a time (~50 us each on this 2-core
  machine, 3 ms of a 64-row batch); its permutation is recomputed here for a whole
  epoch by `index_shuffle.permutation` (~10 ms per 1,437-example epoch), checked
  against the stream at both ends of every epoch. Tiny datasets, or a Grain whose
  shuffle this does not reproduce, are read from the stream itself.
  """

  def __init__(self, stream: grain.MapDataset, num_examples: int,
               shuffle_seed: int | None):
    self._stream, self._n = stream, num_examples
    self._seed = shuffle_seed if num_examples >= 256 else None
    self._perms: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:  # Grain worker processes
    return {**self.__dict__, "_perms": {}, "_lock": None}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state, _lock=threading.Lock())

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    """(len(positions), 2) int64 of (epoch, index)."""
    positions = np.asarray(positions, np.int64)
    if self._seed is None:
      return np.asarray([self._stream[int(p)] for p in positions],
                        np.int64).reshape(-1, 2)
    epochs = positions // self._n
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      rows = epochs == epoch
      perm = self._permutation(int(epoch))
      if perm is None:
        self._seed = None
        return self(positions)
      indices[rows] = perm[positions[rows] % self._n]
    return np.stack([epochs, indices], axis=1)

  def _permutation(self, epoch: int) -> np.ndarray | None:
    with self._lock:
      perm = self._perms.get(epoch)
    if perm is not None:
      return perm
    perm = index_shuffle.permutation(self._n, (self._seed + epoch) % 2**32)
    ends = (0, self._n - 1)
    if any(tuple(self._stream[epoch * self._n + i]) != (epoch, perm[i])
           for i in ends):
      return None
    with self._lock:
      for old in sorted(self._perms)[:-2]:  # keep the epochs in flight
        del self._perms[old]
      self._perms[epoch] = perm
    return perm


def _local_rows(order: _StreamOrder, plan: BatchPlan, process: int, count: int,
                step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """(epochs, indices, copies, stage) of this process's rows of batch `step`."""
  positions, copies = plan.local_rows(step, process, count)
  tagged = order(positions)
  return tagged[:, 0], tagged[:, 1], copies, plan.stage_index(step)


def _load_train(source: Source, seed: int, chains: list[Any] | None,
                rows: Any) -> Batch:
  epochs, indices, copies, stage = rows
  options = {}
  if chains is not None:
    options = {"copies": copies, "chain": chains[stage]}
  return _load(source, indices, True, seed, epochs, **options)


def _options(source: Source, num_workers: int | None, prefetch: int | None
             ) -> tuple[int, int]:
  workers = getattr(source, "num_workers", 0) if num_workers is None else num_workers
  ahead = getattr(source, "prefetch", 2) if prefetch is None else prefetch
  return workers, ahead


def _iterate(ds: grain.MapDataset, num_workers: int, prefetch: int
             ) -> grain.DatasetIterator:
  """Iterates `ds` with `prefetch` threads, in `num_workers` processes if > 0."""
  read = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
  it_ds = ds.to_iter_dataset(read)
  if num_workers:
    # Grain's worker start-up reads absl flags; outside an absl app (our CLI uses
    # argparse) they were never parsed, so take their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)))
  return iter(it_ds)


class TrainIterator(grain.DatasetIterator):
  """Endless iterator of one process's train batches; state: batches consumed.

  Restoring (`set_state`) restarts the Grain iterator (and its worker processes) at
  the saved position, so the state does not depend on the number of workers.
  """

  def __init__(self, batches: grain.MapDataset, num_workers: int, prefetch: int):
    super().__init__()
    self._batches, self._num_workers, self._prefetch = batches, num_workers, prefetch
    self._next = 0
    self._it: grain.DatasetIterator | None = None

  def __next__(self) -> Batch:
    if self._it is None:
      self._it = _iterate(self._batches[self._next:], self._num_workers,
                          self._prefetch)
    batch = next(self._it)
    self._next += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_index": self._next}

  def set_state(self, state: dict[str, Any]) -> None:
    self.close()
    self._next = int(state["next_index"])

  def close(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None


def train_iterator(source: Source, global_batch: int, seed: int, *,
                   plan: BatchPlan | None = None,
                   num_workers: int | None = None, prefetch: int | None = None,
                   process_index: int | None = None,
                   process_count: int | None = None) -> TrainIterator:
  """An endless, checkpointable iterator of this process's train batches.

  Args:
    source: a `sources.Source` (its train transforms apply) or any sequence of
      example dicts.
    global_batch: batch size over all processes (when `plan` is None).
    seed: shuffling and augmentation seed.
    plan: batch sizes by step (stages), image size by stage (the last sized op of
      the train transforms is resized) and repeated augmentation; default: every
      batch `global_batch` rows.
    num_workers, prefetch: default to the source's (`config.data`).
    process_index, process_count: default to JAX's; set them to simulate hosts.

  Yields:
    {"image": float32 (L, H, W, C), "label": int32 (L,), "index": int32 (L,)} with
    L = global_batch / process_count, plus "targets": float32 (L, num_classes) when
    the train transforms mix or smooth labels.
  """
  index, count = _processes(process_index, process_count)
  plan = plan or BatchPlan.constant(global_batch)
  chain = getattr(source, "train_transforms", None)
  for stage in plan.stages:
    local = local_batch_size(stage.batch_size, count)
    if chain is not None and chain.has_targets and local % 2:
      raise ValueError(f"mixup/cutmix mix pairs of rows: the per-process batch "
                       f"({local}) must be even")
  chains = None if chain is None else [chain.resized(s.image_size)
                                       for s in plan.stages]
  n = len(source)
  shuffled = grain.MapDataset.range(n).seed(seed).shuffle()
  stream = shuffled.repeat(None).map_with_index(functools.partial(_tag_epoch, n))
  order = _StreamOrder(stream, n, getattr(shuffled, "_seed", None))
  ds = (grain.MapDataset.range(len(stream))
        .map(functools.partial(_local_rows, order, plan, index, count))
        .map(functools.partial(_load_train, source, seed, chains)))
  return TrainIterator(ds, *_options(source, num_workers, prefetch))


def _eval_batch(source: Source, global_batch: int, local: int, process: int,
                k: int) -> Batch:
  start = k * global_batch + process * local
  idx = np.arange(start, start + local)
  mask = idx < len(source)
  batch = _load(source, np.where(mask, idx, 0), train=False)
  batch["mask"] = mask.astype(np.float32)
  return batch


def eval_batches(source: Source, global_batch: int, *, num_workers: int | None = None,
                 prefetch: int | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[Batch]:
  """This process's share of every eval batch, padded, with a 0/1 `mask`."""
  index, count = _processes(process_index, process_count)
  local = local_batch_size(global_batch, count)
  num_batches = -(-len(source) // global_batch)
  ds = grain.MapDataset.range(num_batches).map(
      functools.partial(_eval_batch, source, global_batch, local, index))
  it = _iterate(ds, *_options(source, num_workers, prefetch))
  try:
    yield from it
  finally:
    it.close()


def to_global(batch: Batch, sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's rows into one global array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}
