"""The bundled digits written out as an image folder of PNGs and as a Hugging Face
dataset on disk (`digits_files`), read back through `data.source=image_folder` /
`hf`: the TFDS digits' values, and as good a training run.

Folder records come class by class, so the rows are matched by file name (the row
of `load_digits()`).
"""
import os

import numpy as np
import pytest

import digits_files
from jaxtrain import cli
from jaxtrain.data import sources

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                          "digits_cnn.py")


@pytest.mark.parametrize("source", digits_files.SOURCES)
def test_every_test_image_equals_the_tfds_digits_value(folders, source):
  images, labels, rows = digits_files.arrays()
  src = sources.get_source(digits_files.data(source, folders), "test")
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
                  "--config.data.data_dir": digits_files.data_dir(source, folders)})
    accuracy = _train(tmp_path / source, *[f"{k}={v}" for k, v in flags.items()])
    assert abs(accuracy - tfds_accuracy) <= 0.005, (source, accuracy, tfds_accuracy)
