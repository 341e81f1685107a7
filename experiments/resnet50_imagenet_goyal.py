"""ResNet-50 on ImageNet at batch 8192: Goyal et al. 2017, the paper's own schedule.

Source. Goyal, Dollar, Girshick, Noordhuis, Wesolowski, Kyrola, Tulloch, Jia & He,
"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017, arXiv 1706.02677
(sections 2-5):

  model       ResNet-50 with the stride on the 3x3 convolution (fb.resnet.torch, our
              v1.5); the last BN scale of every residual block initialised to 0
  batch       k n = 256 workers x 32 = 8192; BN statistics per worker (32 images)
  optimizer   SGD, momentum 0.9, weight decay 1e-4 as an L2 term on the weights
              only (no decay on the BN scale and shift)
  LR          linear scaling rule: 0.1 x kn / 256 = 3.2; gradual warmup from 0.1 to
              3.2 over the first 5 epochs, then divided by 10 at epochs 30, 60, 80
  length      90 epochs of 1,281,167 images
  input       scale + aspect-ratio augmentation to 224 and flip (fb.resnet.torch's
              Inception crop), per-channel normalization; eval: 224 center crop of
              the 256-resized image

Published: 23.74% +- 0.09 top-1 error at batch 8k vs 23.60% +- 0.12 at 256 (Table 1).

Different here: the paper applies momentum with "momentum correction" to its
(LR-inside-the-velocity) update; Optax's momentum keeps the LR outside the velocity,
which is the corrected form's equivalent, so no correction is needed. BN groups of 32
images assume 32 images per data-parallel replica (`model.bn_group_size`).

    jaxtrain train --config=experiments/resnet50_imagenet_goyal.py --workdir=gs://B/goyal
    jaxtrain train --config=experiments/resnet50_imagenet_goyal.py:runlocal --workdir=/tmp/g
"""
import math

from jaxtrain.config import base_config
from jaxtrain import presets

IMAGES = 1_281_167
BATCH = 8192
PER_WORKER = 32


def epoch_step(epoch: float, batch: int = BATCH) -> int:
  """First train step of `epoch` at `batch` (the runner's ceil of epochs x images / batch)."""
  return math.ceil(epoch * IMAGES / batch)


def get_config(arg=None):
  """The paper's recipe; `arg="runlocal"` shrinks it to run on a CPU."""
  runlocal = presets.is_runlocal(arg)
  c = base_config()
  c.model.name = "resnet50"
  c.model.zero_init_last_bn = True
  c.model.bn_group_size = 1  # one replica = one worker of 32 images
  presets.imagenet(c.data)
  c.optimizer.name = "momentum"
  c.optimizer.momentum = 0.9
  c.optimizer.learning_rate = 0.1
  c.optimizer.lr_scaling, c.optimizer.base_batch_size = "linear", 256
  c.optimizer.l2 = 1e-4  # default mask: ndim > 1, i.e. conv and dense kernels
  c.optimizer.schedule.name = "piecewise"
  c.optimizer.schedule.warmup_steps = epoch_step(5)
  c.optimizer.schedule.warmup_init_fraction = 256 / BATCH  # 0.1 -> 3.2
  c.optimizer.schedule.boundaries = tuple(epoch_step(e) for e in (30, 60, 80))
  c.optimizer.schedule.scales = (0.1, 0.1, 0.1)
  c.train.batch_size = BATCH
  c.train.num_epochs = 90.0
  c.train.log_every = 50
  c.train.eval_every = epoch_step(5)
  c.checkpoint.every = epoch_step(5)
  if runlocal:
    presets.synthetic_images(c.data, 32, num_examples=64, stored_size=40)
    presets.cpu_resnet(c.model)
    c.data.train_transforms = "random_resized_crop(32)|flip|normalize"
    c.data.eval_transforms = "center_crop(32, crop_ratio=0.875)|normalize"
    c.model.bn_group_size = None
    c.train.batch_size = 16
    c.train.num_epochs = 0.0
    c.train.num_steps = 6
    c.train.log_every, c.train.eval_every, c.checkpoint.every = 3, 0, 0
    c.optimizer.schedule.warmup_steps = 2
    c.optimizer.schedule.boundaries, c.optimizer.schedule.scales = (4,), (0.1,)
  return c
