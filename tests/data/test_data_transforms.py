"""Transforms: crop geometry, pixel ops, mixing targets, RandAugment, syntax errors.

Reference values come from the papers' definitions, computed here with numpy.
"""
import io

import numpy as np
import pytest
from PIL import Image

from jaxtrain import config as config_lib
from jaxtrain.data import image_ops, randaugment, transforms
from jaxtrain.errors import ConfigError


def _rgb(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.mark.parametrize("height,width", [(300, 400), (400, 300), (224, 224)])
def test_inception_crop_boxes_lie_inside_and_within_area_and_aspect_bounds(
    height, width):
  rng = np.random.default_rng(0)
  fractions = []
  for _ in range(2000):
    top, left, h, w = image_ops.inception_crop_box(height, width, rng)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    # h, w are real h', w' rounded: |h - h'|, |w - w'| <= 0.5, with
    # h'w' in [0.08, 1] x area and w'/h' in [3/4, 4/3] (Szegedy et al. 2015).
    assert (w + .5) * (h + .5) >= 0.08 * height * width
    assert (w - .5) * (h - .5) <= height * width
    assert (w + .5) / (h - .5) >= 3 / 4 and (w - .5) / (h + .5) <= 4 / 3
    fractions.append(h * w / (height * width))
  assert min(fractions) < 0.12 and max(fractions) > 0.9  # the whole range is used


def test_inception_crop_falls_back_to_a_central_crop_with_clamped_aspect():
  # A 10 x 200 strip: every box of >= 8% area with aspect <= 4/3 is taller than 10.
  box = image_ops.inception_crop_box(10, 200, np.random.default_rng(0))
  assert box == (0, (200 - 13) // 2, 10, 13)  # width = round(10 * 4/3)


def test_random_resized_crop_of_the_full_square_is_the_image():
  image = _rgb(64, 64)
  op = image_ops.RandomResizedCrop(64, area=(1.0, 1.0), aspect=(1.0, 1.0))
  np.testing.assert_array_equal(op(image, np.random.default_rng(0)), image)
  out = image_ops.RandomResizedCrop(32)(_rgb(50, 70), np.random.default_rng(1))
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_center_crop_takes_the_central_0875_square():
  image = _rgb(256, 320)
  out = image_ops.CenterCrop(224)(image, None)
  # side int(0.875 * 256) = 224, offsets ((256 - 224 + 1) // 2, (320 - 224 + 1) // 2)
  np.testing.assert_array_equal(out, image[16:240, 48:272])


def test_random_crop_is_a_window_of_the_zero_padded_image():
  image = np.arange(1, 32 * 32 + 1, dtype=np.float32).reshape(32, 32, 1)
  padded = np.zeros((40, 40, 1), np.float32)
  padded[4:36, 4:36] = image
  offsets = set()
  for seed in range(300):
    out = image_ops.RandomCrop(32, padding=4)(image, np.random.default_rng(seed))
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(out, padded[dy:dy + 32, dx:dx + 32])]
    assert len(matches) == 1
    offsets.add(matches[0])
  assert (0, 0) in offsets and (8, 8) in offsets and len(offsets) > 60


def test_flip_mirrors_columns_with_probability_p():
  image = _rgb(4, 5)
  np.testing.assert_array_equal(image_ops.Flip(1.0)(image, np.random.default_rng(0)),
                                image[:, ::-1])
  flips = sum(not np.array_equal(image_ops.Flip()(image, np.random.default_rng(s)),
                                 image) for s in range(1000))
  assert 430 < flips < 570  # Binomial(1000, 0.5): +-4.4 sigma


def test_normalize_subtracts_mean_and_divides_by_std_per_channel():
  image = _rgb(3, 4)
  out = image_ops.Normalize()(image, None)
  expected = (image - np.array([123.675, 116.28, 103.53])) / np.array(
      [58.395, 57.12, 57.375])
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _encode(array, fmt):
  out = io.BytesIO()
  Image.fromarray(array).save(out, format=fmt)
  return out.getvalue()


def test_decode_png_is_lossless_and_converts_channels():
  rgb, gray = _rgb(9, 7), _rgb(9, 7)[..., 0]
  np.testing.assert_array_equal(image_ops.Decode()(_encode(rgb, "PNG"), None), rgb)
  out = image_ops.Decode(channels=0)(_encode(gray, "PNG"), None)
  np.testing.assert_array_equal(out, gray[..., None])
  out3 = image_ops.Decode(channels=3)(_encode(gray, "PNG"), None)
  np.testing.assert_array_equal(out3, np.repeat(gray[..., None], 3, axis=-1))


def test_decode_jpeg_gives_the_image_up_to_compression():
  smooth = np.asarray(Image.fromarray(_rgb(4, 4)).resize((64, 48),
                                                         Image.Resampling.BICUBIC))
  out = image_ops.Decode()(_encode(smooth, "JPEG"), None)
  assert out.shape == (48, 64, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(int) - smooth).mean() < 4


def _pairs_batch(n_pairs):
  """Pairs (zeros, ones) labelled (0, 1): pixel means measure the mix."""
  images = np.zeros((2 * n_pairs, 8, 10, 1), np.float32)
  images[1::2] = 1.0
  labels = np.tile([0, 1], n_pairs).astype(np.int32)
  return images, labels


@pytest.mark.parametrize("spec", ["mixup(0.4)", "cutmix(1.0)", "mixup|cutmix"])
def test_mixed_targets_sum_to_one_and_match_the_pixel_proportions(spec):
  images, labels = _pairs_batch(32)
  chain = transforms.parse(spec, "data.train_transforms")
  idx = np.arange(64)
  out, targets = chain.batch(images, labels, 3, seed=0, epochs=idx * 0, indices=idx)
  np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
  share_of_ones = out.reshape(64, -1).mean(-1)
  np.testing.assert_allclose(targets[:, 1], share_of_ones, atol=1e-5)
  np.testing.assert_allclose(targets[:, 0], 1 - share_of_ones, atol=1e-5)
  assert targets[:, 2].max() == 0
  assert 0.05 < share_of_ones[0::2].mean() < 0.95  # something was mixed
  pure = np.all(np.isin(out, [0.0, 1.0]).reshape(64, -1), axis=-1)
  if spec == "mixup|cutmix":  # each pair uses one of the two
    assert 0 < pure.sum() < 64


def test_label_smoothing_is_the_losss_not_a_transform():
  with pytest.raises(ConfigError, match=r"^config.data.train_transforms=.*'label_"
                     r"smoothing' is no longer a transform: set loss.label_smoothing"):
    transforms.parse("flip|label_smoothing(0.1)", "data.train_transforms")


def test_the_loss_smoothing_mixed_targets_equals_mixing_smoothed_targets():
  # Why one place is enough: smoothing is affine with weights summing to one, so
  # smoothing mixup's targets (the loss) equals mixing smoothed one-hots (timm's
  # mixup_target, which smooths first).
  from jaxtrain import losses  # pylint: disable=g-import-not-at-top
  chain = transforms.parse("mixup(0.4)", "data.train_transforms")
  labels = np.array([2, 0, 1, 3], np.int32)
  eye, eps = np.eye(4), 0.1
  images, targets = chain.batch(np.zeros((4, 1, 1, 1), np.float32), labels, 4, 0,
                                np.zeros(4, int), np.arange(4))
  share = targets[np.arange(4), labels]  # lam of each row's own label
  partner = labels[[1, 0, 3, 2]]
  smoothed = (1 - eps) * eye + eps / 4
  timm = share[:, None] * smoothed[labels] + (1 - share[:, None]) * smoothed[partner]
  logits = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  got = losses.SoftmaxCrossEntropy(eps)(logits, {"label": labels, "targets": targets,
                                                 "image": images})
  np.testing.assert_allclose(got, -(timm * log_p).sum(-1), rtol=1e-5)


def test_augmentation_is_a_pure_function_of_seed_epoch_and_index():
  chain = transforms.parse("random_resized_crop(16)|flip|randaugment(2, 9)",
                           "data.train_transforms")
  image = _rgb(40, 30)
  a = chain.example(image, seed=1, epoch=2, index=3)
  np.testing.assert_array_equal(a, chain.example(image, seed=1, epoch=2, index=3))
  for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
    assert not np.array_equal(a, chain.example(image, *other))


def test_randaugment_has_the_papers_14_ops_and_magnitude_zero_is_identity():
  assert set(randaugment.OP_NAMES) == {
      "identity", "auto_contrast", "equalize", "rotate", "solarize", "color",
      "posterize", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
      "translate_x", "translate_y"}
  image = np.clip(_rgb(24, 20).astype(int) // 2 + 40, 0, 255).astype(np.uint8)
  for name in randaugment.OP_NAMES:
    rng = np.random.default_rng(0)
    at_zero = randaugment.apply_op(image, name, 0, rng)
    at_max = randaugment.apply_op(image, name, 10, np.random.default_rng(0))
    assert at_zero.shape == image.shape and at_zero.dtype == np.uint8
    if name not in ("auto_contrast", "equalize"):  # these have no magnitude
      np.testing.assert_array_equal(at_zero, image, err_msg=name)
    if name != "identity":
      assert not np.array_equal(at_max, image), name


def test_randaugment_works_on_grayscale_and_rejects_float_images():
  op = randaugment.RandAugment(3, 9)
  gray = _rgb(16, 16)[..., :1]
  assert op(gray, np.random.default_rng(0)).shape == (16, 16, 1)
  with pytest.raises(ValueError, match="before normalize"):
    op(gray.astype(np.float32), np.random.default_rng(0))


def test_chain_syntax_reads_names_calls_keywords_and_arithmetic():
  chain = transforms.parse(
      "decode | random_resized_crop(224, aspect=(3/4, 4/3)) | flip | normalize | "
      "mixup(0.2)", "data.train_transforms")
  names = [type(op).__name__ for op in chain.example_ops + chain.batch_ops]
  assert names == ["Decode", "RandomResizedCrop", "Flip", "Normalize", "Mixup"]
  assert chain.example_ops[1].aspect == (0.75, 4 / 3) and chain.has_targets
  assert transforms.parse("", "data.eval_transforms").example_ops == ()


@pytest.mark.parametrize("spec,fragment", [
    ("decode|random_resize_crop(224)", "unknown op 'random_resize_crop'"),
    ("random_resized_crop(224, scale=(0.1, 1))", "bad arguments to "
     "'random_resized_crop'"),
    ("random_resized_crop(224, area=(0.5, 0.2))", "area must satisfy"),
    ("flip(p=2)", "p must be in [0, 1]"),
    ("randaugment(2, 30)", "magnitude must be in [0, 10]"),
    ("mixup|flip", "put batch ops"),
    ("flip(", "cannot read op"),
    ("normalize(mean=foo)", "cannot read op"),
])
def test_bad_transforms_raise_config_errors_naming_field_and_op(spec, fragment):
  with pytest.raises(ConfigError) as e:
    transforms.parse(spec, "data.train_transforms")
  assert e.value.field == "data.train_transforms" and fragment in str(e.value)


def test_unknown_op_error_lists_the_registered_ops():
  with pytest.raises(ConfigError, match="random_resized_crop") as e:
    transforms.parse("crop", "data.train_transforms")
  assert "center_crop" in str(e.value) and "mixup" in str(e.value)


def test_bad_argument_error_shows_the_ops_signature():
  with pytest.raises(ConfigError, match=r"random_crop\(size, padding=4\)"):
    transforms.parse("random_crop(32, pad=4)", "data.train_transforms")


def test_config_validation_rejects_batch_ops_in_eval_transforms():
  c = config_lib.base_config()
  c.data.eval_transforms = "center_crop(8)|mixup"
  with pytest.raises(ConfigError, match="per-example ops only") as e:
    config_lib.validate(c)
  assert e.value.field == "data.eval_transforms"


def test_randaugment_magnitude_std_draws_clipped_normal_levels():
  # timm rand-m7-mstd0.5: level ~ N(7, 0.5) clipped to [0, 10]; with std 0, exactly M.
  rng = np.random.default_rng(0)
  levels = np.array([randaugment.RandAugment(2, 7, 0.5).level(rng) for _ in range(4000)])
  assert abs(levels.mean() - 7) < 0.03 and abs(levels.std() - 0.5) < 0.03
  wide = np.array([randaugment.RandAugment(2, 9.5, 2.0).level(rng) for _ in range(4000)])
  assert wide.max() == 10.0 and (wide == 10.0).mean() > 0.3  # P(N(9.5, 2) > 10) = 0.40
  assert randaugment.RandAugment(2, 7).level(rng) == 7
