"""Data sources: random-access splits of examples, with their transforms.

`get_source(config.data, split)` returns a `Source`: `len`, random access, the
dataset's `num_classes`, and `image_shape`, the (H, W, C) the model sees after the
transforms. A source holds both transform chains of the config (`train_transforms`
for `pipeline.train_iterator`, `eval_transforms` for `pipeline.eval_batches`), whose
images have the same number of channels (height and width may differ: FixRes). Where
examples come from (`config.data.source`):

- "tfds": any TFDS dataset prepared in `data_dir` as ArrayRecord, by `name` and split
  (slices allowed), through `tfds.data_source` (`jaxtrain.data.tfds_source`). The
  bundled `digits` (UCI handwritten digits, `jaxtrain.data.builders.digits`) is
  prepared on first use. The default.
- "arrays": in-memory arrays registered by name (`register_arrays`; `digits` built in).
- "synthetic": uint8 noise images of any shape, for benchmarks and pod dry runs.
- "image_folder": your own images, `data_dir/<split>/<class>/<file>`
  (`jaxtrain.data.image_folder`).
- "hf": a Hugging Face dataset on disk, `save_to_disk` or Parquet files in
  `data_dir` (`jaxtrain.data.hf_source`).

Splits of all but "arrays" take TFDS's slice syntax (``train[:90%]``).

Everything that can be checked without reading data is checked by `validate`;
`get_source` checks the rest (dataset, split, data_dir, transforms on real examples,
shapes) and raises `ConfigError` naming the field and what exists.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Protocol

import ml_collections
import numpy as np

from jaxtrain.data import tfds_source, transforms
from jaxtrain import validated
from jaxtrain.checks import is_int
from jaxtrain.errors import ConfigError

SOURCES = ("tfds", "arrays", "synthetic", "image_folder", "hf")
FOLDER_SOURCES = ("image_folder", "hf")  # read from data.data_dir
MAX_WORKERS = 1024  # data.num_workers / data.prefetch
Batch = dict[str, np.ndarray]
ArraySplits = Callable[[], tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]]


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` section: every field a source or transform reads."""
  return ml_collections.ConfigDict(dict(
      source="tfds",          # tfds | arrays | synthetic | image_folder | hf
      name="digits",          # dataset name (tfds: name[/config][:version])
      train_split="train",    # TFDS split spec, slices allowed: "train[:90%]"
      eval_split="test",
      data_dir="",            # tfds: prepared datasets ("": $TFDS_DATA_DIR or
                              # ~/.cache/jaxtrain/tensorflow_datasets);
                              # image_folder, hf: the dataset's folder
      image_key="image",      # tfds, hf: feature holding the image
      label_key="label",      # tfds, hf: ClassLabel feature holding the class
      train_transforms="",    # ops joined by "|" (jaxtrain.data.transforms)
      eval_transforms="",     # per-example ops only
      image_shape=(),         # (H, W, C) the model expects; (): whatever comes out
      num_workers=0,          # Grain worker processes per host; 0: in-process
      prefetch=2,             # batches prepared ahead (threads when in-process,
                              # buffer per worker process otherwise)
      aug_repeats=1,          # repeated augmentation: each example this many times
                              # per train batch, augmented differently (timm: 3)
      synthetic=ml_collections.ConfigDict(dict(
          image_shape=(224, 224, 3), num_classes=1000, num_examples=10_000)),
  ))


