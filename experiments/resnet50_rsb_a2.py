"""ResNet-50 "ResNet strikes back" procedure A2 (300 epochs, 79.8% top-1).

Source. Wightman, Touvron & Jegou 2021, arXiv 2110.00476, Table 1, column A2: A1
(see `resnet50_rsb_a1.py` for the whole table) for 300 epochs with weight decay
0.02, no label smoothing and mixup 0.1.

    jaxtrain train --config=experiments/resnet50_rsb_a2.py --workdir=gs://B/rsb_a2
    jaxtrain train --config=experiments/resnet50_rsb_a2.py:runlocal --workdir=/tmp/rsb2
"""
import os

from jaxtrain import config as config_lib
from jaxtrain import presets

A1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet50_rsb_a1.py")


def get_config(arg=None):
  """Procedure A2; `arg="runlocal"` shrinks it to run on a CPU."""
  return config_lib.load_module(A1).procedure(
      epochs=300, lr=5e-3, weight_decay=0.02, train_size=224, label_smoothing=0.0,
      ra_magnitude=7, mixup=0.1, drop_path=0.05, repeated_aug=True,
      runlocal=presets.is_runlocal(arg))
