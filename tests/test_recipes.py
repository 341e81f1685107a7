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
from jaxtrain import presets


def _load(spec):
  """The recipe's config, validated as shipped (a ConfigDict: tests derive from it)."""
  config = config_lib.load(f"experiments/{spec}")
  config_lib.validate(config)
  return config


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


IMAGENET = 1_281_167


def _epoch_steps(batch, *epochs):
  return [math.ceil(e * IMAGENET / batch) for e in epochs]


# Goyal et al. 2017: batch 8192 (256 workers x 32), SGD momentum 0.9, weight decay 1e-4
# not on BN, LR 0.1 x 8192/256 = 3.2 reached by a linear warmup from 0.1 over 5
# epochs, divided by 10 at epochs 30, 60, 80; 90 epochs; zero-init last BN gamma.
def test_goyal_recipe_is_the_papers():
  c = _load("resnet50_imagenet_goyal.py")
  assert (c.model.name, c.model.zero_init_last_bn) == ("resnet50", True)
  assert (c.train.batch_size, c.train.num_epochs) == (8192, 90)
  assert (c.optimizer.momentum, c.optimizer.l2, c.optimizer.weight_decay_mask) == (
      0.9, 1e-4, "")  # "": kernels only (ndim > 1), so no BN decay
  warm, e30, e60, e80 = _epoch_steps(8192, 5, 30, 60, 80)
  c.train.num_steps, c.train.num_epochs = _epoch_steps(8192, 90)[0], 0.0
  got = _lr(c, [0, warm // 2, warm, e30 - 1, e30, e60, e80])
  np.testing.assert_allclose(got, [0.1, 0.1 + 3.1 * (warm // 2) / warm, 3.2, 3.2,
                                   0.32, 0.032, 0.0032], rtol=1e-5)


# The lectures' practical recipe: SGD momentum 0.9, weight decay 5e-5 on weights only,
# peak LR 0.1 x batch/256, 5 warmup epochs from 0.01x to 1x the peak, then 100 epochs
# of half-period cosine to 0.001x the peak.
def test_practical_recipe_warms_up_then_cosine_decays():
  c = _load("resnet50_imagenet_practical.py")
  batch = c.train.batch_size
  peak = 0.1 * batch / 256
  assert (c.optimizer.momentum, c.optimizer.l2, c.train.num_epochs) == (0.9, 5e-5, 105)
  warm, total = _epoch_steps(batch, 5, 105)
  c.train.num_steps, c.train.num_epochs = total, 0.0
  t = np.array([warm, (warm + total) // 2, total])
  cosine = 0.001 * peak + (peak - 0.001 * peak) * 0.5 * (
      1 + np.cos(np.pi * (t - warm) / (total - warm)))
  np.testing.assert_allclose(_lr(c, [0, *t]), [0.01 * peak, *cosine], rtol=1e-4)


# Wightman et al. 2021 ("ResNet strikes back"), Table 1.
RSB = {  # epochs, LR, wd, train res, label smoothing, RA magnitude, mixup, drop path, RA
    "a1": (600, 5e-3, 0.01, 224, 0.1, 7, 0.2, 0.05, True),
    "a2": (300, 5e-3, 0.02, 224, 0.0, 7, 0.1, 0.05, True),
    "a3": (100, 8e-3, 0.02, 160, 0.0, 6, 0.1, 0.0, False),
}


@pytest.mark.parametrize("proc", sorted(RSB))
def test_rsb_procedures_follow_table_1(proc):
  epochs, lr, wd, res, ls, ra, mixup, dp, repeated = RSB[proc]
  c = _load(f"resnet50_rsb_{proc}.py")
  assert (c.optimizer.name, c.train.batch_size, c.train.num_epochs) == ("lamb", 2048, epochs)
  assert (c.optimizer.learning_rate, c.optimizer.weight_decay) == (lr, wd)
  assert (c.loss.name, c.loss.label_smoothing) == ("sigmoid_binary_cross_entropy", ls)
  assert (c.model.drop_path_rate, c.data.aug_repeats > 1) == (dp, repeated)
  train = c.data.train_transforms
  assert f"random_resized_crop({res})" in train and f"randaugment(2, {ra}, 0.5)" in train
  assert f"mixup(alpha={mixup})" in train and "cutmix(alpha=1.0)" in train
  assert "center_crop(224, crop_ratio=0.95)" in c.data.eval_transforms
  assert c.optimizer.schedule.name == "warmup_cosine"
  assert c.optimizer.schedule.warmup_steps == _epoch_steps(2048, 5)[0]


# fast.ai imagenet18 `one_machine`: 128 px at batch 8 x 512 for epochs 0-14, 224 px at
# 8 x 224 for 14-32, 288 px at 8 x 128 for 32-35; LR 1 -> 2 over epochs 0-5, then 1,
# 224/512 from 14, /10 at 16, /100 at 27, 0.01 x 128/512 from 32, /10 from 33.
def test_progressive_recipe_stages_and_lr_follow_imagenet18():
  c = _load("resnet50_imagenet_progressive.py")
  s14 = _epoch_steps(4096, 14)[0]
  s32 = s14 + _epoch_steps(1792, 18)[0]
  end = s32 + _epoch_steps(1024, 3)[0]
  assert tuple(map(tuple, c.train.stages)) == ((0, 128, 4096), (s14, 224, 1792),
                                              (s32, 288, 1024))
  assert c.train.num_steps == end
  s5 = _epoch_steps(4096, 5)[0]
  s16, s27 = (s14 + x for x in _epoch_steps(1792, 2, 13))
  s33 = s32 + _epoch_steps(1024, 1)[0]
  got = _lr(c, [0, s5 - 1, s5, s14, s16, s27, s32, s33, end - 1])
  r = 224 / 512
  want = [1.0, 1.0 + (s5 - 1) / s5, 1.0, r, r / 10, r / 100, 0.01 / 4, 0.001 / 4,
          0.001 / 4]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert "center_crop(288" in c.data.eval_transforms


# CRD (Tian et al. 2019) Table 3 setting: ResNet-34 teacher -> ResNet-18 student,
# torchvision schedule; Hinton et al. KD at T = 4, soft weight 0.9.
def test_distill_recipe_is_resnet34_to_resnet18_at_temperature_4():
  c = _load("resnet50_imagenet_distill.py")
  assert (c.model.name, c.distill.teacher_model.name) == ("resnet18", "resnet34")
  assert (c.loss.name, c.loss.temperature, c.loss.weight) == ("distillation", 4.0, 0.9)
  assert (c.train.batch_size, c.train.num_epochs) == (256, 90)
  teacher = _load("resnet50_imagenet_distill.py:teacher")
  assert (teacher.model.name, teacher.loss.name) == ("resnet34", "softmax_cross_entropy")


def test_distill_runlocal_trains_a_teacher_then_its_student(tmp_path):
  runner.train(_load("resnet50_imagenet_distill.py:runlocal"), str(tmp_path / "t"))
  c = _load("resnet50_imagenet_distill.py:runlocal_student")
  c.distill.teacher_workdir = str(tmp_path / "t")
  result = runner.train(c, str(tmp_path / "s"))
  assert int(result.state.step) == c.train.num_steps
  assert np.isfinite(result.metrics["train/loss"])


@pytest.mark.parametrize("spec", [
    "cifar10_resnet.py:runlocal", "cifar10_wrn.py:runlocal",
    "resnet50_imagenet_goyal.py:runlocal", "resnet50_imagenet_practical.py:runlocal",
    "resnet50_rsb_a1.py:runlocal",
    "resnet50_imagenet_progressive.py:runlocal"])
def test_recipe_runlocal_trains_end_to_end(spec, tmp_path):
  c = _load(spec)
  result = runner.train(c, str(tmp_path))
  assert int(result.state.step) == c.train.num_steps
  assert np.isfinite(result.metrics["train/loss"])


@pytest.mark.parametrize("recipe", [
    "cifar10_wrn.py", "resnet50_imagenet_goyal.py", "resnet50_imagenet_practical.py",
    "resnet50_imagenet_progressive.py", "resnet50_imagenet_lars.py",
    "resnet50_rsb_a1.py", "resnet50_rsb_a2.py", "resnet50_rsb_a3.py",
    "scaling/resnet50_imagenet.py"])
def test_unknown_variant_names_the_only_one(recipe):
  with pytest.raises(ValueError, match=r"get_config\('runlcoal'\): the only "
                     r"variant is 'runlocal'"):
    config_lib.load(f"experiments/{recipe}:runlcoal")
