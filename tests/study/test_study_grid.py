"""Study configs: validation naming fields, overrides, trials, groups."""
import math
import os

import ml_collections
import pytest

from jaxtrain.config import base_config
from jaxtrain.errors import ConfigError
from jaxtrain.study import grid, vectorized

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
RESNET = os.path.join(ROOT, "experiments", "scaling", "resnet50_imagenet.py")


def _study(**fields):
  c = base_config()
  c.data.source = "arrays"
  c.optimizer.schedule.name = "constant"
  s = grid.study_defaults()
  s.optimizers = ("sgd", "fast")
  s.optimizer_configs = ml_collections.ConfigDict(dict(
      fast=dict(name="momentum", learning_rate=0.05, momentum=0.8)))
  s.base_batch_size = 32
  for k, v in fields.items():
    s[k] = v
  c.study = s
  return c


def test_linear_and_sqrt_rules_scale_the_tuned_learning_rate():
  c = _study(batch_sizes=(8, 128), lr_rule="linear")
  lrs = {(t.optimizer, t.batch_size): t.learning_rate
         for t in grid.make_trials(c, 1000)}
  assert lrs[("fast", 8)] == pytest.approx(0.05 * 8 / 32)
  assert lrs[("fast", 128)] == pytest.approx(0.05 * 4)
  assert lrs[("sgd", 128)] == pytest.approx(0.1 * 4)  # base config's LR
  c.study.lr_rule = "sqrt"
  lrs = {(t.optimizer, t.batch_size): t.learning_rate
         for t in grid.make_trials(c, 1000)}
  assert lrs[("fast", 128)] == pytest.approx(0.05 * 2)


def test_grid_rule_tries_every_multiplier_around_the_centre():
  c = _study(batch_sizes=(128,), optimizers=("fast",), lr_rule="grid",
             lr_grid=(0.5, 1.0, 2.0), lr_grid_center="sqrt", seeds=(0, 1),
             warmup_epochs=(0.0, 2.0))
  trials = grid.make_trials(c, 1000)
  assert len(trials) == 3 * 2 * 2
  assert sorted({t.learning_rate for t in trials}) == pytest.approx(
      [0.05, 0.1, 0.2])
  assert sorted({t.warmup_steps for t in trials}) == [0, round(2 * 1000 / 128)]


def test_trial_config_is_a_plain_experiment_config():
  c = _study(batch_sizes=(64,), optimizers=("fast",), momentum=(0.5,),
             weight_decay=(1e-3,), max_steps=500, max_epochs=4.0,
             eval_every=0, eval_every_epochs=0.5)
  (t,) = grid.make_trials(c, 1000)
  assert t.num_steps == math.ceil(4 * 1000 / 64) and t.eval_every == round(500 / 64)
  cfg = t.config
  assert "study" not in cfg
  assert (cfg.train.batch_size, cfg.train.num_steps) == (64, t.num_steps)
  assert cfg.optimizer.name == "momentum" and cfg.optimizer.momentum == 0.5
  assert cfg.optimizer.weight_decay == 1e-3 and cfg.train.eval_every == t.eval_every
  assert t.id.startswith("b64-fast-lr0.1-w0-s0-m0.5-wd0.001-")  # linear rule


def test_ids_change_with_the_experiment_config():
  a = grid.make_trials(_study(batch_sizes=(8,)), 100)
  c = _study(batch_sizes=(8,))
  c.model.hidden = 17
  assert {t.id for t in a}.isdisjoint({t.id for t in grid.make_trials(c, 100)})


def test_ids_ignore_where_programs_are_cached():
  a = grid.make_trials(_study(batch_sizes=(8,)), 100)
  c = _study(batch_sizes=(8,))
  c.train.compilation_cache_dir = "/shared/cache"
  assert [t.id for t in a] == [t.id for t in grid.make_trials(c, 100)]


@pytest.mark.parametrize("field,value", [
    ("batch_sizes", ()), ("batch_sizes", (8, 0)), ("lr_rule", "cubic"),
    ("lr_grid", (1.0, -2.0)), ("seeds", (0.5,)), ("eval_every", -1),
    ("target", "accuracy >= 1"), ("max_steps", 0), ("momentum", (1.5,)),
    ("optimizers", ("sgd", "bogus"))])
def test_bad_study_fields_are_named(field, value):
  with pytest.raises(ConfigError) as e:
    grid.validate_study(_study(**{field: value}).study)
  assert e.value.field == f"study.{field}"


def test_unknown_keys_are_named_with_a_suggestion():
  c = _study()
  c.study.optimizer_configs.fast.learnig_rate = 1.0
  with pytest.raises(ConfigError, match="learning_rate") as e:
    grid.validate_study(c.study)
  assert e.value.field == "study.optimizer_configs.fast.learnig_rate"


def test_command_line_overrides_reach_the_study_section():
  config = grid.load(DIGITS, ["study.batch_sizes=(8, 16)", "study.seeds=(3,)",
                              "study.optimizer_configs.adam.learning_rate=0.01"])
  assert config.study.batch_sizes == (8, 16) and config.study.seeds == (3,)
  assert config.study.optimizer_configs.adam.learning_rate == 0.01
  with pytest.raises(ConfigError, match="did you mean 'batch_sizes'"):
    grid.load(DIGITS, ["study.batch_size=(8,)"])
  with pytest.raises(ConfigError) as e:
    grid.load(DIGITS, ["study.lr_rule=cubic"])
  assert e.value.field == "study.lr_rule"


def test_resnet_study_takes_synthetic_data_from_the_command_line():
  config = grid.load(RESNET, ["data.source=synthetic"])
  assert config.data.source == "synthetic"
  trials = grid.make_trials(config, 1_281_167)
  assert {t.batch_size for t in trials} >= {1024, 65536}
  assert {t.optimizer for t in trials} == {"momentum", "lars"}


def test_groups_join_trials_differing_only_in_hyperparameters():
  c = _study(batch_sizes=(8, 16), optimizers=("fast",), lr_rule="grid",
             lr_grid=(0.5, 1.0), seeds=(0, 1), weight_decay=(0.0, 1e-4))
  trials = grid.make_trials(c, 100)
  groups = grid.groups(trials, 16, lambda t: True)
  assert [len(g) for g in groups] == [8, 8]
  assert all(len({t.batch_size for t in g}) == 1 for g in groups)
  assert [len(g) for g in grid.groups(trials, 3, lambda t: True)] == [3, 3, 2] * 2
  assert [len(g) for g in grid.groups(trials, 16, lambda t: False)] == [1] * 16


def test_vectorized_chain_covers_the_study_optimizers_only():
  assert vectorized.supports(ml_collections.ConfigDict(dict(name="lars")))
  assert not vectorized.supports(ml_collections.ConfigDict(dict(name="addsign")))
  mlperf = ml_collections.ConfigDict(dict(
      name="lars", schedule=dict(name="mlperf_polynomial")))
  assert not vectorized.supports(mlperf)


def test_trials_with_a_teacher_run_one_by_one():
  c = base_config()
  c.optimizer.name = "momentum"
  c.train.ema_decay = 0.999  # studies evaluate the raw weights: no obstacle
  assert vectorized.supports_trial(c)
  c.loss.name = "distillation"
  assert not vectorized.supports_trial(c)
