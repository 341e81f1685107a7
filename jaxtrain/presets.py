"""Config sections shared by experiment files: dataset inputs, the runlocal model.

Experiment files (big_vision-style `get_config`) set `config.data` for the dataset
they train on; these functions hold the parts several recipes share, so the TFDS
names, splits and statistics are written once, and the CPU-size model that
`runlocal` variants train (what runs there is the procedure: optimizer, schedule,
augmentation, loss, stages; the full model only changes the compile time).
"""
from __future__ import annotations

import ml_collections

CIFAR_MEAN = (125.3, 123.0, 113.9)  # 0..255 units, as fb.resnet.torch and WRN
CIFAR_STD = (63.0, 62.1, 66.7)


def is_runlocal(arg: str | None) -> bool:
  """Whether `get_config(arg)` asks for the `runlocal` variant (the only variant of
  the recipes that use this); any other non-empty `arg` is a ValueError."""
  if arg not in (None, "", "runlocal"):
    raise ValueError(f"get_config({arg!r}): the only variant is 'runlocal'")
  return arg == "runlocal"


def cifar10(data: ml_collections.ConfigDict, num_workers: int = 4) -> None:
  """TFDS `cifar10`; train: 4-pixel pad + random 32x32 crop + flip (He et al. 2015,
  section 4.2); both: per-channel mean/std normalization."""
  data.source = "tfds"
  data.name = "cifar10"
  data.train_split, data.eval_split = "train", "test"
  data.image_shape = (32, 32, 3)
  norm = f"normalize(mean={list(CIFAR_MEAN)}, std={list(CIFAR_STD)})"
  data.train_transforms = f"decode|random_crop(32, padding=4)|flip|{norm}"
  data.eval_transforms = f"decode|{norm}"
  data.num_workers = num_workers


def imagenet(data: ml_collections.ConfigDict, train_size: int = 224,
             eval_size: int = 224, crop_ratio: float = 0.875,
             num_workers: int = 8) -> None:
  """TFDS `imagenet2012`; train: Inception crop (Szegedy et al. 2015) + flip;
  eval: central `crop_ratio` crop resized to `eval_size`; ImageNet mean/std."""
  data.source = "tfds"
  data.name = "imagenet2012"
  data.train_split, data.eval_split = "train", "validation"
  data.image_shape = (train_size, train_size, 3)
  data.train_transforms = f"decode|random_resized_crop({train_size})|flip|normalize"
  data.eval_transforms = (f"decode|center_crop({eval_size}, crop_ratio={crop_ratio})"
                          "|normalize")
  data.num_workers = num_workers


def synthetic_images(data: ml_collections.ConfigDict, size: int,
                     num_classes: int = 10, num_examples: int = 128,
                     stored_size: int | None = None) -> None:
  """Random images in place of the dataset, for `runlocal` variants on a CPU.

  Synthetic images arrive decoded: the caller sets transforms without `decode`.
  """
  data.source = "synthetic"
  data.synthetic.image_shape = (stored_size or size, stored_size or size, 3)
  data.synthetic.num_classes = num_classes
  data.synthetic.num_examples = num_examples
  data.image_shape = (size, size, 3)
  data.num_workers = 0


def cpu_resnet(model: ml_collections.ConfigDict, width: int = 16) -> None:
  """A ResNet-18 of `width` channels with the CIFAR stem, for `runlocal` variants.

  Keeps the recipe's model options (zero-init, drop path, BN groups, ...); ResNet-50's
  train step takes minutes to compile on a CPU, ResNet-18 at width 16 seconds.
  """
  model.name = "resnet18"
  model.width = width
  model.small_inputs = True


def cifar10_runlocal(c: ml_collections.ConfigDict, num_steps: int = 12) -> None:
  """A CIFAR recipe at toy size: synthetic 32x32 images, the same augmentation,
  batch 16, `num_steps` steps, evaluation only at the end, no checkpoints."""
  synthetic_images(c.data, 32)
  c.data.train_transforms = "random_crop(32, padding=4)|flip|normalize"
  c.data.eval_transforms = "normalize"
  c.train.batch_size = 16
  c.train.num_epochs = 0.0
  c.train.num_steps = num_steps
  c.train.log_every = num_steps // 2
  c.train.eval_every = 0
  c.checkpoint.every = 0
