"""Hugging Face datasets on disk, read with pyarrow (no `datasets` package needed).

Two layouts, as the `datasets` library writes them:

- ``DatasetDict.save_to_disk(DATA_DIR)``: ``DATA_DIR/dataset_dict.json`` lists the
  splits; ``DATA_DIR/<split>/state.json`` names the split's Arrow stream files,
  which are memory-mapped (random access at any size, nothing read twice).
- Parquet, as on the Hub: ``DATA_DIR/data/<split>-00000-of-00004.parquet`` (or
  ``DATA_DIR/<split>-*.parquet``, ``DATA_DIR/<split>/*.parquet``). Parquet has no
  random access below a row group, so these are read into memory at start-up and
  refused when that would take over half of the host's memory: then save them
  once with ``datasets.load_dataset("parquet", ...).save_to_disk(...)``.

Both carry the `datasets` features in the Arrow schema's ``huggingface`` metadata.
The image column (``data.image_key``) must be an ``Image`` feature (a struct of
encoded ``bytes`` and a ``path``; an image stored by path only is read from that
path), the label column (``data.label_key``) a ``ClassLabel``, whose names give the
number of classes. Records hand the encoded bytes to the transforms' ``decode``.
Local folders are memory-mapped; on ``gs://`` the split's files are read into memory.
Splits may be sliced and joined with TFDS's syntax (`jaxtrain.data.split_spec`).
"""
from __future__ import annotations

import io
import json
import os
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
from etils import epath

from jaxtrain.data import split_spec
from jaxtrain.errors import ConfigError


def _splits(root: epath.Path) -> list[str]:
  """The splits a `root` holds, in either layout."""
  if (root / "dataset_dict.json").exists():
    return list(json.loads((root / "dataset_dict.json").read_text())["splits"])
  names = {p.name.split("-")[0].split(".")[0] for p in _parquet_candidates(root)}
  names |= {p.name for p in root.iterdir()  # DATA_DIR/<split>/*.parquet
            if p.is_dir() and p.name != "data" and list(p.glob("*.parquet"))}
  return sorted(names)


def _parquet_candidates(root: epath.Path) -> list[epath.Path]:
  return sorted([*root.glob("*.parquet"), *(root / "data").glob("*.parquet")], key=str)


def _parquet_files(root: epath.Path, split: str) -> list[epath.Path]:
  named = [p for p in _parquet_candidates(root)
           if p.name.startswith(f"{split}-") or p.name == f"{split}.parquet"]
  return named or sorted((root / split).glob("*.parquet"), key=str)


def open_table(root: str, split: str, fields: dict[str, str]) -> pa.Table:
  """The Arrow table of `split`, memory-mapped (save_to_disk) or read (Parquet)."""
  path = epath.Path(root)
  if not root or not path.is_dir():
    raise ConfigError(fields["root"], root, "no such directory; give a folder "
                      "written by DatasetDict.save_to_disk or holding Parquet files")
  parts = split_spec.parse(split, fields["split"])
  split_spec.check_names(parts, _splits(path), fields["split"], split, root)
  tables = {name: _read_split(path, name, fields["split"], split)
            for name in {p.name for p in parts}}
  # Slices of a memory-mapped table are views: nothing is copied.
  pieces = [tables[p.name].slice(rows.start, len(rows)) for p in parts
            for rows in [p.rows(tables[p.name].num_rows, fields["split"])]]
  return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]


def _read_split(path: epath.Path, name: str, field: str, spec: str) -> pa.Table:
  """One split's whole table, memory-mapped (save_to_disk) or read (Parquet)."""
  state = path / name / "state.json"
  if state.exists():
    names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    tables = [_arrow_stream(path / name / n) for n in names]
  else:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    files = _parquet_files(path, name)
    _check_fits_in_memory(files, field, spec)
    tables = [pq.read_table(io.BytesIO(f.read_bytes())) for f in files]
  return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _check_fits_in_memory(files: Sequence[epath.Path], field: str, split: str) -> None:
  """Parquet is read whole: refuse files whose data would take over half the RAM."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  from jaxtrain.data import sources  # pylint: disable=g-import-not-at-top
  size = 0
  for f in files:
    with f.open("rb") as stream:
      meta = pq.ParquetFile(stream).metadata
      size += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
  memory = sources.host_memory_bytes()
  if memory and size > memory / 2:
    raise ConfigError(field, split, f"its Parquet files hold {size / 2**30:.1f} GiB, "
                      f"over half of this host's {memory / 2**30:.1f} GiB, and "
                      "Parquet is read whole; save it once with "
                      "datasets' save_to_disk (memory-mapped) and use that folder")


def _arrow_stream(file: epath.Path) -> pa.Table:
  """An Arrow stream file: memory-mapped when local, else read (gs://)."""
  if "://" in os.fspath(file):
    return pa.ipc.open_stream(pa.py_buffer(file.read_bytes())).read_all()
  return pa.ipc.open_stream(pa.memory_map(os.fspath(file))).read_all()


def _features(table: pa.Table) -> dict[str, Any]:
  meta = (table.schema.metadata or {}).get(b"huggingface")
  return json.loads(meta)["info"]["features"] if meta else {}


class HuggingFaceRecords:
  """``records[i] -> {"image": encoded bytes, "label": int}`` of one split.

  Attributes:
    classes: the label's ClassLabel names.
  """

  def __init__(self, root: str, split: str, image_key: str = "image",
               label_key: str = "label", fields: dict[str, str] | None = None):
    fields = {"root": "data.data_dir", "split": "data.train_split",
              "image": "data.image_key", "label": "data.label_key", **(fields or {})}
    table = open_table(root, split, fields)
    features = _features(table)
    for key, field, kind in ((image_key, fields["image"], "Image"),
                             (label_key, fields["label"], "ClassLabel")):
      if features.get(key, {}).get("_type") != kind:
        raise ConfigError(field, key, f"not an {kind} feature of split '{split}'",
                          choices=[k for k, v in features.items()
                                   if v.get("_type") == kind] or list(features))
    self.classes: list[str] = list(features[label_key]["names"])
    self._images = table.column(image_key)
    self._labels = table.column(label_key).to_numpy()
    self._root = epath.Path(root)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def __len__(self) -> int:
    return len(self._labels)

  def _encoded(self, image: dict[str, Any]) -> bytes:
    if image.get("bytes") is not None:
      return image["bytes"]
    return epath.Path(image["path"]).read_bytes()  # stored by path only

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"image": self._encoded(self._images[int(i)].as_py()),
            "label": int(self._labels[int(i)])}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    rows = self._images.take(pa.array(np.asarray(indices, np.int64))).to_pylist()
    return [{"image": self._encoded(r), "label": int(self._labels[int(i)])}
            for r, i in zip(rows, indices)]
