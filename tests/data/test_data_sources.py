"""Sources: the digits TFDS builder, TFDS/arrays/synthetic sources, their errors."""
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxtrain.data import pipeline, sources
from jaxtrain.data.builders import synthetic_jpeg
from jaxtrain.errors import ConfigError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data_dir holding the digits and 12 JPEGs of 40..80 pixels a side."""
  path = str(tmp_path_factory.mktemp("tfds"))
  synthetic_jpeg.build(path, num_examples=12, min_size=40, max_size=80)
  sources.get_source(_config(path), "train")  # prepares the digits
  return path


def _config(data_dir, **fields):
  c = sources.default_config()
  c.data_dir = data_dir
  for k, v in fields.items():
    c[k] = v
  return c


def _jpeg_config(data_dir, **fields):
  return _config(data_dir, name="synthetic_jpeg", train_split="train",
                 eval_split="train", **fields)


def test_digits_builder_round_trips_every_example_in_split_order(data_dir):
  bunch = load_digits()
  rows = np.arange(len(bunch.target))
  train, test = train_test_split(rows, test_size=0.2, random_state=0,
                                 stratify=bunch.target)
  for split, expected in (("train", train), ("test", test)):
    ds = tfds.data_source("digits", split=split, data_dir=data_dir, download=False)
    examples = [ds[i] for i in range(len(ds))]
    np.testing.assert_array_equal([e["id"] for e in examples], expected)
    images = np.stack([e["image"][..., 0] for e in examples])
    np.testing.assert_array_equal(images * 16, bunch.images[expected])
    np.testing.assert_array_equal([e["label"] for e in examples],
                                  bunch.target[expected])


def test_tfds_and_in_memory_digits_give_identical_train_batches(data_dir):
  tfds_src = sources.get_source(_config(data_dir), "train")
  array_src = sources.get_source(_config(data_dir, source="arrays"), "train")
  assert isinstance(array_src, sources.ArraySource)
  a = pipeline.train_iterator(tfds_src, 32, seed=4)
  b = pipeline.train_iterator(array_src, 32, seed=4)
  for _ in range(3):
    x, y = next(a), next(b)
    for k in ("image", "label", "index"):
      np.testing.assert_array_equal(x[k], y[k])
  assert tfds_src.image_shape == (8, 8, 1) and tfds_src.num_classes == 10


def test_concurrent_first_use_prepares_the_digits_once(tmp_path):
  results, errors = [], []

  def use():
    try:
      results.append(len(sources.get_source(_config(str(tmp_path)), "test")))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=use) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors and results == [360, 360]
  assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1.0.0"]


def test_split_slices_partition_the_split(data_dir):
  c = _config(data_dir, train_split="train[:90%]", eval_split="train[90%:]")
  head, tail = sources.get_source(c, c.train_split), sources.get_source(
      c, c.eval_split)
  whole = sources.get_source(_config(data_dir), "train")
  assert len(head) + len(tail) == len(whole) == 1437
  np.testing.assert_array_equal(
      np.concatenate([head.load_batch(np.arange(len(head)))["image"],
                      tail.load_batch(np.arange(len(tail)))["image"]]),
      whole.load_batch(np.arange(len(whole)))["image"])


def test_jpeg_dataset_is_decoded_and_cropped_by_the_transforms(data_dir):
  c = _jpeg_config(data_dir, train_transforms="decode|random_resized_crop(32)|flip|"
                   "normalize|cutmix", eval_transforms="decode|center_crop(32)|normalize")
  source = sources.get_source(c, "train")
  assert (len(source), source.num_classes, source.image_shape) == (
      12, 1000, (32, 32, 3))
  batch = next(pipeline.train_iterator(source, 4, seed=0))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["targets"].shape == (4, 1000)
  np.testing.assert_array_equal(batch["label"], batch["index"])


def test_synthetic_source_has_the_configured_shape_and_size():
  c = _config("", source="synthetic")
  c.synthetic.image_shape, c.synthetic.num_classes = (20, 24, 3), 7
  c.synthetic.num_examples = 50
  source = sources.get_source(c, "train")
  assert (len(source), source.num_classes, source.image_shape) == (50, 7, (20, 24, 3))
  np.testing.assert_array_equal(source[9]["image"], source[9]["image"])
  assert source[9]["label"] == 2


def _error(config, split):
  with pytest.raises(ConfigError) as e:
    sources.get_source(config, split)
  return e.value


def test_unknown_dataset_lists_the_datasets_in_the_data_dir(data_dir):
  e = _error(_config(data_dir, name="imagenet2012"), "train")
  assert e.field == "data.name" and data_dir in str(e)
  assert "digits" in str(e) and "synthetic_jpeg" in str(e)


def test_unknown_split_lists_the_datasets_splits(data_dir):
  e = _error(_config(data_dir, eval_split="validation"), "validation")
  assert e.field == "data.eval_split" and "test, train" in str(e)
  e = _error(_config(data_dir, train_split="train[:abc]"), "train[:abc]")
  assert e.field == "data.train_split"


def test_missing_data_dir_is_named(tmp_path):
  e = _error(_config(str(tmp_path / "absent")), "train")
  assert e.field == "data.data_dir" and "no such directory" in str(e)


def test_image_shape_other_than_the_models_is_reported(data_dir):
  e = _error(_config(data_dir, image_shape=(28, 28, 1)), "train")
  assert e.field == "data.image_shape" and "(8, 8, 1)" in str(e)


def test_transform_with_bad_arguments_is_reported_before_reading(data_dir):
  e = _error(_config(data_dir, train_transforms="random_crop(size=-3)"), "train")
  assert e.field == "data.train_transforms" and "random_crop" in str(e)


def test_images_of_varying_size_without_a_fixed_size_op_are_reported(data_dir):
  e = _error(_jpeg_config(data_dir, train_transforms="decode",
                          eval_transforms="decode"), "train")
  assert e.field == "data.train_transforms" and "random_resized_crop(224)" in str(e)


def test_encoded_images_without_decode_are_reported(data_dir):
  e = _error(_jpeg_config(data_dir, train_transforms="decode|resize(16)",
                          eval_transforms="resize(16)"), "train")
  assert e.field == "data.eval_transforms" and "start the transforms with 'decode'" \
      in str(e)


def test_train_and_eval_channels_must_agree(data_dir):
  e = _error(_jpeg_config(data_dir, train_transforms="decode|random_resized_crop(32)",
                          eval_transforms="decode(channels=1)|center_crop(48)"),
             "train")
  assert e.field == "data.eval_transforms" and "(48, 48, 1)" in str(e)


def test_eval_may_use_another_resolution_than_train_fixres(data_dir):
  # FixRes (Touvron et al. 2019): train at 32, test at 48 with crop ratio 0.95.
  source = sources.get_source(_jpeg_config(
      data_dir, train_transforms="decode|random_resized_crop(32)",
      eval_transforms="decode|center_crop(48, crop_ratio=0.95)"), "train")
  assert source.image_shape == (32, 32, 3)
  assert source.eval_image_shape == (48, 48, 3)
  assert next(pipeline.eval_batches(source, 4))["image"].shape == (4, 48, 48, 3)


def test_unknown_feature_keys_list_the_features(data_dir):
  e = _error(_config(data_dir, image_key="pixels"), "train")
  assert e.field == "data.image_key" and "id, image, label" in str(e)
  e = _error(_config(data_dir, label_key="id"), "train")
  assert e.field == "data.label_key" and "ClassLabel" in str(e)


def test_unknown_source_and_array_dataset_are_reported():
  e = _error(_config("", source="hdf5"), "train")
  assert e.field == "data.source" and "synthetic" in str(e)
  e = _error(_config("", source="arrays", name="mnist"), "train")
  assert e.field == "data.name" and "digits" in str(e)
  e = _error(_config("", source="arrays", eval_split="val"), "val")
  assert e.field == "data.eval_split" and "test, train" in str(e)
