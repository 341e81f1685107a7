"""The digits CNN trained with LARS (You et al. 2017, arXiv 1708.03888; TPU/MLPerf form, BN and biases excluded).

    jaxtrain train --config=experiments/digits_lars.py --workdir=/tmp/digits_lars

Same model, data and schedule as experiments/digits_cnn.py; only the optimizer
differs; tests/test_optimizer_experiments.py checks it reaches >= 97% test accuracy.
"""
import os

from jaxtrain.config import load


def get_config(arg=None):
  del arg
  c = load(os.path.join(os.path.dirname(__file__), "digits_cnn.py"))
  c.optimizer.name = "lars"
  c.optimizer.learning_rate = 5.0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.trust_coefficient = 0.001
  c.train.diagnostics = True  # update norms and LARS trust ratios (README)
  return c
