"""ResNet-20/32/44/56/110 on CIFAR-10: the recipe of He et al. 2015, section 4.2.

Source. He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", 2015,
arXiv 1512.03385, section 4.2 and Table 6:

  model       ResNet-(6n+2): 3x3 conv(16), 3 stages of n basic blocks (16, 32, 64
              channels), option-A shortcuts (`models.cifar.CifarResNet`), BN, He init
  optimizer   SGD, momentum 0.9, weight decay 1e-4 (as an L2 gradient term on every
              parameter, Caffe-style), batch 128
  schedule    LR 0.1, divided by 10 at 32k and 48k iterations, stop at 64k
  input       4-pixel zero padding, random 32x32 crop, horizontal flip; test on the
              plain 32x32 image; per-channel mean/std normalization (the paper
              subtracts the per-pixel mean; mean/std is the fb.resnet.torch variant)

Published test error (Table 6): ResNet-20 8.75%, ResNet-32 7.51%, ResNet-44 7.17%,
ResNet-56 6.97%, ResNet-110 6.43% (best of 5; mean 6.61 +- 0.16). The paper trains on
45k images and picks 64k iterations on a 5k validation split; here the full 50k train
split is used. ResNet-110's 400-iteration warm-up at LR 0.01 is not reproduced.

Variants (`get_config` argument, comma-separated): a depth (`20` default, `32`, `44`,
`56`, `110`) and `runlocal` (8-layer net, synthetic data, a few steps on a CPU).

    jaxtrain train --config=experiments/cifar10_resnet.py:56 --workdir=/tmp/cifar_r56 \\
        --config.data.data_dir=~/tensorflow_datasets
    jaxtrain train --config=experiments/cifar10_resnet.py:runlocal --workdir=/tmp/r8
"""
from jaxtrain.config import base_config
from jaxtrain import presets

BATCH = 128
ITERATIONS = 64_000
LR_DROPS = (32_000, 48_000)


def get_config(arg=None):
  """The paper's recipe; see the module docstring for `arg`."""
  tokens = [t for t in (arg or "").split(",") if t]
  depth = 20
  for token in tokens:
    if token.isdigit():
      depth = int(token)
    elif token != "runlocal":
      raise ValueError(f"get_config({arg!r}): expected a depth and/or 'runlocal'")
  c = base_config()
  c.model.name = "cifar_resnet"
  c.model.depth = depth
  presets.cifar10(c.data)
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.l2 = 1e-4
  c.optimizer.weight_decay_mask = ".*"  # every parameter, BN and biases included
  c.optimizer.schedule.name = "piecewise"
  c.optimizer.schedule.boundaries = LR_DROPS
  c.optimizer.schedule.scales = (0.1, 0.1)
  c.train.batch_size = BATCH
  c.train.num_steps = ITERATIONS
  c.train.log_every = 200
  c.train.eval_every = 2000
  c.checkpoint.every = 2000
  if "runlocal" in tokens:
    c.model.depth = 8
    presets.cifar10_runlocal(c)
    c.optimizer.schedule.boundaries = (4, 8)
  return c
