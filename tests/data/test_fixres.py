"""FixRes evaluation (Touvron et al. 2019): test resolution and crop ratio of their own.

The eval crop's geometry is checked on ramp images, whose bilinear resampling is the
ramp at the sampled coordinates, against the crop box computed here in numpy.
"""
import numpy as np
import pytest

from jaxtrain.data import transforms


def _expected_coordinates(length, other, crop_ratio, size):
  """Source pixel coordinate sampled by each output pixel along one axis."""
  side = int(crop_ratio * min(length, other))  # central square of the short side
  start = (length - side + 1) // 2
  scale = side / size
  return start + (np.arange(size) + 0.5) * scale - 0.5  # pixel centres at k


@pytest.mark.parametrize("height, width, size, crop_ratio", [
    (300, 400, 224, 0.95),   # RSB A3: train 160, test 224 at crop 0.95
    (256, 192, 160, 0.875),  # the classic 0.875 crop, portrait image
    (120, 120, 224, 1.0),    # upsampling, whole image
])
def test_eval_crop_samples_the_central_box_at_the_test_resolution(
    height, width, size, crop_ratio):
  chain = transforms.parse(f"center_crop({size}, crop_ratio={crop_ratio})",
                           "data.eval_transforms")
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  out = chain.example(np.stack([y, x], axis=-1))
  assert out.shape == (size, size, 2)
  rows = _expected_coordinates(height, width, crop_ratio, size)
  cols = _expected_coordinates(width, height, crop_ratio, size)
  inner = slice(3, size - 3)  # the resampling filter is cut at the border
  # Pillow's filter weights are rounded: within 0.1 pixel, while a crop box one
  # pixel off (or a side one pixel short) is up to a pixel off.
  np.testing.assert_allclose(out[inner, :, 0], np.broadcast_to(
      rows[inner, None], (size - 6, size)), atol=0.1)
  np.testing.assert_allclose(out[:, inner, 1], np.broadcast_to(
      cols[None, inner], (size, size - 6)), atol=0.1)
