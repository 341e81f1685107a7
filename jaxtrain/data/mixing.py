"""Batch ops on labels: mixup, cutmix -> soft `targets` (label smoothing is the
loss's: `loss.label_smoothing`, applied to soft targets too).

These ops turn the integer labels of a batch into soft float targets of shape
(batch, num_classes) that sum to 1 per row; the batch then carries them as
`"targets"` (the integer `"label"` stays, for accuracy metrics).

Mixing is pairwise: rows (2j, 2j+1) of a batch are partners, as in timm's "pair"
mode. The train stream is a random permutation, so neighbours are random partners,
and because every local batch starts at an even stream position (local batches have
even size), the pairs are the same whatever the number of processes or workers. Each
pair draws from its own `Generator`, a pure function of (seed, epoch, index of its
first example). One mixing coefficient `lam` per pair, used symmetrically:

    a' = lam * a + (1 - lam) * b,   b' = lam * b + (1 - lam) * a   (mixup)
    t_a' = lam * t_a + (1 - lam) * t_b,   t_b' = lam * t_b + (1 - lam) * t_a

When both mixup and cutmix are in a chain, each pair uses one of them, chosen with
equal probability (timm's `switch_prob=0.5`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np


def _check_alpha_p(alpha: float, p: float) -> None:
  if not (isinstance(alpha, (int, float)) and alpha > 0):
    raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
  if not (isinstance(p, (int, float)) and 0 <= p <= 1):
    raise ValueError(f"p must be in [0, 1], got {p!r}")


@dataclasses.dataclass(frozen=True)
class Mixup:
  """Mixup (Zhang et al. 2017, arXiv 1710.09412): convex combination of a pair.

  lam ~ Beta(alpha, alpha); with probability 1 - p the pair is left as is.
  """
  alpha: float = 0.2
  p: float = 1.0
  RANDOM: ClassVar[bool] = True

  def __post_init__(self):
    _check_alpha_p(self.alpha, self.p)

  def mix_pair(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns (a', b', lam): lam is each image's own share of the mix."""
    if rng.random() >= self.p:
      return a, b, 1.0
    lam = float(rng.beta(self.alpha, self.alpha))
    return lam * a + (1 - lam) * b, lam * b + (1 - lam) * a, lam


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
  """The CutMix box `(y1, y2, x1, x2)` for mixing ratio `lam`.

  Yun et al. 2019 (arXiv 1905.04899, Eq. 2 and the authors' `rand_bbox`): a box of
  side ratio sqrt(1 - lam) centred uniformly at random, clipped to the image.
  """
  cut = math.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * cut), int(width * cut)
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  y1, y2 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
  x1, x2 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
  return int(y1), int(y2), int(x1), int(x2)


@dataclasses.dataclass(frozen=True)
class Cutmix:
  """CutMix (Yun et al. 2019, arXiv 1905.04899): swap a box between a pair.

  lam ~ Beta(alpha, alpha) sets the box (`cutmix_box`); the targets use the box's
  actual area after clipping, lam = 1 - box area / image area, as in the paper's code.
  """
  alpha: float = 1.0
  p: float = 1.0
  RANDOM: ClassVar[bool] = True

  def __post_init__(self):
    _check_alpha_p(self.alpha, self.p)

  def mix_pair(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, float]:
    if rng.random() >= self.p:
      return a, b, 1.0
    height, width = a.shape[:2]
    y1, y2, x1, x2 = cutmix_box(height, width, float(rng.beta(self.alpha, self.alpha)),
                                rng)
    a2, b2 = a.copy(), b.copy()
    a2[y1:y2, x1:x2], b2[y1:y2, x1:x2] = b[y1:y2, x1:x2], a[y1:y2, x1:x2]
    return a2, b2, 1.0 - (y2 - y1) * (x2 - x1) / (height * width)


def soft_targets(images: np.ndarray, labels: np.ndarray, num_classes: int,
                 ops: tuple, pair_rngs: list[np.random.Generator]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Applies the batch ops `ops` to float images; returns (images, targets).

  `pair_rngs[j]` is the generator of the pair (2j, 2j+1).
  """
  targets = np.eye(num_classes, dtype=np.float32)[labels]
  mixers = [op for op in ops if isinstance(op, (Mixup, Cutmix))]
  if not mixers:
    return images, targets
  if len(images) % 2:
    raise ValueError(f"mixup/cutmix pair rows of a batch; the batch has an odd "
                     f"number of rows ({len(images)})")
  images, mixed = images.copy(), targets.copy()
  for j, rng in enumerate(pair_rngs):
    a, b = 2 * j, 2 * j + 1
    mixer = mixers[int(rng.integers(len(mixers)))] if len(mixers) > 1 else mixers[0]
    images[a], images[b], lam = mixer.mix_pair(images[a], images[b], rng)
    mixed[a] = lam * targets[a] + (1 - lam) * targets[b]
    mixed[b] = lam * targets[b] + (1 - lam) * targets[a]
  return images, mixed
