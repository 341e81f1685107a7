"""ResNet-50 "ResNet strikes back" procedure A3 (100 epochs, 78.1% top-1).

Source. Wightman, Touvron & Jegou 2021, arXiv 2110.00476, Table 1, column A3: A1
(see `resnet50_rsb_a1.py` for the whole table) for 100 epochs at LR 8e-3, weight
decay 0.02, training at 160x160 (tested at 224, crop ratio 0.95: FixRes), RandAugment
magnitude 6, mixup 0.1, no label smoothing, no stochastic depth, no repeated
augmentation.

    jaxtrain train --config=experiments/resnet50_rsb_a3.py --workdir=gs://B/rsb_a3
    jaxtrain train --config=experiments/resnet50_rsb_a3.py:runlocal --workdir=/tmp/rsb3
"""
import os

from jaxtrain import config as config_lib
from jaxtrain import presets

A1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet50_rsb_a1.py")


def get_config(arg=None):
  """Procedure A3; `arg="runlocal"` shrinks it to run on a CPU."""
  return config_lib.load_module(A1).procedure(
      epochs=100, lr=8e-3, weight_decay=0.02, train_size=160, label_smoothing=0.0,
      ra_magnitude=6, mixup=0.1, drop_path=0.0, repeated_aug=False,
      runlocal=presets.is_runlocal(arg))
