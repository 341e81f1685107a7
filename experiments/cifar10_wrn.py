"""WRN-28-10 on CIFAR-10: the recipe of Zagoruyko & Komodakis 2016.

Source. Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, arXiv 1605.07146
(section 3 "experimental results", training details), and the authors' code
(github.com/szagoruyko/wide-residual-networks):

  model       WRN-28-10: pre-activation basic blocks, widths 160/320/640, 4 blocks
              per stage, dropout 0.3 between the convolutions of a block
              (`models.cifar.WideResNet`), 36.5M parameters
  optimizer   SGD with Nesterov momentum 0.9, dampening 0, weight decay 5e-4 (L2 on
              every parameter, as torch's `optim.SGD(weight_decay=...)`), batch 128
  schedule    LR 0.1, multiplied by 0.2 at epochs 60, 120 and 160; 200 epochs
  input       mean/std normalization, 4-pixel padding + random 32x32 crop, flip

Published test error on CIFAR-10: 4.00% for WRN-28-10, 3.89% with dropout (the
paper's results table, ZCA preprocessing); the authors' repository reports about 3.8%
with mean/std preprocessing, the input used here.

Variants: `runlocal` (WRN-10-1, synthetic data, a few steps on a CPU).

    jaxtrain train --config=experiments/cifar10_wrn.py --workdir=/tmp/wrn28_10 \\
        --config.data.data_dir=~/tensorflow_datasets
    jaxtrain train --config=experiments/cifar10_wrn.py:runlocal --workdir=/tmp/wrn_local
"""
import math

from jaxtrain.config import base_config
from jaxtrain import presets

TRAIN_IMAGES = 50_000
BATCH = 128
EPOCHS = 200
LR_DROP_EPOCHS = (60, 120, 160)


def epoch_step(epoch: float) -> int:
  """The first train step of `epoch` (the runner's ceil(epochs * images / batch))."""
  return math.ceil(epoch * TRAIN_IMAGES / BATCH)


def get_config(arg=None):
  """The paper's recipe; `arg="runlocal"` shrinks it to run on a CPU."""
  runlocal = presets.is_runlocal(arg)
  c = base_config()
  c.model.name = "wide_resnet"
  c.model.depth, c.model.widen_factor, c.model.dropout_rate = 28, 10, 0.3
  presets.cifar10(c.data)
  c.optimizer.name = "momentum"
  c.optimizer.nesterov = True
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.l2 = 5e-4
  c.optimizer.weight_decay_mask = ".*"  # every parameter, as torch's SGD
  c.optimizer.schedule.name = "piecewise"
  c.optimizer.schedule.boundaries = tuple(epoch_step(e) for e in LR_DROP_EPOCHS)
  c.optimizer.schedule.scales = (0.2, 0.2, 0.2)
  c.train.batch_size = BATCH
  c.train.num_epochs = float(EPOCHS)
  c.train.log_every = 200
  c.train.eval_every = epoch_step(5)
  c.checkpoint.every = epoch_step(5)
  if runlocal:
    c.model.depth, c.model.widen_factor = 10, 1
    presets.cifar10_runlocal(c)
    c.optimizer.schedule.boundaries = (4, 8, 10)
  return c
