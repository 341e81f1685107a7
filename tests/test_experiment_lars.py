"""experiments/resnet50_imagenet_lars.py against the published recipe, restated here.

Recipe (MLPerf Training v0.6, Google, tpu-v3-2048/run_and_time.sh and lars_util.py,
the code of Ying et al. 2018, arXiv 1811.06992): ResNet-50 v1.5, batch 32768, LARS
momentum 0.9 / trust 0.001 / epsilon 1e-5 / weight decay 1e-4 (plus 1e-4 L2 in the
loss), BN and biases excluded; LR 31.2 after 25 warmup epochs of 1,281,167 images,
then polynomial (power 2) decay to 1e-4 at step 2983; label smoothing 0.1; bfloat16;
batch-norm statistics over 128 images; Inception crop 224, flip, normalize.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain import optim, runner
from jaxtrain.optim_summary import abstract_params

PATH = "experiments/resnet50_imagenet_lars.py"
IMAGES, BATCH, PEAK, END, STEPS, WARMUP_EPOCHS = 1_281_167, 32768, 31.2, 1e-4, 2983, 25


def _tf_reference_lr(step: int) -> float:
  """lars_util.poly_rate_schedule, restated: epoch-based warmup, TF polynomial_decay."""
  epoch = step / (IMAGES / BATCH)
  w_steps = WARMUP_EPOCHS * IMAGES // BATCH
  if epoch <= WARMUP_EPOCHS:
    return PEAK * epoch / WARMUP_EPOCHS
  decay_steps = STEPS - w_steps + 1
  t = min(max(1, step - w_steps), decay_steps)
  return (PEAK - END) * (1 - t / decay_steps) ** 2 + END


@pytest.fixture(scope="module")
def full():
  return config_lib.validate(config_lib.load(PATH))


def test_hyperparameters_are_the_mlperf_v06_values(full):
  o = full.optimizer
  assert (full.train.batch_size, full.train.num_steps) == (BATCH, STEPS)
  assert (o.name, o.learning_rate, o.momentum) == ("lars", PEAK, 0.9)
  assert (o.trust_coefficient, o.eps, o.weight_decay, o.l2) == (0.001, 1e-5, 1e-4, 1e-4)
  assert full.loss.label_smoothing == 0.1
  assert full.precision.compute_dtype == "bfloat16"
  assert full.model.name == "resnet50" and full.model.zero_init_last_bn


def test_batch_norm_groups_span_128_images_on_a_1024_chip_v4_pod(full):
  per_replica = BATCH // 1024
  assert full.model.bn_group_size * per_replica == 128


def test_input_is_imagenet_with_inception_crop_flip_normalize(full):
  d = full.data
  assert (d.source, d.name, d.image_shape) == ("tfds", "imagenet2012", (224, 224, 3))
  assert d.train_transforms == "decode|random_resized_crop(224)|flip|normalize"
  assert "center_crop(224, crop_ratio=0.875)" in d.eval_transforms


def test_learning_rate_follows_the_reference_schedule(full):
  _, lr = optim.build(full.optimizer, full.train.num_steps)
  for step in (0, 1, 400, 977, 978, 1500, 2500, 2982, 2983):
    # 977 vs 977.4 warmup steps (epoch 25 exactly) moves the LR by < 0.05%.
    np.testing.assert_allclose(float(lr(step)), _tf_reference_lr(step), rtol=1e-3,
                               err_msg=f"step {step}")


def test_lars_skips_batch_norm_and_biases():
  c = config_lib.load(PATH)
  c.data.source = "synthetic"  # ImageNet is not here; shapes are what matter
  c.data.synthetic.image_shape = (224, 224, 3)
  c.data.train_transforms = c.data.eval_transforms = ""
  rows = optim.mask_summary(c.optimizer, abstract_params(c))
  assert sum(math.prod(r[1]) for r in rows) == 25_557_032  # ResNet-50 v1.5
  for path, shape, decay, trust, _, _ in rows:
    skipped = "bn" in path or path.endswith("bias")
    assert (decay, trust) == (not skipped, not skipped), path
    assert skipped == (len(shape) == 1), path


def test_runlocal_is_the_same_recipe_shrunk():
  full, local = config_lib.load(PATH), config_lib.load(PATH + ":runlocal")
  assert local.model.name == full.model.name
  assert local.optimizer.name == full.optimizer.name == "lars"
  assert local.data.source == "synthetic" and local.data.image_shape == (32, 32, 3)
  assert (local.train.batch_size, local.precision.compute_dtype) == (16, "float32")


@pytest.mark.slow
def test_runlocal_trains_end_to_end(tmp_path):
  config = config_lib.validate(config_lib.load(PATH + ":runlocal"))
  result = runner.train(config, str(tmp_path))
  assert int(result.state.step) == config.train.num_steps
  assert np.isfinite(result.metrics["train/loss"])
  assert 0.0 <= result.metrics["eval/accuracy"] <= 1.0
  params = jax.tree.leaves(result.state.params)
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in params)
