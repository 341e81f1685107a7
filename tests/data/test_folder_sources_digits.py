"""The bundled digits written out as an image folder of PNGs and as a Hugging Face
dataset on disk, read back through `data.source=image_folder` / `hf`.

Pixels are scikit-learn's counts k = 0..16 stored as uint8 15k (PNG is lossless),
so ``decode(channels=1)|normalize(mean=0, std=240)`` gives k/16 exactly: the values
the TFDS digits hold. Folder records come class by class, so the rows are matched
by file name (the row of `load_digits()`).
"""
import os

import numpy as np
import pytest
from PIL import Image

from jaxtrain import cli, config as config_lib
from jaxtrain.data import sources
from jaxtrain.data.builders import digits

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                          "digits_cnn.py")
DECODE = "decode(channels=1)|normalize(mean=0, std=240)"  # as in README.md


def _digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  return bunch.images.astype(np.uint8), bunch.target, digits.split_rows()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  images, labels, rows = _digits()
  root = tmp_path_factory.mktemp("digits")
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


def _data(source, root):
  c = config_lib.base_config().data
  c.source, c.data_dir = source, str(root / ("folder" if source == "image_folder"
                                             else "hf"))
  c.train_transforms = c.eval_transforms = DECODE
  return c


@pytest.mark.parametrize("source", ["image_folder", "hf"])
def test_every_test_image_equals_the_tfds_digits_value(folders, source):
  images, labels, rows = _digits()
  src = sources.get_source(_data(source, folders), "test")
  assert len(src) == len(rows["test"]) and src.num_classes == 10
  batch = src.load_batch(np.arange(len(src)))
  if source == "image_folder":
    order = [int(f.stem) for f, _ in src.records.files]
  else:
    order = [int(r) for r in rows["test"]]  # save_to_disk keeps the split's order
  assert sorted(order) == sorted(rows["test"].tolist())
  np.testing.assert_array_equal(batch["image"][..., 0],
                                images[order].astype(np.float32) / 16)
  np.testing.assert_array_equal(batch["label"], labels[order])


def _train(workdir, *overrides):
  assert cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
                   *overrides]) == 0
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1]


def _readme_overrides():
  """The `--config.*` flags of the README's "Your own data" command."""
  import re  # pylint: disable=g-import-not-at-top
  readme = os.path.join(os.path.dirname(EXPERIMENT), "..", "README.md")
  with open(readme, encoding="utf-8") as f:
    text = f.read().split("## Your own data", 1)[1]
  block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
  flags = re.findall(r'(--config\.[\w.]+)=("[^"]*"|\S+)', block)
  return {k: v.strip('"') for k, v in flags}


@pytest.mark.slow
def test_digits_from_folders_train_as_well_as_from_tfds(folders, tmp_path):
  flags = _readme_overrides()
  assert flags["--config.data.source"] == "image_folder"
  tfds_accuracy = _train(tmp_path / "tfds")
  for source in ("image_folder", "hf"):
    flags.update({"--config.data.source": source,
                  "--config.data.data_dir": _data(source, folders).data_dir})
    accuracy = _train(tmp_path / source, *[f"{k}={v}" for k, v in flags.items()])
    assert abs(accuracy - tfds_accuracy) <= 0.005, (source, accuracy, tfds_accuracy)
