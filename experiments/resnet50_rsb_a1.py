"""ResNet-50 "ResNet strikes back" procedure A1 (600 epochs, 80.4% top-1).

Source. Wightman, Touvron & Jegou, "ResNet strikes back: An improved training
procedure in timm", 2021, arXiv 2110.00476, Table 1 (procedures A1, A2, A3):

                      A1          A2          A3
  epochs              600         300         100
  train / test res    224 / 224   224 / 224   160 / 224 (test crop ratio 0.95)
  batch               2048        2048        2048
  optimizer           LAMB        LAMB        LAMB
  LR                  5e-3        5e-3        8e-3     cosine, 5 warmup epochs
  weight decay        0.01        0.02        0.02
  loss                binary cross-entropy (all three)
  label smoothing     0.1         -           -
  RandAugment         7 / 0.5     7 / 0.5     6 / 0.5  (magnitude / std)
  mixup / cutmix      0.2 / 1.0   0.1 / 1.0   0.1 / 1.0
  stochastic depth    0.05        0.05        -
  repeated aug.       yes         yes         -
  top-1 (ImageNet)    80.4        79.8        78.1

Common to all: random-resized crop + flip, no dropout, no EMA, no gradient clipping,
mixed precision (bfloat16 here). `resnet50_rsb_a2.py` and `_a3.py` start from this file
(`procedure(...)`) and change the columns that differ.

Different here: timm's RandAugment ("rand-m7-mstd0.5-inc1") samples from timm's op
list and applies each op with probability 0.5; ours samples the paper's 14 ops
(Cubuk et al. 2019) at a level drawn from N(m, std). Repeated augmentation uses 3
copies (timm's RASampler default).

    jaxtrain train --config=experiments/resnet50_rsb_a1.py --workdir=gs://B/rsb_a1
    jaxtrain train --config=experiments/resnet50_rsb_a1.py:runlocal --workdir=/tmp/rsb

`runlocal`: the same procedure with a ResNet-18 of width 16 on synthetic 32px images.
"""
import math

from jaxtrain.config import base_config
from jaxtrain import presets

IMAGES = 1_281_167
BATCH = 2048


def procedure(epochs: int, lr: float, weight_decay: float, train_size: int,
              label_smoothing: float, ra_magnitude: int, mixup: float,
              drop_path: float, repeated_aug: bool, runlocal: bool):
  """One column of the paper's Table 1 as a jaxtrain config."""
  c = base_config()
  c.model.name = "resnet50"
  c.model.drop_path_rate = drop_path
  presets.imagenet(c.data, train_size=train_size, eval_size=224, crop_ratio=0.95)
  ra = f"randaugment(2, {ra_magnitude}, 0.5)"
  c.data.train_transforms = (f"decode|random_resized_crop({train_size})|flip|{ra}|"
                             f"normalize|mixup(alpha={mixup})|cutmix(alpha=1.0)")
  c.data.aug_repeats = 3 if repeated_aug else 1
  c.loss.name = "sigmoid_binary_cross_entropy"
  c.loss.label_smoothing = label_smoothing
  c.optimizer.name = "lamb"
  c.optimizer.learning_rate = lr
  c.optimizer.weight_decay = weight_decay  # default mask: no decay on BN, biases
  c.optimizer.schedule.name = "warmup_cosine"
  c.optimizer.schedule.warmup_steps = math.ceil(5 * IMAGES / BATCH)
  c.train.batch_size = BATCH
  c.train.num_epochs = float(epochs)
  c.train.log_every = 100
  c.train.eval_every = math.ceil(10 * IMAGES / BATCH)
  c.checkpoint.every = c.train.eval_every
  c.precision.compute_dtype = "bfloat16"
  if runlocal:
    _runlocal(c, ra, mixup)
  return c


def _runlocal(c, ra: str, mixup: float) -> None:
  presets.synthetic_images(c.data, 32, num_examples=64, stored_size=40)
  presets.cpu_resnet(c.model)
  c.data.train_transforms = (f"random_resized_crop(32)|flip|{ra}|normalize|"
                             f"mixup(alpha={mixup})|cutmix(alpha=1.0)")
  c.data.eval_transforms = "center_crop(32, crop_ratio=0.95)|normalize"
  c.train.batch_size = 24  # 8 examples x 3 repeated-augmentation copies (A1, A2)
  c.train.num_epochs = 0.0
  c.train.num_steps = 6
  c.train.log_every, c.train.eval_every, c.checkpoint.every = 3, 0, 0
  c.optimizer.schedule.warmup_steps = 2
  c.precision.compute_dtype = "float32"


def get_config(arg=None):
  """Procedure A1; `arg="runlocal"` shrinks it to run on a CPU."""
  return procedure(epochs=600, lr=5e-3, weight_decay=0.01, train_size=224,
                   label_smoothing=0.1, ra_magnitude=7, mixup=0.2, drop_path=0.05,
                   repeated_aug=True, runlocal=presets.is_runlocal(arg))
