"""Study (a): steps to 97% test accuracy vs batch size on the bundled digits.

    jaxtrain sweep --config=experiments/scaling/digits_cnn.py --workdir=/tmp/digits
    jaxtrain report /tmp/digits

SGD, momentum, LARS and Adam at batch sizes 8 ... 1024 (the train split has 1,437
examples), each with a 5-point learning-rate grid per batch size around the
square-root rule, with and without one epoch of gradual warmup (Goyal et al. 2017,
arXiv 1706.02677): 320 trials, the best per (batch size, optimizer) being the one with
the fewest steps to the target (Shallue et al. 2018, arXiv 1811.03600). LARS: You et
al. 2017, arXiv 1708.03888. The learning rates below are the grids' centres at batch
64, from a coarse sweep (4x-spaced grids at batch sizes 8, 64 and 512). The model is
the registry's `cnn` with one 16-channel convolution, small enough for the whole
study to run on 2 CPU cores in 5-20 minutes (depending on load; the results are
deterministic).

`:small` is the notebook's reduced study (fewer batch sizes and learning rates).
"""
import ml_collections

from jaxtrain.config import base_config
from jaxtrain.study.grid import study_defaults


def get_config(arg=None):
  c = base_config()
  c.seed = 0
  c.data.source = "arrays"  # the bundled digits in memory (same rows as TFDS)
  c.model.name = "cnn"
  c.model.features = (16,)
  c.model.hidden = 64
  c.model.dropout_rate = 0.0
  c.optimizer.schedule.name = "constant"  # after warmup: steps-to-target needs no
                                          # decay tied to a budget
  c.train.eval_batch_size = 360  # the whole test split in one batch
  c.checkpoint.every = 0
  c.train.diagnostics = True  # update norms, trust ratios, noise scale (README)

  s = study_defaults()
  s.batch_sizes = (8, 16, 32, 64, 128, 256, 512, 1024)
  s.optimizers = ("sgd", "momentum", "lars", "adam")
  s.optimizer_configs = ml_collections.ConfigDict(dict(
      sgd=dict(name="sgd", learning_rate=0.8),
      momentum=dict(name="momentum", learning_rate=0.1, momentum=0.9),
      lars=dict(name="lars", learning_rate=2.0, momentum=0.9, weight_decay=1e-4),
      adam=dict(name="adam", learning_rate=0.012),
  ))
  s.base_batch_size = 64      # the learning rates above are for batch 64
  s.lr_rule = "grid"
  s.lr_grid_center = "sqrt"
  s.lr_grid = (0.25, 0.5, 1.0, 2.0, 4.0)
  s.warmup_epochs = (0.0, 1.0)
  s.target = "eval/accuracy >= 0.97"
  s.eval_every_epochs = 0.1
  s.max_steps = 3000
  s.max_epochs = 40.0
  c.study = s
  if arg == "small":  # notebooks/large_batch_scaling.ipynb: ~4 minutes here
    s.batch_sizes = (8, 32, 128, 512)
    s.lr_grid = (0.5, 1.0, 2.0)
    s.warmup_epochs = (0.0,)
    s.max_steps = 1500
  elif arg:
    raise ValueError(f"get_config({arg!r}): the only variant is 'small'")
  return c
