"""A field read only under a condition takes effect or is refused, never ignored.

`jaxtrain train` with `--config.train.num_steps=100` on an experiment that sets
`num_epochs` used to train the epochs' 674 steps without a word. Every such field
(see jaxtrain/unread_fields.py and jaxtrain/optim/unread_fields.py) is refused,
naming the field, the field that turns it off and the fix; a value given on the
command line is refused even when it equals the default.
"""
import os

import ml_collections
import pytest

from jaxtrain import cli
from jaxtrain import config as config_lib
from jaxtrain.config import base_config
from jaxtrain.errors import ConfigError
from jaxtrain.study import grid, lr_find

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "digits_cnn.py")
STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
RESNET_STUDY = os.path.join(ROOT, "experiments", "scaling", "resnet50_imagenet.py")

REFUSED = [
    # (overrides, the field refused, what the message says turns it off)
    (["--config.train.num_steps=100"], "train.num_steps", "train.num_epochs=30.0"),
    (["--config.train.num_steps=1000"], "train.num_steps", "train.num_epochs=30.0"),
    (["--config.optimizer.sign_decay=linear"], "optimizer.sign_decay",
     "optimizer.name='momentum'"),
    (["--config.optimizer.b1=0.5"], "optimizer.b1", "optimizer.name='momentum'"),
    (["--config.optimizer.schedule.div_factor=10.0"], "optimizer.schedule.div_factor",
     "optimizer.schedule.name='warmup_cosine'"),
    (["--config.optimizer.schedule.power=2.0"], "optimizer.schedule.power",
     "optimizer.schedule.name='warmup_cosine'"),
    (["--config.train.max_consecutive_skips=3"], "train.max_consecutive_skips",
     "train.on_nonfinite='halt'"),
    (["--config.train.ema_warmup_power=0.75"], "train.ema_warmup_power",
     "train.ema_decay=0.0"),
    (["--config.train.ema_decay=0.99", "--config.train.ema_warmup_gamma=2.0"],
     "train.ema_warmup_gamma", "train.ema_warmup_power=0"),
    (["--config.train.early_stopping.patience=3"], "train.early_stopping.patience",
     "train.early_stopping.metric=''"),
    (["--config.data.synthetic.num_examples=64"], "data.synthetic.num_examples",
     "data.source='tfds'"),
    (["--config.data.source=arrays", "--config.data.image_key=img"],
     "data.image_key", "data.source='arrays'"),
    (["--config.distill.teacher_step=3"], "distill.teacher_step",
     "distill.teacher_workdir"),
    (["--config.model.bn_momentum=0.5"], "model.bn_momentum", "model.use_bn=False"),
    (["--config.model.name=resnet18", "--config.model.norm_groups=8"],
     "model.norm_groups", "model.normalization='batch'"),
    (["--config.model.name=resnet18", "--config.model.normalization=layer",
      "--config.model.bn_group_size=2"], "model.bn_group_size",
     "model.normalization='layer'"),
]


@pytest.mark.parametrize("overrides,field,cause", REFUSED,
                         ids=[f"{r[1]}-{i}" for i, r in enumerate(REFUSED)])
def test_unread_field_given_on_the_command_line_is_refused(overrides, field, cause,
                                                           tmp_path, capsys):
  code = cli.main(["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
                   *overrides])
  err = capsys.readouterr().err
  assert code == 2, err
  assert len(err.strip().splitlines()) == 1, err
  assert f"config.{field}=" in err and "not used" in err and cause in err, err
  assert not os.path.exists(tmp_path / "checkpoints")


def test_the_issue_case_names_both_fields_and_the_fix(tmp_path, capsys):
  assert cli.main(["train", f"--config={DIGITS}", f"--workdir={tmp_path}",
                   "--config.train.num_steps=100"]) == 2
  err = capsys.readouterr().err
  assert ("config.train.num_steps=100: not used: train.num_epochs=30.0 > 0 sets "
          "the run length instead") in err
  assert "--config.train.num_epochs=0" in err
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    assert err.strip() in f.read()  # the README shows the message as it is


