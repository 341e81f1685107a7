"""Hugging Face datasets on disk, written by the `datasets` library itself."""
import numpy as np
import pytest

from jaxtrain.data import hf_source, sources, transforms
from jaxtrain.errors import ConfigError

datasets = pytest.importorskip("datasets")
NAMES = ["cat", "dog", "eel"]


def _pixels(i):
  return (np.arange(4 * 5 * 3).reshape(4, 5, 3) + 17 * i).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset_dict():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  features = datasets.Features({"image": datasets.Image(), "label":
                                datasets.ClassLabel(names=NAMES), "n": datasets.Value("int64")})
  labels = [2, 0, 1, 1, 0, 2, 2]
  train = datasets.Dataset.from_dict(
      {"image": [Image.fromarray(_pixels(i)) for i in range(len(labels))],
       "label": labels, "n": list(range(len(labels)))}, features=features)
  return datasets.DatasetDict({"train": train, "test": train.select([5, 1])}), labels


@pytest.fixture(params=["save_to_disk", "parquet"])
def root(request, dataset_dict, tmp_path):
  dd, _ = dataset_dict
  if request.param == "save_to_disk":
    dd.save_to_disk(str(tmp_path))
  else:  # the Hub's layout
    (tmp_path / "data").mkdir()
    for split, ds in dd.items():
      ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"))
  return str(tmp_path)


def test_records_hold_the_images_and_class_labels_datasets_wrote(root, dataset_dict):
  _, labels = dataset_dict
  train = hf_source.HuggingFaceRecords(root, "train")
  test = hf_source.HuggingFaceRecords(root, "test", fields={"split": "data.eval_split"})
  assert train.classes == NAMES and train.num_classes == 3
  assert len(train) == len(labels) and len(test) == 2
  decode = transforms.parse("decode", "data.train_transforms")
  for i, label in enumerate(labels):
    record = train[i]
    assert record["label"] == label
    np.testing.assert_array_equal(decode.example(record["image"]), _pixels(i))
  assert [r["label"] for r in test.__getitems__([0, 1])] == [labels[5], labels[1]]
  np.testing.assert_array_equal(decode.example(test[1]["image"]), _pixels(1))


def test_a_source_reads_batches_through_getitems(root, dataset_dict):
  _, labels = dataset_dict
  records = hf_source.HuggingFaceRecords(root, "train")
  chain = transforms.parse("decode", "data.eval_transforms", allow_batch_ops=False)
  batch = sources.Source(records, records.num_classes,
                         eval_transforms=chain).load_batch(np.array([6, 3, 0]))
  np.testing.assert_array_equal(batch["image"], np.stack(
      [_pixels(6), _pixels(3), _pixels(0)]).astype(np.float32))
  np.testing.assert_array_equal(batch["label"], [labels[6], labels[3], labels[0]])


@pytest.mark.parametrize("kwargs,field,words", [
    (dict(split="validation"), "data.train_split", "valid choices: test, train"),
    (dict(split="train", image_key="n"), "data.image_key", "not an Image feature"),
    (dict(split="train", label_key="n"), "data.label_key", "not an ClassLabel"),
])
def test_bad_splits_and_columns_name_the_field(root, kwargs, field, words):
  with pytest.raises(ConfigError) as e:
    hf_source.HuggingFaceRecords(root, **kwargs)
  assert str(e.value).startswith(f"config.{field}=") and words in str(e.value)


def test_a_missing_folder_names_data_dir(tmp_path):
  with pytest.raises(ConfigError, match=r"^config.data.data_dir=.*no such directory"):
    hf_source.HuggingFaceRecords(str(tmp_path / "absent"), "train")


def test_parquet_larger_than_half_the_memory_is_refused(dataset_dict, tmp_path,
                                                        monkeypatch):
  dd, _ = dataset_dict
  dd["train"].to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
  monkeypatch.setattr(sources, "host_memory_bytes", lambda: 200)
  with pytest.raises(ConfigError, match="save_to_disk"):
    hf_source.HuggingFaceRecords(str(tmp_path), "train")
