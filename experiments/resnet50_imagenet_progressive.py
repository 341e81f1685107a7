"""ResNet-50 on ImageNet with progressive resizing: the fast.ai DAWNBench recipe.

Source. fast.ai + DIU "Now anyone can train Imagenet in 18 minutes" (Howard, Shaw &
Bulatov, fast.ai blog, 2018-08-10) and its code, github.com/cybertronai/imagenet18
(`train.py`, schedule `one_machine`: one AWS p3.16xlarge, 8 V100s). Training images
grow 128 -> 224 -> 288 pixels while the batch shrinks to fit; the LR follows the
batch size; gradual warmup (Goyal et al. 2017); no weight decay on BN (`--no-bn-wd`)
and zero-initialised last BN scale per block (`--init-bn0`); SGD momentum 0.9, weight
decay 5e-5 (Tencent's tuning, Jia et al. 2018); the last stage evaluates at 288.

  epochs    image   batch (8 x per-GPU)   LR (the script's phases)
  0-14      128     4096 (8 x 512)        1.0 -> 2.0 linear over epochs 0-5, then 1.0
  14-32     224     1792 (8 x 224)        1.0 x 224/512; /10 at epoch 16; /100 at 27
  32-35     288     1024 (8 x 128)        0.01 x 128/512, /10 from epoch 33
                                          (min crop scale 0.5)

Published: 93% top-5 on ImageNet; this one-machine schedule is the DAWNBench entry
measured at about 3 hours on 8 V100s (the 18-minute figure is the 16-machine schedule).

Different here: the last phase's linear decay from epoch 33 to 35 is a single step
down; the stage's min crop scale 0.5 and fast.ai's rectangular validation (whole
images at their aspect ratio) are replaced by the same crop (scale 0.08-1) and a
center crop at 288 (ratio 0.875); fp16 by bfloat16. The stages are `train.stages`:
the step recompiles once per stage while the data stream, optimizer state and LR
schedule continue.

    jaxtrain train --config=experiments/resnet50_imagenet_progressive.py --workdir=gs://B/p
    jaxtrain train --config=experiments/resnet50_imagenet_progressive.py:runlocal \\
        --workdir=/tmp/progressive
"""
import math

from jaxtrain.config import base_config
from jaxtrain import presets

IMAGES = 1_281_167
# (first epoch, image size, global batch) of each stage, and the epoch the run ends.
STAGES = ((0, 128, 4096), (14, 224, 1792), (32, 288, 1024))
END_EPOCH = 35
# (epoch, LR from then on) after the 0-5 warmup from 1.0 to 2.0.
LR_PHASES = ((5, 1.0), (14, 224 / 512), (16, 0.1 * 224 / 512), (27, 0.01 * 224 / 512),
             (32, 0.01 * 128 / 512), (33, 0.001 * 128 / 512))
PEAK = 2.0


def epoch_step(epoch: float, stages=STAGES) -> int:
  """The train step at which `epoch` starts, with each stage's own batch size."""
  step = 0
  for (start, _, batch), nxt in zip(stages, [*stages[1:], (math.inf,)]):
    step += math.ceil((min(epoch, nxt[0]) - start) * IMAGES / batch) if epoch > start else 0
  return step


def get_config(arg=None):
  """The recipe; `arg="runlocal"` shrinks it to run on a CPU (two stages)."""
  runlocal = presets.is_runlocal(arg)
  c = base_config()
  c.model.name = "resnet50"
  c.model.zero_init_last_bn = True
  presets.imagenet(c.data, train_size=128, eval_size=288)
  c.train.stages = tuple((epoch_step(e), size, batch) for e, size, batch in STAGES)
  c.train.batch_size = STAGES[0][2]
  c.train.num_steps = epoch_step(END_EPOCH)
  c.optimizer.name = "momentum"
  c.optimizer.momentum = 0.9
  c.optimizer.learning_rate = PEAK
  c.optimizer.l2 = 5e-5  # default mask: kernels only (no BN or bias decay)
  c.optimizer.schedule.name = "piecewise"
  c.optimizer.schedule.warmup_steps = epoch_step(5)
  c.optimizer.schedule.warmup_init_fraction = 0.5  # 1.0 -> 2.0
  lrs = [PEAK] + [lr for _, lr in LR_PHASES]
  c.optimizer.schedule.boundaries = tuple(epoch_step(e) for e, _ in LR_PHASES)
  c.optimizer.schedule.scales = tuple(b / a for a, b in zip(lrs, lrs[1:]))
  c.train.log_every = 100
  c.train.eval_every = 0
  c.checkpoint.every = 1000
  c.precision.compute_dtype = "bfloat16"
  if runlocal:
    presets.synthetic_images(c.data, 32, num_examples=256, stored_size=40)
    presets.cpu_resnet(c.model)
    c.data.train_transforms = "random_resized_crop(32)|flip|normalize"
    c.data.eval_transforms = "center_crop(40, crop_ratio=1.0)|normalize"
    c.train.stages = ((0, 24, 32), (4, 32, 16))  # 24px at batch 32, then 32px at 16
    c.train.batch_size, c.train.num_steps = 32, 8
    c.train.log_every, c.checkpoint.every = 4, 0
    c.optimizer.schedule.warmup_steps = 2
    c.optimizer.schedule.boundaries = (3, 4, 5, 6, 7, 8)
    c.precision.compute_dtype = "float32"
  return c
