"""Your own images: a folder per split, a folder per class, image files inside.

    DATA_DIR/train/cat/0001.jpg    DATA_DIR/val/cat/0101.png
    DATA_DIR/train/dog/0002.jpg    DATA_DIR/val/dog/0102.png

The layout of torchvision's `ImageFolder` and of `tfds.folder_dataset.ImageFolder`.
As TFDS does, the classes are the class folders of all splits together, sorted by
name (the label of ``cat`` is 0 above), so every split numbers them alike even
when one lacks a class; within a class, files are taken in name order. Hidden
entries (``.ipynb_checkpoints``) are skipped; image files are those with
torchvision's extensions (`EXTENSIONS`). Records hold the encoded bytes: the
transforms' ``decode`` op decodes them (Pillow), so only the images a batch uses
are read. Local paths and ``gs://`` (etils.epath) both work. A split may be sliced
and joined with TFDS's syntax (`jaxtrain.data.split_spec`): ``train[:90%]`` for
training and ``train[90%:]`` for evaluation split one folder in two.
"""
from __future__ import annotations

from typing import Any

from etils import epath

from jaxtrain.data import split_spec
from jaxtrain.errors import ConfigError

# torchvision.datasets.folder.IMG_EXTENSIONS
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
              ".webp")


def _folders(path: epath.Path) -> list[str]:
  return sorted(p.name for p in path.iterdir()
                if p.is_dir() and not p.name.startswith("."))


class ImageFolderRecords:
  """Split `split` of an image folder: ``records[i] -> {"image": bytes, "label"}``.

  Attributes:
    classes: class names; a record's label is an index into it.
    files: (path, label) of every image of the split, in record order.
  """

  def __init__(self, root: str, split: str, root_field: str = "data.data_dir",
               split_field: str = "data.train_split"):
    path = epath.Path(root)
    if not root or not path.is_dir():
      raise ConfigError(root_field, root, "no such directory; give the folder that "
                        "holds one folder per split (e.g. train/, val/), each with "
                        "one folder of images per class")
    parts = split_spec.parse(split, split_field)
    splits = _folders(path)
    split_spec.check_names(parts, splits, split_field, split, root)
    self.classes = sorted({c for s in splits for c in _folders(path / s)})
    files = {name: self._images(path / name) for name in {p.name for p in parts}}
    self.files: list[tuple[epath.Path, int]] = [
        files[p.name][i] for p in parts for i in p.rows(len(files[p.name]), split_field)]
    if not self.files:
      raise ConfigError(split_field, split, f"no images in {root}/<split>/<class>/ "
                        f"for it (files ending in {', '.join(EXTENSIONS)})")

  def _images(self, split_dir: epath.Path) -> list[tuple[epath.Path, int]]:
    """(file, label) of a split folder's images: classes, then files, by name."""
    files = []
    for label, name in enumerate(self.classes):
      folder = split_dir / name
      if folder.is_dir():
        files += [(f, label) for f in sorted(folder.iterdir(), key=str)
                  if f.suffix.lower() in EXTENSIONS and not f.name.startswith(".")]
    return files

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict[str, Any]:
    path, label = self.files[i]
    return {"image": path.read_bytes(), "label": label}
