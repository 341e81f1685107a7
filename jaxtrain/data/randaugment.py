"""RandAugment (Cubuk et al. 2019, arXiv 1909.13719).

For each image, `num_ops` operations drawn uniformly (with replacement) from the
paper's 14 (identity, auto-contrast, equalize, rotate, solarize, color, posterize,
contrast, brightness, sharpness, shear-x/y, translate-x/y), each applied at one shared
magnitude M. Magnitudes follow the 0..10 level scale of the reference TF
implementation (tensorflow/tpu `autoaugment.py`, `_MAX_LEVEL = 10`) with the
"increasing" forms of timm's `rand_augment_transform` for posterize and solarize
(more distortion as M grows, none at M = 0): at level L,

  rotate        +-30 * L/10 degrees           shear      +-0.3 * L/10
  translate     +-0.45 * L/10 of the size     color/contrast/brightness/sharpness
  posterize     keep 8 - int(4 * L/10) bits                factor 1 +- 0.9 * L/10
  solarize      invert pixels >= 256 - 256 * L/10

Signs are drawn at random. Geometric ops fill uncovered pixels with gray (128), as
the reference does. Works on uint8 images with 1 or 3 channels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
_FILL = 128


def _signed(value: float, rng: np.random.Generator) -> float:
  return value if rng.random() < 0.5 else -value


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
  fill = _FILL if img.mode == "L" else (_FILL,) * 3
  return img.transform(img.size, Image.Transform.AFFINE, matrix,
                       Image.Resampling.BILINEAR, fillcolor=fill)


def _rotate(img, level, rng):
  fill = _FILL if img.mode == "L" else (_FILL,) * 3
  return img.rotate(_signed(30.0 * level / MAX_LEVEL, rng),
                    Image.Resampling.BILINEAR, fillcolor=fill)


def _shear_x(img, level, rng):
  return _affine(img, (1, _signed(0.3 * level / MAX_LEVEL, rng), 0, 0, 1, 0))


def _shear_y(img, level, rng):
  return _affine(img, (1, 0, 0, _signed(0.3 * level / MAX_LEVEL, rng), 1, 0))


def _translate_x(img, level, rng):
  pixels = _signed(0.45 * level / MAX_LEVEL * img.size[0], rng)
  return _affine(img, (1, 0, pixels, 0, 1, 0))


def _translate_y(img, level, rng):
  pixels = _signed(0.45 * level / MAX_LEVEL * img.size[1], rng)
  return _affine(img, (1, 0, 0, 0, 1, pixels))


def _enhance(kind: type) -> Callable[..., Image.Image]:
  def op(img, level, rng):
    return kind(img).enhance(1.0 + _signed(0.9 * level / MAX_LEVEL, rng))
  return op


def _posterize(img, level, rng):
  del rng
  return ImageOps.posterize(img, 8 - int(4 * level / MAX_LEVEL))


def _solarize(img, level, rng):
  del rng
  return ImageOps.solarize(img, 256 - int(256 * level / MAX_LEVEL))


OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "identity": lambda img, level, rng: img,
    "auto_contrast": lambda img, level, rng: ImageOps.autocontrast(img),
    "equalize": lambda img, level, rng: ImageOps.equalize(img),
    "rotate": _rotate,
    "solarize": _solarize,
    "color": _enhance(ImageEnhance.Color),
    "posterize": _posterize,
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}
OP_NAMES = tuple(OPS)


def apply_op(image: np.ndarray, name: str, level: float,
             rng: np.random.Generator) -> np.ndarray:
  """Applies RandAugment op `name` at `level` (0..10) to a uint8 HWC image."""
  gray = image.shape[-1] == 1
  img = Image.fromarray(image[..., 0] if gray else image, "L" if gray else "RGB")
  out = np.asarray(OPS[name](img, level, rng))
  return out[..., None] if gray else out


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """`num_ops` random ops at magnitude `magnitude` (0..10); ResNet-50: N=2, M=9.

  `magnitude_std` > 0 draws each op's level from N(magnitude, magnitude_std) clipped
  to [0, 10], as timm's `rand-mX-mstdY` (used by "ResNet strikes back": m7, mstd 0.5).
  """
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.0
  RANDOM: ClassVar[bool] = True

  def __post_init__(self):
    if not (isinstance(self.num_ops, int) and self.num_ops >= 0):
      raise ValueError(f"num_ops must be an int >= 0, got {self.num_ops!r}")
    if not (isinstance(self.magnitude, (int, float))
            and 0 <= self.magnitude <= MAX_LEVEL):
      raise ValueError(f"magnitude must be in [0, {MAX_LEVEL:g}], got "
                       f"{self.magnitude!r}")
    if not (isinstance(self.magnitude_std, (int, float)) and self.magnitude_std >= 0):
      raise ValueError(f"magnitude_std must be a number >= 0, got {self.magnitude_std!r}")

  def level(self, rng: np.random.Generator) -> float:
    """The level of one op: `magnitude`, or a clipped normal draw around it."""
    if not self.magnitude_std:
      return self.magnitude
    return float(np.clip(rng.normal(self.magnitude, self.magnitude_std), 0, MAX_LEVEL))

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if image.dtype != np.uint8 or image.shape[-1] not in (1, 3):
      raise ValueError("randaugment works on uint8 images with 1 or 3 channels; "
                       "put it before normalize")
    for k in rng.integers(0, len(OP_NAMES), size=self.num_ops):
      image = apply_op(image, OP_NAMES[int(k)], self.level(rng), rng)
    return image