def test_fields_that_apply_are_accepted():
  # The README's command: num_steps counts once num_epochs is 0.
  c = cli.load_config(DIGITS, ["train.num_steps=2000", "train.num_epochs=0"])
  assert (c.train.num_steps, c.train.num_epochs) == (2000, 0)
  cli.load_config(DIGITS, ["optimizer.name=addsign", "optimizer.sign_decay=linear"])
  cli.load_config(DIGITS, ["train.on_nonfinite=skip", "train.max_consecutive_skips=3"])
  cli.load_config(DIGITS, ["model.use_bn=True", "model.bn_momentum=0.5"])
  cli.load_config(DIGITS, ["model.name=resnet18", "model.normalization=group",
                           "model.norm_groups=8"])
  # A recipe prepares its synthetic stand-in for --config.data.source=synthetic.
  study = grid.load(RESNET_STUDY, ["data.source=synthetic"])
  assert study.data.synthetic.num_examples == 1_281_167
  grid.load(RESNET_STUDY, [])


def test_an_experiment_file_setting_an_unread_field_is_refused():
  c = config_lib.load(DIGITS)
  c.optimizer.nesterov = True
  config_lib.validate(c)  # momentum reads it
  c.optimizer.name = "adam"
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert e.value.field == "optimizer.nesterov"
  assert "optimizer.name='adam' does not read it" in str(e.value)
  c = config_lib.load(DIGITS)
  c.train.num_steps = 500  # the experiment sets num_epochs=30
  with pytest.raises(ConfigError, match="train.num_epochs=30.0"):
    config_lib.validate(c)


def _study(**labels):
  c = base_config()
  c.data.source = "arrays"
  c.optimizer.schedule.name = "constant"
  c.optimizer.nesterov = True  # read by the experiment's momentum only
  c.study = grid.study_defaults()
  c.study.batch_sizes = (32,)
  c.study.optimizers = ("momentum", "adam", *labels)
  c.study.optimizer_configs = ml_collections.ConfigDict(labels)
  return c


def test_sweep_trials_of_another_optimizer_drop_the_experiments_unread_fields():
  trials = {t.optimizer: t for t in grid.make_trials(_study(), 1000)}
  assert trials["momentum"].config.optimizer.nesterov is True
  assert trials["adam"].config.optimizer.nesterov is False
  experiment, study = grid.split(_study())  # what the sweep logs for each label
  assert grid.dropped_fields(experiment, study, "adam") == ["optimizer.nesterov=True"]
  assert grid.dropped_fields(experiment, study, "momentum") == []
  # A field a study's own optimizer config sets is the user's: refused if unread.
  with pytest.raises(ConfigError) as e:
    grid.make_trials(_study(fast=dict(name="sgd", momentum=0.5)), 1000)
  assert e.value.field == "optimizer.momentum" and "'sgd'" in str(e.value)


def test_an_optimizer_field_every_study_optimizer_overrides_is_refused():
  with pytest.raises(ConfigError) as e:
    grid.load(STUDY, ["optimizer.momentum=0.95", "study.optimizers=('momentum',)"])
  assert e.value.field == "optimizer.momentum"
  assert "study.optimizer_configs" in str(e.value)
  # Read by the momentum trials of the default study (lars sets its own).
  grid.load(STUDY, ["optimizer.nesterov=True"])


@pytest.mark.parametrize("overrides,field", [
    (["study.lr_rule=linear", "study.lr_grid=(0.5, 1.0)"], "study.lr_grid"),
    (["study.eval_every=10", "study.eval_every_epochs=0.5"], "study.eval_every_epochs"),
    (["study.vectorize=False", "study.max_trials_per_group=4"],
     "study.max_trials_per_group"),
])
def test_unread_study_fields_are_refused(overrides, field):
  with pytest.raises(ConfigError) as e:
    grid.load(STUDY, overrides)
  assert e.value.field == field and "not used" in str(e.value)


def test_lr_find_on_another_optimizer_drops_the_experiments_unread_fields(capsys):
  c = config_lib.load(DIGITS)
  c.optimizer.nesterov, c.optimizer.schedule.name = True, "polynomial"
  c.optimizer.schedule.power = 2.0
  test = lr_find.range_config(c, 1e-4, 1.0, 10, optimizer="adam")
  assert ("lr-find: optimizer 'adam' does not read optimizer.nesterov=True; the test "
          "uses its defaults there") in capsys.readouterr().out
  assert test.optimizer.nesterov is False
  assert test.optimizer.schedule.power == 1.0  # the test's exponential schedule
  config_lib.validate(test)
