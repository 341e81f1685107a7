"""Recipe experiment modules against their papers' published settings, restated here.

Each value below is copied from the paper (or its authors' code) named in the
comment, not read back from the experiment file; each recipe's `runlocal` variant
trains end to end on synthetic data.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain import optim, runner
from jaxtrain.data import presets


def _load(spec):
  return config_lib.validate(config_lib.load(f"experiments/{spec}"))


def _lr(config, steps):
  tx_lr = optim.build(config.optimizer, _total_steps(config), config.train.batch_size)[1]
  return np.array([float(tx_lr(s)) for s in steps])


def _total_steps(config, train_images=None):
  if config.train.num_epochs:
    return math.ceil(config.train.num_epochs * train_images / config.train.batch_size)
  return config.train.num_steps


# He et al. 2015, sec. 4.2: batch 128, SGD momentum 0.9, weight decay 1e-4, LR 0.1
# divided by 10 at 32k and 48k iterations, 64k iterations; pad 4 + crop 32 + flip.
@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar10_resnet_is_he_et_al_section_4_2(depth):
  c = _load(f"cifar10_resnet.py:{depth}")
  assert (c.model.name, c.model.depth) == ("cifar_resnet", depth)
  assert (c.data.name, c.train.batch_size, c.train.num_steps) == ("cifar10", 128, 64_000)
  assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.l2) == ("momentum", 0.9, 1e-4)
  assert "random_crop(32, padding=4)|flip" in c.data.train_transforms
  np.testing.assert_allclose(_lr(c, [0, 31_999, 32_000, 47_999, 48_000, 63_999]),
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


# Zagoruyko & Komodakis 2016: WRN-28-10, dropout 0.3, Nesterov momentum 0.9, weight
# decay 5e-4, batch 128, LR 0.1 x 0.2 at epochs 60, 120, 160 of 200.
def test_cifar10_wrn_is_zagoruyko_komodakis():
  c = _load("cifar10_wrn.py")
  assert (c.model.name, c.model.depth, c.model.widen_factor, c.model.dropout_rate) == (
      "wide_resnet", 28, 10, 0.3)
  assert (c.optimizer.nesterov, c.optimizer.momentum, c.optimizer.l2) == (True, 0.9, 5e-4)
  assert (c.train.batch_size, c.train.num_epochs) == (128, 200)
  steps_per_epoch = 50_000 / 128
  epochs = np.array([0, 59.9, 60.1, 119.9, 120.1, 159.9, 160.1, 199.9])
  steps = np.ceil(epochs * steps_per_epoch).astype(int)
  c.train.num_steps = _total_steps(c, 50_000)
  c.train.num_epochs = 0.0
  np.testing.assert_allclose(_lr(c, steps), [0.1, 0.1, 0.02, 0.02, 0.004, 0.004,
                                             0.0008, 0.0008], rtol=1e-5)


def test_cifar_normalization_uses_the_fb_resnet_torch_statistics():
  # fb.resnet.torch / WRN meanstd preprocessing, 0..255 units.
  np.testing.assert_allclose(presets.CIFAR_MEAN, [125.3, 123.0, 113.9])
  np.testing.assert_allclose(presets.CIFAR_STD, [63.0, 62.1, 66.7])


@pytest.mark.parametrize("spec", ["cifar10_resnet.py:runlocal", "cifar10_wrn.py:runlocal"])
def test_recipe_runlocal_trains_end_to_end(spec, tmp_path):
  c = _load(spec)
  result = runner.train(c, str(tmp_path))
  assert int(result.state.step) == c.train.num_steps
  assert np.isfinite(result.metrics["train/loss"])
