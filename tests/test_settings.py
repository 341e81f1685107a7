"""`config.validate` returns typed, frozen settings (issue 17): every field of the
config carries over, nothing can change them, and derived experiments go through
a copy that is validated again."""
import dataclasses
import os

import ml_collections
import pytest

from jaxtrain import config as config_lib
from jaxtrain import settings as settings_lib
from jaxtrain.data import sources

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")


def _digits(*overrides):
  c = config_lib.load(os.path.join(EXPERIMENTS, "digits_cnn.py"))
  config_lib.apply_overrides(c, list(overrides))
  return c


def _leaves(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_leaves(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


@pytest.mark.parametrize("spec", ["digits_cnn.py", "resnet50_imagenet_lars.py",
                                  "resnet50_imagenet_distill.py:runlocal_student"])
def test_every_field_of_the_config_carries_over(spec):
  path, _, arg = spec.partition(":")
  config = config_lib.load(os.path.join(EXPERIMENTS, path) + (f":{arg}" if arg else ""))
  want = _leaves(config.to_dict())
  settings = config_lib.validate(config)
  assert isinstance(settings, settings_lib.Settings)
  assert _leaves(settings.to_dict()) == want
  # Read the way every layer reads them: attribute by attribute.
  for dotted, value in want.items():
    node = settings
    for part in dotted.split("."):
      node = getattr(node, part)
    assert (tuple(node) if isinstance(node, list) else node) == value, dotted


def test_typed_sections_have_their_declared_types():
  settings = config_lib.validate(_digits("train.num_epochs=3", "mesh.data=-1"))
  for section in (settings.train, settings.train.early_stopping, settings.mesh,
                  settings.precision, settings.checkpoint):
    assert dataclasses.is_dataclass(section)
  hints = {f.name: f.type for f in dataclasses.fields(settings_lib.Train)}
  assert hints["num_epochs"] == "float" and isinstance(settings.train.num_epochs, float)
  assert hints["batch_size"] == "int" and type(settings.train.batch_size) is int
  assert isinstance(settings.checkpoint.async_save, bool)


def test_the_defaults_of_a_typed_section_are_the_dataclass_defaults():
  base = config_lib.base_config()
  for name, cls in (("train", settings_lib.Train), ("mesh", settings_lib.Mesh),
                    ("precision", settings_lib.Precision),
                    ("checkpoint", settings_lib.Checkpoint)):
    assert base[name].to_dict() == dataclasses.asdict(cls()), name


def test_nothing_can_change_the_settings():
  settings = config_lib.validate(_digits())
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.train.num_steps = 5
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.seed = 1
  with pytest.raises(AttributeError, match="immutable"):
    settings.optimizer.learning_rate = 1.0
  with pytest.raises(AttributeError, match="immutable"):
    settings.data.eval_split = "train"


def test_a_derived_config_is_a_mutable_copy_validated_again():
  config = _digits()
  settings = config_lib.validate(config)
  copy = settings.to_config()
  assert isinstance(copy, ml_collections.ConfigDict)
  copy.train.num_steps, copy.train.num_epochs = 7, 0.0
  assert settings.train.num_steps == config.train.num_steps != 7
  assert config_lib.validate(copy).train.num_steps == 7
  copy.train.batch_size = 0
  with pytest.raises(config_lib.ConfigError, match="train.batch_size"):
    config_lib.settings_of(copy)  # changed since: checked again


def test_an_edited_section_is_checked_again_where_it_is_read():
  settings = config_lib.validate(_digits())
  edited = settings.with_section("data", eval_split="no_such_split")
  assert edited.data.eval_split == "no_such_split"
  assert settings.data.eval_split != "no_such_split"
  assert edited.train is settings.train  # the other sections are shared, unchanged
  with pytest.raises(config_lib.ConfigError, match="data.eval_split"):
    sources.get_source(edited.data, edited.data.eval_split)


def test_settings_of_validates_a_config_only_once():
  config = _digits()
  settings = config_lib.settings_of(config)
  assert config_lib.settings_of(settings) is settings
  assert config_lib.settings_of(config) == settings  # marked: frozen, not re-checked
