"""ResNet-50 on ImageNet, the practical multi-GPU recipe built on the linear scaling rule.

Source. The linear scaling rule and gradual warmup of Goyal et al. 2017 ("Accurate,
Large Minibatch SGD", arXiv 1706.02677) with the half-period cosine decay of
Loshchilov & Hutter 2017 (SGDR, arXiv 1608.03983, without restarts), as commonly run
on one 8-GPU node; the values are the lectures' recipe:

  optimizer   SGD, momentum 0.9, weight decay 5e-5 on weights only (conv and dense
              kernels; no decay on BN and biases), added to the gradient as
              PyTorch's `SGD(weight_decay=...)` does
  LR          peak 0.1 x batch / 256; 5 epochs of linear warmup from 0.01x to 1x the
              peak, then 100 epochs of half-period cosine down to 0.001x the peak
  batch       1024 (8 GPUs x 128)
  input       random-resized crop 224 + flip, mean/std normalization; eval: center
              crop 224 (ratio 0.875)
  loss        softmax cross-entropy, float32

Published figure: none for exactly this recipe (it is the lectures' practical
baseline). For scale: Goyal et al.'s step-decay recipe reaches 76.3% top-1 in 90
epochs (experiments/resnet50_imagenet_goyal.py). Not verified here.

The end of the cosine is an absolute value (0.001 x the peak at batch 1024): pass
`--config.optimizer.schedule.end_value=` with a new batch size.

    jaxtrain train --config=experiments/resnet50_imagenet_practical.py --workdir=gs://B/p
    jaxtrain train --config=experiments/resnet50_imagenet_practical.py:runlocal \\
        --workdir=/tmp/practical
"""
import math

from jaxtrain.config import base_config
from jaxtrain import presets

IMAGES = 1_281_167
BATCH = 1024
BASE_LR = 0.1
WARMUP_EPOCHS, COSINE_EPOCHS = 5, 100


def get_config(arg=None):
  """The recipe; `arg="runlocal"` shrinks it to run on a CPU."""
  runlocal = presets.is_runlocal(arg)
  c = base_config()
  c.model.name = "resnet50"
  presets.imagenet(c.data)
  c.optimizer.name = "momentum"
  c.optimizer.momentum = 0.9
  c.optimizer.learning_rate = BASE_LR
  c.optimizer.lr_scaling, c.optimizer.base_batch_size = "linear", 256
  c.optimizer.l2 = 5e-5  # default mask: ndim > 1 (weights only)
  peak = BASE_LR * BATCH / 256
  c.optimizer.schedule.name = "warmup_cosine"
  c.optimizer.schedule.warmup_steps = math.ceil(WARMUP_EPOCHS * IMAGES / BATCH)
  c.optimizer.schedule.warmup_init_fraction = 0.01
  c.optimizer.schedule.end_value = 0.001 * peak
  c.train.batch_size = BATCH
  c.train.num_epochs = float(WARMUP_EPOCHS + COSINE_EPOCHS)
  c.train.log_every = 100
  c.train.eval_every = math.ceil(5 * IMAGES / BATCH)
  c.checkpoint.every = c.train.eval_every
  if runlocal:
    presets.synthetic_images(c.data, 32, num_examples=64, stored_size=40)
    presets.cpu_resnet(c.model)
    c.data.train_transforms = "random_resized_crop(32)|flip|normalize"
    c.data.eval_transforms = "center_crop(32, crop_ratio=0.875)|normalize"
    c.train.batch_size = 16
    c.train.num_epochs = 0.0
    c.train.num_steps = 6
    c.train.log_every, c.train.eval_every, c.checkpoint.every = 3, 0, 0
    c.optimizer.schedule.warmup_steps = 2
    c.optimizer.schedule.end_value = 0.001 * BASE_LR * 16 / 256
  return c
