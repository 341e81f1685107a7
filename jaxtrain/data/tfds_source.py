"""TFDS datasets read through `tfds.data_source` (ArrayRecord, no TensorFlow).

Any dataset prepared in a data_dir (`tfds build --file_format=array_record`, or a
builder's `download_and_prepare`) is read by name, with TFDS split syntax including
slices and unions (`train[:90%]`, `train[90%:]+validation`). The bundled local
builders (`jaxtrain.data.builders.LOCAL`, e.g. `digits`) are prepared on first use.
Nothing is downloaded: a run on a pod reads a data_dir prepared once (e.g. on GCS).
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from jaxtrain.data import builders
from jaxtrain.errors import ConfigError


def default_data_dir() -> str:
  """$TFDS_DATA_DIR, else ~/.cache/jaxtrain/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxtrain", "tensorflow_datasets")


def resolve_data_dir(data_dir: str) -> str:
  """The configured data_dir (which must exist), or the default one."""
  if not data_dir:
    return default_data_dir()
  from etils import epath  # pylint: disable=g-import-not-at-top
  if not epath.Path(data_dir).is_dir():
    raise ConfigError("data.data_dir", data_dir, "no such directory; prepare the "
                      "dataset there, or leave it empty for the default "
                      f"{default_data_dir()}")
  return data_dir


def available_datasets(data_dir: str) -> list[str]:
  """Datasets prepared in `data_dir` (name[/config]), plus the local builders."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  found = set(builders.LOCAL)
  root = epath.Path(data_dir)
  if root.is_dir():
    for info in list(root.glob("*/*/dataset_info.json")) + list(
        root.glob("*/*/*/dataset_info.json")):
      parts = info.relative_to(root).parts[:-2]  # drop version and file name
      found.add("/".join(parts))
  return sorted(found)


def split_field(data: ml_collections.ConfigDict, split: str) -> str:
  """The config field a split name came from (train_split if neither)."""
  for field in ("train_split", "eval_split"):
    if data.get(field) == split:
      return f"data.{field}"
  return "data.train_split"


class Records:
  """A TFDS data source seen as records {"image", "label"} (batched reads).

  A split whose records total at most `cache_bytes` (estimated from its first
  record) is kept in memory as it is read: parsing a record costs ~100 us whatever
  its size, which for the 8x8 digits was most of a batch's host time. Cached
  images are read-only, so a transform cannot change a later epoch's input.
  """

  def __init__(self, source: Any, image_key: str, label_key: str,
               cache_bytes: int = 64 << 20):
    self._source, self._image_key, self._label_key = source, image_key, label_key
    self._cache_bytes = cache_bytes
    self._cache: dict[int, dict[str, Any]] | None = None

  def __len__(self) -> int:
    return len(self._source)

  def _select(self, example: dict[str, Any]) -> dict[str, Any]:
    return {"image": example[self._image_key], "label": example[self._label_key]}

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self.__getitems__([i])[0]

  def __getitems__(self, indices: Any) -> list[dict[str, Any]]:
    indices = [int(i) for i in indices]
    if self._cache is None:
      return self._read(indices)
    missing = [i for i in dict.fromkeys(indices) if i not in self._cache]
    if missing:
      for i, record in zip(missing, self._read(missing)):
        self._cache[i] = _frozen(record)
    return [self._cache[i] for i in indices]

  def _read(self, indices: list[int]) -> list[dict[str, Any]]:
    records = [self._select(e) for e in self._source.__getitems__(indices)]
    if self._cache is None and records and self._small(records[0]):
      self._cache = {}
    return records

  def _small(self, record: dict[str, Any]) -> bool:
    image = record["image"]
    size = image.nbytes if hasattr(image, "nbytes") else len(image)
    return len(self) * (size + 64) <= self._cache_bytes


def _frozen(record: dict[str, Any]) -> dict[str, Any]:
  image = record["image"]
  if isinstance(image, np.ndarray):
    image = image.view()
    image.flags.writeable = False
  return {"image": image, "label": record["label"]}


def open_split(data: ml_collections.ConfigDict, split: str,
               skip_decoding: bool) -> tuple[Records, int]:
  """Opens `split` of dataset `data.name`; returns (records, num_classes).

  Args:
    data: the `config.data` section.
    split: a TFDS split spec.
    skip_decoding: hand encoded images to the transforms (their `decode` op) as
      bytes instead of having TFDS decode them.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = resolve_data_dir(data.data_dir)
  base_name = data.name.split(":")[0].split("/")[0]
  if base_name in builders.LOCAL:
    builders.prepare(base_name, data_dir)
  builder = _builder(tfds, data.name, data_dir)
  field = split_field(data, split)
  known = list(builder.info.splits.keys())
  for part in split.split("+"):
    if part.split("[")[0].strip() not in known:
      raise ConfigError(field, split, f"dataset '{data.name}' has no such split",
                        choices=known)
  features = builder.info.features
  for key_field, key in (("data.image_key", data.image_key),
                         ("data.label_key", data.label_key)):
    if key not in features:
      raise ConfigError(key_field, key, f"dataset '{data.name}' has no such feature",
                        choices=list(features.keys()))
  num_classes = getattr(features[data.label_key], "num_classes", None)
  if not num_classes:
    raise ConfigError("data.label_key", data.label_key, "not a ClassLabel feature "
                      "(classification needs a number of classes)",
                      choices=list(features.keys()))
  decoders = None
  if skip_decoding and isinstance(features[data.image_key], tfds.features.Image):
    decoders = {data.image_key: tfds.decode.SkipDecoding()}
  try:
    source = tfds.data_source(data.name, split=split, data_dir=data_dir,
                              download=False, decoders=decoders)
  except (ValueError, KeyError, AssertionError) as e:
    raise ConfigError(field, split, f"not a valid split of '{data.name}': {e}",
                      choices=known) from None
  return Records(source, data.image_key, data.label_key), int(num_classes)


def _builder(tfds: Any, name: str, data_dir: str) -> Any:
  """The prepared builder of `name` in `data_dir`, or a ConfigError listing those."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builders.is_prepared(builder)
  except (tfds.core.registered.DatasetNotFoundError, ValueError, OSError):
    prepared = False
  if not prepared:
    raise ConfigError("data.name", name, f"no prepared dataset of that name in "
                      f"{data_dir} (prepare it with `tfds build "
                      "--file_format=array_record`, or set data.data_dir)",
                      choices=available_datasets(data_dir))
  if builder.info.file_format is not None and \
      builder.info.file_format.value != "array_record":
    raise ConfigError("data.name", name, "prepared as "
                      f"{builder.info.file_format.value}; random access needs "
                      "ArrayRecord: rebuild with --file_format=array_record")
  return builder

