"""Image folders: splits, classes and files as torchvision/TFDS lay them out."""
import numpy as np
import pytest
from PIL import Image

from jaxtrain.data import image_folder, sources, transforms
from jaxtrain.errors import ConfigError


def _image(value, shape=(6, 5, 3)):
  return np.full(shape, value, np.uint8) + np.arange(shape[1], dtype=np.uint8)[:, None]


@pytest.fixture
def folder(tmp_path):
  """train: cat 2, dog 1, eel 1; val: cat 1, emu 1 (a class train lacks)."""
  layout = {"train": {"cat": 2, "dog": 1, "eel": 1}, "val": {"cat": 1, "emu": 1}}
  pixels = {}
  for split, classes in layout.items():
    for name, n in classes.items():
      (tmp_path / split / name).mkdir(parents=True)
      for i in range(n):
        value = 10 * len(pixels)
        pixels[(split, name, i)] = _image(value)
        Image.fromarray(pixels[(split, name, i)]).save(
            tmp_path / split / name / f"{i:03d}.png")
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
  (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
  return tmp_path, pixels


def test_labels_come_from_every_splits_classes_in_name_order(folder):
  root, pixels = folder
  train = image_folder.ImageFolderRecords(str(root), "train")
  val = image_folder.ImageFolderRecords(str(root), "val", split_field="data.eval_split")
  assert train.classes == val.classes == ["cat", "dog", "eel", "emu"]
  assert [r["label"] for r in (train[i] for i in range(len(train)))] == [0, 0, 1, 2]
  assert [val[i]["label"] for i in range(len(val))] == [0, 3]
  decode = transforms.parse("decode", "data.train_transforms")
  want = [pixels[("train", "cat", 0)], pixels[("train", "cat", 1)],
          pixels[("train", "dog", 0)], pixels[("train", "eel", 0)]]
  for i, image in enumerate(want):
    np.testing.assert_array_equal(decode.example(train[i]["image"]), image)


def test_one_folder_sliced_into_train_and_eval_parts(folder):
  root, _ = folder
  head = image_folder.ImageFolderRecords(str(root), "train[:75%]")
  tail = image_folder.ImageFolderRecords(str(root), "train[75%:]+val[-1:]")
  assert [f.name for f, _ in head.files] == ["000.png", "001.png", "000.png"]
  assert [label for _, label in head.files] == [0, 0, 1]
  assert [(f.parent.parent.name, label) for f, label in tail.files] == [
      ("train", 2), ("val", 3)]


def test_a_source_over_a_folder_gives_decoded_batches(folder):
  root, pixels = folder
  records = image_folder.ImageFolderRecords(str(root), "val")
  chain = transforms.parse("decode|normalize(mean=0, std=255)", "data.eval_transforms",
                           allow_batch_ops=False)
  source = sources.Source(records, records.num_classes, eval_transforms=chain)
  batch = source.load_batch(np.array([1, 0]))
  np.testing.assert_allclose(batch["image"], np.stack(
      [pixels[("val", "emu", 0)], pixels[("val", "cat", 0)]]) / 255.0, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], [3, 0])


@pytest.mark.parametrize("root,split,field,words", [
    ("missing", "train", "data.data_dir", "no such directory"),
    ("", "test", "data.train_split", "no split 'test' in"),
    ("", "empty", "data.train_split", "no images in"),
])
def test_bad_folders_name_the_field(folder, root, split, field, words):
  base, _ = folder
  (base / "empty" / "cat").mkdir(parents=True)
  path = str(base / root) if root else str(base)
  with pytest.raises(ConfigError) as e:
    image_folder.ImageFolderRecords(path, split)
  assert str(e.value).startswith(f"config.{field}=")
  assert words in str(e.value)
  if words == "no split 'test' in":
    assert "valid choices: empty, train, val" in str(e.value)