def validate(data: ml_collections.ConfigDict) -> None:
  """Checks `config.data` without reading any data; raises ConfigError."""
  if data.source not in SOURCES:
    raise ConfigError("data.source", data.source, "unknown data source",
                      choices=SOURCES)
  if not (isinstance(data.name, str) and data.name):
    raise ConfigError("data.name", data.name, "name the dataset")
  if data.source in FOLDER_SOURCES and not data.data_dir:
    raise ConfigError("data.data_dir", data.data_dir, f"data.source={data.source!r} "
                      "reads the dataset's folder: give its path")
  if data.source == "arrays" and data.name not in _ARRAYS:
    raise ConfigError("data.name", data.name, "no in-memory dataset of that name; "
                      "register one with sources.register_arrays", choices=_ARRAYS)
  transforms.parse(data.train_transforms, "data.train_transforms")
  transforms.parse(data.eval_transforms, "data.eval_transforms",
                   allow_batch_ops=False)
  for field in ("num_workers", "prefetch"):
    # Each is a process or a thread (and a batch held): past a few per core they
    # add memory, not speed.
    if not is_int(data[field], 0, MAX_WORKERS):
      raise ConfigError(f"data.{field}", data[field], f"use an integer in [0, "
                        f"{MAX_WORKERS}] (a few per CPU core at most help)")
  if not is_int(data.aug_repeats, 1):
    raise ConfigError("data.aug_repeats", data.aug_repeats, "use an integer >= 1 "
                      "(1: no repeated augmentation; DeiT/timm use 3)")
  if data.aug_repeats > 1 and not transforms.parse(
      data.train_transforms, "data.train_transforms").random:
    raise ConfigError("data.aug_repeats", data.aug_repeats, "repeated augmentation "
                      "needs random train transforms (e.g. random_resized_crop, "
                      "flip), or every copy of an example is the same image")
  if tuple(data.image_shape) and not _is_shape(data.image_shape):
    raise ConfigError("data.image_shape", data.image_shape, "use (height, width, "
                      "channels) of positive ints, or () to accept any shape")
  syn = data.synthetic
  if not _is_shape(syn.image_shape):
    raise ConfigError("data.synthetic.image_shape", syn.image_shape,
                      "use (height, width, channels) of positive ints")
  for field in ("num_classes", "num_examples"):
    if not is_int(syn[field], 1):
      raise ConfigError(f"data.synthetic.{field}", syn[field], "use an integer >= 1")
  memory, need = host_memory_bytes(), 4 * int(np.prod(syn.image_shape))
  if data.source == "synthetic" and memory and need > memory:
    raise ConfigError("data.synthetic.image_shape", tuple(syn.image_shape), "one "
                      f"such image as float32 needs {need / 2**30:.1f} GiB, more "
                      f"than this host's {memory / 2**30:.1f} GiB; use (height, "
                      "width, channels) of a real dataset, e.g. (224, 224, 3)")
  validated.mark(data)  # get_source does not check it again


