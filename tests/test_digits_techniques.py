"""experiments/digits_mixup.py: each variant's train batches carry its soft targets
(label smoothing: the loss's, set in loss.label_smoothing).

The training figures of these variants are measured by
`benchmarks/digits_techniques.py`; here only the wiring: config -> source -> batch.
"""
import jax
import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain import runner
from jaxtrain.data import pipeline

NUM_CLASSES, EPS = 10, 0.1


def _first_batch(variant):
  config = config_lib.load(f"experiments/digits_mixup.py:{variant}")
  exp = runner.build(config, jax.devices()[:1])
  it = pipeline.train_iterator(exp.train_source, config.train.batch_size,
                               config.seed, plan=exp.plan)
  batch = next(it)
  it.close()
  return batch


@pytest.mark.parametrize("variant", ["mixup", "cutmix", "mixup_cutmix"])
def test_mixing_variants_mix_the_labels_of_each_pair(variant):
  batch = _first_batch(variant)
  targets, one_hot = batch["targets"], np.eye(NUM_CLASSES)[batch["label"]]
  np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
  # Pair (2j, 2j+1) shares one lam: lam*e_a + (1-lam)*e_b and lam*e_b + (1-lam)*e_a
  # (Zhang et al. 2017; Yun et al. 2019), so each pair's targets add to e_a + e_b.
  np.testing.assert_allclose(targets[0::2] + targets[1::2],
                             one_hot[0::2] + one_hot[1::2], atol=1e-6)
  own = targets[np.arange(len(targets)), batch["label"]]
  assert np.mean(own < 1 - 1e-6) > 0.2  # most pairs really mixed


def test_label_smoothing_variant_smooths_as_szegedy_et_al():
  from jaxtrain import losses  # pylint: disable=g-import-not-at-top
  batch = _first_batch("label_smoothing")
  assert "targets" not in batch  # hard labels: the loss smooths them
  config = config_lib.load("experiments/digits_mixup.py:label_smoothing")
  loss = losses.from_config(config)
  logits = np.random.default_rng(0).normal(size=(len(batch["label"]), NUM_CLASSES))
  expected = (1 - EPS) * np.eye(NUM_CLASSES)[batch["label"]] + EPS / NUM_CLASSES
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss(logits.astype(np.float32), batch),
                             -(expected * log_p).sum(-1), rtol=1e-5)


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="mixup_cutmix"):
    config_lib.load("experiments/digits_mixup.py:mixip")
