"""A config is validated once per run: `jaxtrain train` checks it in the CLI, and
neither `runner.build` nor `sources.get_source` checks it again (issue 17)."""
import os

import pytest

from jaxtrain import cli, config as config_lib, runner
from jaxtrain.data import sources
from jaxtrain.errors import ConfigError

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "digits_cnn.py")
BASE = ["--config.model.name=mlp", "--config.train.num_steps=2",
        "--config.train.num_epochs=0", "--config.checkpoint.every=0",
        "--config.train.eval_every=0", "--config.train.log_every=2",
        "--config.optimizer.schedule.warmup_steps=1"]


def _counted(monkeypatch, module, name) -> list:
  calls, real = [], getattr(module, name)

  def wrapper(*args, **kwargs):
    calls.append(args)
    return real(*args, **kwargs)
  monkeypatch.setattr(module, name, wrapper)
  return calls


def test_train_validates_the_config_once_and_each_source_once(tmp_path, monkeypatch):
  configs = _counted(monkeypatch, config_lib, "validate")
  data = _counted(monkeypatch, sources, "validate")
  splits = _counted(monkeypatch, sources, "get_source")
  assert cli.main(["train", f"--config={EXPERIMENT}", f"--workdir={tmp_path}",
                   *BASE]) == 0
  assert len(configs) == 1
  assert len(splits) >= 2  # train and eval split, both from the one data section
  assert len(data) == 1
  assert data[0][0] is configs[0][0].data


def test_a_config_changed_after_validation_is_checked_again():
  config = config_lib.load(EXPERIMENT)
  config_lib.validate(config)
  config.train.batch_size = 0
  with pytest.raises(ConfigError, match="config.train.batch_size=0"):
    runner.build(config)
  config = config_lib.load(EXPERIMENT)
  config_lib.validate(config)
  config.data.num_workers = -1
  with pytest.raises(ConfigError, match="config.data.num_workers=-1"):
    sources.get_source(config.data, config.data.train_split)