def host_memory_bytes() -> int:
  """Physical memory of this host (0 when unknown)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 0


def _is_shape(value: Any) -> bool:
  return (isinstance(value, (tuple, list)) and len(value) == 3
          and all(is_int(v, 1) for v in value))


class Records(Protocol):
  """Raw examples: `records[i] -> {"image": array or encoded bytes, "label": int}`."""
  def __len__(self) -> int: ...
  def __getitem__(self, i: int) -> dict[str, Any]: ...


class Source:
  """A split: raw records, number of classes, and the train/eval transforms.

  `source[i]` is example i through the eval transforms: {"image": float32 HWC,
  "label": int32, "index": int32}. `load_batch` is what the pipeline calls.
  `num_workers` and `prefetch` are the pipeline's defaults for reading this source.
  """

  def __init__(self, records: Records, num_classes: int,
               train_transforms: transforms.Chain = transforms.Chain(),
               eval_transforms: transforms.Chain = transforms.Chain(),
               num_workers: int = 0, prefetch: int = 2):
    self.records, self.num_classes = records, num_classes
    self.train_transforms, self.eval_transforms = train_transforms, eval_transforms
    self.num_workers, self.prefetch = num_workers, prefetch

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    batch = self.load_batch(np.asarray([i]))
    return {k: v[0] for k, v in batch.items()}

  @functools.cached_property
  def image_shape(self) -> tuple[int, ...]:
    """(H, W, C) of the model's input: example 0 through the train transforms."""
    return self.train_transforms.example(self.records[0]["image"]).shape

  @functools.cached_property
  def eval_image_shape(self) -> tuple[int, ...]:
    """(H, W, C) at evaluation; may differ from `image_shape` (FixRes)."""
    return self.eval_transforms.example(self.records[0]["image"]).shape

  def read(self, indices: np.ndarray) -> list[dict[str, Any]]:
    if hasattr(self.records, "__getitems__"):
      return self.records.__getitems__(indices)
    return [self.records[int(i)] for i in indices]

  def load_batch(self, indices: np.ndarray, *, train: bool = False, seed: int = 0,
                 epochs: np.ndarray | None = None, copies: np.ndarray | None = None,
                 chain: transforms.Chain | None = None) -> Batch:
    """Examples `indices` (of `epochs`, default 0) through one chain, stacked.

    Args:
      indices, epochs: which examples, and the epochs they are drawn in.
      train, seed: the train or eval chain; the augmentation seed.
      copies: repeated augmentation's copy number of each row (default 0).
      chain: instead of the train/eval chain (a stage's resized train chain).

    Returns {"image": float32 (B, H, W, C), "label": int32 (B,), "index": int32
    (B,)} and, if the chain has batch ops, "targets": float32 (B, num_classes).
    """
    if chain is None:
      chain = self.train_transforms if train else self.eval_transforms
    indices = np.asarray(indices)
    epochs = np.zeros_like(indices) if epochs is None else np.asarray(epochs)
    copies = np.zeros_like(indices) if copies is None else np.asarray(copies)
    images, labels = self._images_and_labels(chain, indices, seed, epochs, copies)
    batch = {"image": images, "label": labels, "index": indices.astype(np.int32)}
    images, targets = chain.batch(images, labels, self.num_classes, seed, epochs,
                                  indices, copies)
    batch["image"] = images
    if targets is not None:
      batch["targets"] = targets
    return batch

  def _images_and_labels(self, chain: transforms.Chain, indices: np.ndarray,
                         seed: int, epochs: np.ndarray, copies: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    records = self.read(indices)
    images = chain.examples([r["image"] for r in records], seed, epochs, indices,
                            copies)
    labels = np.asarray([r["label"] for r in records], np.int32)
    return images, labels


class ArrayRecords:
  """Records held in memory: `images` (N, H, W, C) and `labels` (N,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"image": self.images[i], "label": self.labels[i]}


class ArraySource(Source):
  """A split held in memory; batches are gathered vectorized when no op runs."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
               **kwargs: Any):
    super().__init__(ArrayRecords(images, labels), num_classes, **kwargs)
    self.images, self.labels = images, labels

  def _images_and_labels(self, chain, indices, seed, epochs, copies):
    if not chain.example_ops:
      return (self.images[indices].astype(np.float32, copy=False),
              self.labels[indices].astype(np.int32))
    return super()._images_and_labels(chain, indices, seed, epochs, copies)


class SyntheticRecords:
  """Deterministic uint8 noise images with labels `index % num_classes`."""

  def __init__(self, shape: tuple[int, ...], num_classes: int, num_examples: int):
    self.shape, self.num_classes, self.num_examples = shape, num_classes, num_examples

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, i: int) -> dict[str, Any]:
    rng = np.random.Generator(np.random.PCG64(int(i)))
    return {"image": rng.integers(0, 256, size=self.shape, dtype=np.uint8),
            "label": int(i) % self.num_classes}


_ARRAYS: dict[str, ArraySplits] = {}


def register_arrays(name: str, load: ArraySplits) -> None:
  """Registers in-memory dataset `name` for `config.data.source = "arrays"`.

  `load()` returns ({split: (images NHWC, int labels)}, num_classes).
  """
  _ARRAYS[name] = load


