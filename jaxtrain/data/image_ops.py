"""Per-example image ops: decode, crops, resize, flip, normalize.

Each op is a frozen dataclass (so a chain pickles by reference into Grain's worker
processes) called as `op(image, rng) -> image`, where `image` is an HWC numpy array
(uint8 until `normalize`, which returns float32) and `rng` a numpy `Generator` that is a
pure function of (seed, epoch, example index). Ops that draw nothing ignore `rng`.
`__post_init__` rejects bad arguments with a `ValueError` that the chain parser turns
into a `ConfigError` naming the config field.

Resizing uses Pillow (bilinear by default, "bicubic" as in the TF TPU ResNet
reference); uint8 images are resized as 8-bit images, float images channel by channel
as 32-bit float images, so both dtypes keep their values' range.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, ClassVar, Sequence

import numpy as np
from PIL import Image

# ImageNet channel statistics in 0..255 pixel units (the torchvision/timm values).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

_METHODS = {"nearest": Image.Resampling.NEAREST,
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  """(height, width) from `224` or `(224, 192)`."""
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  if not all(isinstance(x, int) and x > 0 for x in (h, w)):
    raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
  return h, w


def _check_method(method: str) -> None:
  if method not in _METHODS:
    raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")


def resize(image: np.ndarray, height: int, width: int,
           method: str = "bilinear") -> np.ndarray:
  """Resizes an HWC image to (height, width) with Pillow, keeping its dtype."""
  if image.shape[:2] == (height, width):
    return image
  resample = _METHODS[method]
  if image.dtype == np.uint8 and image.shape[-1] in (1, 3):
    mode = "L" if image.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(image[..., 0] if mode == "L" else image, mode)
    out = np.asarray(pil.resize((width, height), resample))
    return out[..., None] if mode == "L" else out
  # Other channel counts and float images: one 32-bit float image per channel.
  channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), "F")
                         .resize((width, height), resample))
              for c in range(image.shape[-1])]
  out = np.stack(channels, axis=-1)
  if image.dtype == np.uint8:
    out = np.clip(np.rint(out), 0, 255)
  return out.astype(image.dtype)


@dataclasses.dataclass(frozen=True)
class Decode:
  """JPEG/PNG/... bytes -> uint8 HWC array, with Pillow (no TensorFlow).

  `channels=3` converts to RGB (ImageNet holds some grayscale and CMYK JPEGs, as in
  the reference `tf.io.decode_jpeg(channels=3)`), 1 to grayscale, 0 keeps the stored
  mode (grayscale stays 1 channel). Arrays pass through, so a chain can start with
  `decode` whether or not the source already decoded.
  """
  channels: int = 3
  RANDOM: ClassVar[bool] = False

  def __post_init__(self):
    if self.channels not in (0, 1, 3):
      raise ValueError(f"channels must be 0, 1 or 3, got {self.channels!r}")

  def __call__(self, image: Any, rng: np.random.Generator | None) -> np.ndarray:
    del rng
    if isinstance(image, np.ndarray) and image.dtype != object:
      return image
    data = image.item() if isinstance(image, np.ndarray) else image
    pil = Image.open(io.BytesIO(data))
    mode = {1: "L", 3: "RGB"}.get(self.channels)
    if mode is None:
      mode = "L" if pil.mode in ("L", "1", "I;16") else "RGB"
    out = np.asarray(pil.convert(mode))
    return out[..., None] if out.ndim == 2 else out


@dataclasses.dataclass(frozen=True)
class Resize:
  """Resizes to `size` (int: square; or (height, width)), ignoring aspect ratio."""
  size: Any
  method: str = "bilinear"
  RANDOM: ClassVar[bool] = False

  def __post_init__(self):
    _pair(self.size)
    _check_method(self.method)

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    del rng
    return resize(image, *_pair(self.size), self.method)


def inception_crop_box(height: int, width: int, rng: np.random.Generator,
                       area: Sequence[float] = (0.08, 1.0),
                       aspect: Sequence[float] = (3 / 4, 4 / 3),
                       attempts: int = 10) -> tuple[int, int, int, int]:
  """Samples an Inception-style crop box `(top, left, height, width)`.

  Szegedy et al. 2015 (arXiv 1409.4842, Sec. 6): crops covering 8%..100% of the image
  area with aspect ratio (width / height) in [3/4, 4/3]. Sampling as in torchvision's
  and timm's `RandomResizedCrop.get_params`: area uniform, aspect log-uniform, up to
  `attempts` tries for a box that fits; then the fallback is the central crop of the
  whole image with its aspect clamped into `aspect` (so the box always fits).
  """
  total = height * width
  log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
  for _ in range(attempts):
    target = total * rng.uniform(area[0], area[1])
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  ratio = width / height
  if ratio < aspect[0]:
    w, h = width, int(round(width / aspect[0]))
  elif ratio > aspect[1]:
    h, w = height, int(round(height * aspect[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
  """Inception crop (`inception_crop_box`) resized to `size`.

  Szegedy et al. 2015, arXiv 1409.4842; the ImageNet training crop of the TF TPU
  ResNet reference (`distorted_bounding_box_crop`, 10 attempts) and of timm.
  """
  size: Any
  area: tuple[float, float] = (0.08, 1.0)
  aspect: tuple[float, float] = (3 / 4, 4 / 3)
  attempts: int = 10
  method: str = "bilinear"
  RANDOM: ClassVar[bool] = True

  def __post_init__(self):
    _pair(self.size)
    _check_method(self.method)
    lo, hi = self.area
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"area must satisfy 0 < min <= max <= 1, got {self.area!r}")
    if not 0 < self.aspect[0] <= self.aspect[1]:
      raise ValueError(f"aspect must satisfy 0 < min <= max, got {self.aspect!r}")
    if not (isinstance(self.attempts, int) and self.attempts >= 1):
      raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    top, left, h, w = inception_crop_box(image.shape[0], image.shape[1], rng,
                                         self.area, self.aspect, self.attempts)
    crop = image[top:top + h, left:left + w]
    return resize(crop, *_pair(self.size), self.method)


@dataclasses.dataclass(frozen=True)
class CenterCrop:
  """Eval crop: the central square of side `crop_ratio * min(H, W)`, resized to `size`.

  The TF TPU ResNet reference's `_decode_and_center_crop`: crop_ratio 0.875 =
  224 / (224 + 32), i.e. the "resize to 256, center crop 224" of He et al. 2015
  (arXiv 1512.03385) in one resampling step.
  """
  size: Any
  crop_ratio: float = 0.875
  method: str = "bilinear"
  RANDOM: ClassVar[bool] = False

  def __post_init__(self):
    _pair(self.size)
    _check_method(self.method)
    if not 0 < self.crop_ratio <= 1:
      raise ValueError(f"crop_ratio must be in (0, 1], got {self.crop_ratio!r}")

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    del rng
    height, width = image.shape[:2]
    side = max(1, int(self.crop_ratio * min(height, width)))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    return resize(image[top:top + side, left:left + side], *_pair(self.size),
                  self.method)


@dataclasses.dataclass(frozen=True)
class Flip:
  """Horizontal flip with probability `p` (Krizhevsky et al. 2012)."""
  p: float = 0.5
  RANDOM: ClassVar[bool] = True

  def __post_init__(self):
    if not 0 <= self.p <= 1:
      raise ValueError(f"p must be in [0, 1], got {self.p!r}")

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1] if rng.random() < self.p else image

  def batch(self, images: np.ndarray, rngs: Sequence[np.random.Generator]
            ) -> np.ndarray:
    """`__call__` on each image of a BHWC batch, each drawing from its own rng."""
    flip = np.asarray([rng.random() < self.p for rng in rngs])
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


@dataclasses.dataclass(frozen=True)
class RandomCrop:
  """Zero-pads `padding` pixels on each side, then crops `size` at random.

  The CIFAR augmentation of He et al. 2015 (arXiv 1512.03385, Sec. 4.2): pad 4,
  random 32x32 crop.
  """
  size: Any
  padding: int = 4
  RANDOM: ClassVar[bool] = True

  def __post_init__(self):
    _pair(self.size)
    if not (isinstance(self.padding, int) and self.padding >= 0):
      raise ValueError(f"padding must be an int >= 0, got {self.padding!r}")

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = _pair(self.size)
    p = self.padding
    padded = np.pad(image, ((p, p), (p, p), (0, 0)))
    if padded.shape[0] < h or padded.shape[1] < w:
      raise ValueError(f"random_crop({self.size}) is larger than the padded image "
                       f"{padded.shape[:2]}")
    top = int(rng.integers(0, padded.shape[0] - h + 1))
    left = int(rng.integers(0, padded.shape[1] - w + 1))
    return padded[top:top + h, left:left + w]

  def batch(self, images: np.ndarray, rngs: Sequence[np.random.Generator]
            ) -> np.ndarray:
    """`__call__` on each image of a BHWC batch: one pad, one gather.

    Each image draws (top, left) from its own rng in `__call__`'s order, so the
    crops are those of `__call__`.
    """
    h, w = _pair(self.size)
    p = self.padding
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    if padded.shape[1] < h or padded.shape[2] < w:
      raise ValueError(f"random_crop({self.size}) is larger than the padded image "
                       f"{padded.shape[1:3]}")
    corners = np.asarray([(rng.integers(0, padded.shape[1] - h + 1),
                           rng.integers(0, padded.shape[2] - w + 1))
                          for rng in rngs], np.intp).reshape(-1, 2)
    rows = corners[:, 0, None] + np.arange(h)
    cols = corners[:, 1, None] + np.arange(w)
    b = np.arange(len(images))[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]]


@dataclasses.dataclass(frozen=True)
class Normalize:
  """(image - mean) / std per channel, in the input's pixel units; float32 out.

  Defaults are the ImageNet statistics in 0..255 units (`IMAGENET_MEAN`/`_STD`).
  """
  mean: Any = IMAGENET_MEAN
  std: Any = IMAGENET_STD
  RANDOM: ClassVar[bool] = False

  def __post_init__(self):
    std = np.asarray(self.std, np.float64)
    if std.ndim > 1 or np.asarray(self.mean).ndim > 1 or np.any(std <= 0):
      raise ValueError("mean and std must be numbers or per-channel lists, std > 0; "
                       f"got mean={self.mean!r}, std={self.std!r}")

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    del rng
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    if mean.size not in (1, image.shape[-1]) or std.size not in (1, image.shape[-1]):
      raise ValueError(f"normalize has {mean.size} means and {std.size} stds for "
                       f"{image.shape[-1]} channels")
    return (image.astype(np.float32) - mean) / std

  def batch(self, images: np.ndarray, rngs: Sequence[Any]) -> np.ndarray:
    """`__call__` on a BHWC batch at once (the same per-channel arithmetic)."""
    del rngs
    return self(images, None)
