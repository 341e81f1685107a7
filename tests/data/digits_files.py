"""The bundled digits written out as an image folder of PNGs and as a Hugging Face
dataset on disk (`write`), and the `config.data` that reads them back (`data`).

Pixels are scikit-learn's counts k = 0..16 stored as uint8 15k (PNG is lossless),
so `DECODE` gives k/16 exactly: the values the TFDS digits hold.
"""
import numpy as np
import pytest
from PIL import Image

from jaxtrain import config as config_lib
from jaxtrain.data.builders import digits

DECODE = "decode(channels=1)|normalize(mean=0, std=240)"  # as in README.md
SOURCES = ("image_folder", "hf")


def arrays():
  """(images uint8 (n, 8, 8), labels, {split: rows}) of the bundled digits."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  return bunch.images.astype(np.uint8), bunch.target, digits.split_rows()


def write(root):
  """ROOT/folder/<split>/<class>/<row>.png and ROOT/hf (save_to_disk, with a
  `row` column); skips without the `datasets` package."""
  images, labels, rows = arrays()
  for split, idx in rows.items():
    for r in idx:
      d = root / "folder" / split / str(labels[r])
      d.mkdir(parents=True, exist_ok=True)
      Image.fromarray(images[r] * 15).save(d / f"{r:04d}.png")
  datasets = pytest.importorskip("datasets")
  features = datasets.Features({
      "image": datasets.Image(), "row": datasets.Value("int32"),
      "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
  datasets.DatasetDict({split: datasets.Dataset.from_dict(
      {"image": [Image.fromarray(images[r] * 15) for r in idx],
       "label": [int(labels[r]) for r in idx], "row": [int(r) for r in idx]},
      features=features) for split, idx in rows.items()}).save_to_disk(
          str(root / "hf"))
  return root


def data_dir(source, root):
  return str(root / ("folder" if source == "image_folder" else "hf"))


def data(source, root):
  """`config.data` reading `source` ("image_folder" or "hf") under `root`."""
  c = config_lib.base_config().data
  c.source, c.data_dir = source, data_dir(source, root)
  c.train_transforms = c.eval_transforms = DECODE
  return c