def _digits_arrays() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
  """The bundled digits in memory, same split and scaling as the TFDS builder."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from jaxtrain.data.builders import digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  images = (bunch.images / 16.0).astype(np.float32)[..., None]
  labels = bunch.target.astype(np.int32)
  return {split: (images[rows], labels[rows])
          for split, rows in digits.split_rows().items()}, 10


register_arrays("digits", _digits_arrays)


def get_source(data: ml_collections.ConfigDict, split: str) -> Source:
  """The split `split` of the dataset described by `config.data`, checked
  (unless `validate` already passed it unchanged)."""
  if not validated.is_marked(data):
    validate(data)
  train = transforms.parse(data.train_transforms, "data.train_transforms")
  evals = transforms.parse(data.eval_transforms, "data.eval_transforms",
                           allow_batch_ops=False)
  options = dict(train_transforms=train, eval_transforms=evals,
                 num_workers=data.num_workers, prefetch=data.prefetch)
  if data.source == "tfds":
    decode = _decodes(train) or _decodes(evals)
    records, num_classes = tfds_source.open_split(data, split, skip_decoding=decode)
    source = Source(records, num_classes, **options)
  elif data.source == "arrays":
    splits, num_classes = _ARRAYS[data.name]()
    if split not in splits:
      raise ConfigError(tfds_source.split_field(data, split), split,
                        f"in-memory dataset '{data.name}' has no such split",
                        choices=splits)
    source = ArraySource(*splits[split], num_classes, **options)
  elif data.source in FOLDER_SOURCES:
    records = _folder_records(data, split)
    source = Source(records, records.num_classes, **options)
  else:
    syn = data.synthetic
    source = Source(SyntheticRecords(tuple(syn.image_shape), syn.num_classes,
                                     syn.num_examples), syn.num_classes, **options)
  _check_images(source, data, split)
  return source


def _folder_records(data: ml_collections.ConfigDict, split: str) -> Records:
  """An image folder's or a Hugging Face folder's split (imported here: pyarrow
  and epath stay out of the CLI's start-up)."""
  field = tfds_source.split_field(data, split)
  if data.source == "image_folder":
    from jaxtrain.data import image_folder  # pylint: disable=g-import-not-at-top
    return image_folder.ImageFolderRecords(data.data_dir, split, split_field=field)
  from jaxtrain.data import hf_source  # pylint: disable=g-import-not-at-top
  return hf_source.HuggingFaceRecords(data.data_dir, split, data.image_key,
                                      data.label_key, fields={"split": field})


def _decodes(chain: transforms.Chain) -> bool:
  return any(isinstance(op, transforms.EXAMPLE_OPS["decode"])
             for op in chain.example_ops)


def _check_images(source: Source, data: ml_collections.ConfigDict,
                  split: str) -> None:
  """Runs both chains on the first and last example; checks the shapes agree."""
  if not len(source):
    raise ConfigError(tfds_source.split_field(data, split), split, "the split is "
                      "empty")
  shapes = {}
  for field, chain in (("data.train_transforms", source.train_transforms),
                       ("data.eval_transforms", source.eval_transforms)):
    seen = []
    for i in sorted({0, len(source) - 1}):
      image = source.records[i]["image"]
      if isinstance(image, bytes) and not _decodes(chain):
        raise ConfigError(field, chain.spec, "the images are encoded (JPEG/PNG "
                          "bytes): start the transforms with 'decode'")
      if (_decodes(chain) and isinstance(image, np.ndarray)
          and image.dtype not in (np.uint8, object)):
        raise ConfigError(field, chain.spec, f"split '{split}' holds decoded "
                          f"{image.dtype} images already ({data.source} "
                          f"'{data.name}'), but 'decode' makes uint8 pixels (0-255) "
                          "from JPEG/PNG bytes, which later ops would assume; "
                          "remove 'decode'")
      try:
        seen.append(chain.example(image, 0, 0, i).shape)
      except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(field, chain.spec, f"fails on example {i} of split "
                          f"'{split}': {e}") from None
    if len(set(seen)) > 1 or len(seen[0]) != 3:
      raise ConfigError(field, chain.spec, f"gives images of shapes {seen}; the "
                        "model needs one (height, width, channels) shape: add a "
                        "fixed-size op, e.g. resize(224), random_resized_crop(224) "
                        "or center_crop(224)")
    shapes[field] = seen[0]
  train_shape, eval_shape = shapes.values()
  # Height and width may differ (FixRes, Touvron et al. 2019: test at a higher
  # resolution than train); whether the model accepts that is checked by the runner.
  if train_shape[-1] != eval_shape[-1]:
    raise ConfigError("data.eval_transforms", data.eval_transforms, f"gives images "
                      f"of shape {eval_shape}, data.train_transforms {train_shape}; "
                      "train and eval images need the same number of channels")
  if tuple(data.image_shape) and tuple(data.image_shape) != train_shape:
    raise ConfigError("data.image_shape", tuple(data.image_shape), "the model "
                      f"expects this shape but the transforms give {train_shape}; "
                      "change the transforms' sizes or data.image_shape")
