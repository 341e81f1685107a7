"""Host fast paths: a chain run on a whole batch, and the cached TFDS records.

Both must give exactly what the per-example path gives; the expected crops are
recomputed here from the zero-padded image and fresh `example_rng` draws.
"""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtrain.data import sources, tfds_source, transforms


def _images(n, side=6, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (side, side, channels), dtype=np.uint8)
          for _ in range(n)]


def test_batched_crop_flip_normalize_equal_the_papers_ops_per_example():
  images = _images(9)
  epochs, indices, copies = [0] * 4 + [1] * 5, list(range(9)), [0] * 8 + [2]
  chain = transforms.parse("random_crop(6, padding=2)|flip|normalize(100, 50)", "f")
  out = chain.examples(images, 7, epochs, indices, copies)
  assert out.dtype == np.float32 and out.shape == (9, 6, 6, 3)
  for k, image in enumerate(images):
    rng = transforms.example_rng(7, epochs[k], indices[k], copy=copies[k])
    padded = np.zeros((10, 10, 3), np.float64)
    padded[2:8, 2:8] = image
    top, left = rng.integers(0, 5), rng.integers(0, 5)
    crop = padded[top:top + 6, left:left + 6]
    if rng.random() < 0.5:
      crop = crop[:, ::-1]
    np.testing.assert_allclose(out[k], (crop - 100) / 50, rtol=1e-6)
    np.testing.assert_array_equal(
        out[k], chain.example(image, 7, epochs[k], indices[k], copies[k]))


def test_chain_without_a_batch_op_or_with_ragged_images_runs_per_example():
  ragged = _images(2, side=6) + _images(1, side=9)
  chain = transforms.parse("random_crop(4, padding=0)", "f")
  out = chain.examples(ragged, 3, [0, 0, 0], [5, 6, 7], [0, 0, 0])
  for k, image in enumerate(ragged):
    np.testing.assert_array_equal(out[k], chain.example(image, 3, 0, 5 + k))
  resize = transforms.parse("resize(4)|flip", "f")  # resize has no batch method
  images = _images(3)
  out = resize.examples(images, 1, [0] * 3, [0, 1, 2], [0] * 3)
  for k, image in enumerate(images):
    np.testing.assert_array_equal(out[k], resize.example(image, 1, 0, k))


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  c = sources.default_config()
  c.data_dir = path
  sources.get_source(c, "train")  # prepares the digits
  return path


def test_small_tfds_split_is_cached_read_only_with_the_stored_values(digits_dir):
  ds = tfds.data_source("digits", split="train", data_dir=digits_dir,
                        download=False)
  records = tfds_source.Records(ds, "image", "label")
  order = [5, 3, 5, 1400]
  first, again = records.__getitems__(order), records.__getitems__(order)
  assert records._cache is not None and sorted(records._cache) == [3, 5, 1400]
  for i, a, b in zip(order, first, again):
    np.testing.assert_array_equal(a["image"], ds[i]["image"])
    np.testing.assert_array_equal(b["image"], ds[i]["image"])
    assert a["label"] == b["label"] == ds[i]["label"]
  with pytest.raises(ValueError):
    again[0]["image"][0, 0, 0] = 1.0
  uncached = tfds_source.Records(ds, "image", "label", cache_bytes=1024)
  uncached.__getitems__(order)
  assert uncached._cache is None
