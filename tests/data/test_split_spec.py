"""TFDS's split syntax, checked against tfds.core.ReadInstruction itself."""
import types

import pytest
import tensorflow_datasets as tfds

from jaxtrain.data import split_spec
from jaxtrain.errors import ConfigError

SIZES = {"train": 1797, "val": 7, "test": 100}


@pytest.mark.parametrize("spec", [
    "train", "train[:90%]", "train[90%:]", "val[:33%]", "val[-50%:]", "test[10:-5]",
    "train[-3:]", "val[1:3]+train[:1%]", "train[33.3%:66.7%]", "val[:0]",
    "val[5:2]"])
def test_rows_are_the_ones_tfds_reads(spec):
  infos = {k: types.SimpleNamespace(num_examples=n) for k, n in SIZES.items()}
  want = []
  for a in tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos):
    want += [(a.splitname, i) for i in range(SIZES[a.splitname])[a.from_:a.to]]
  got = [(p.name, i) for p in split_spec.parse(spec, "data.train_split")
         for i in p.rows(SIZES[p.name])]
  assert got == want


@pytest.mark.parametrize("spec", ["train[:90", "train[a:b]", "train[1:2:3]", "",
                                  "train[:90%%]", "tr ain"])
def test_malformed_specs_name_the_field(spec):
  with pytest.raises(ConfigError, match=r"^config.data.eval_split=.*split name"):
    split_spec.parse(spec, "data.eval_split")


@pytest.mark.parametrize("spec", ["test[:150]", "test[-101:]", "test[:150%]"])
def test_index_bounds_beyond_the_split_are_refused_as_tfds_does(spec):
  infos = {"test": types.SimpleNamespace(num_examples=100)}
  with pytest.raises(ValueError, match=r"incompatible|in \[-100, 100\]"):
    tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  (part,) = split_spec.parse(spec, "data.eval_split")
  with pytest.raises(ConfigError, match=r"^config.data.eval_split=.*has 100 examples"):
    part.rows(100, "data.eval_split")


def test_unknown_split_lists_the_ones_there():
  parts = split_spec.parse("train+valid", "data.eval_split")
  with pytest.raises(ConfigError, match=r"no split 'valid' in /d .*choices: train, val"):
    split_spec.check_names(parts, ["train", "val"], "data.eval_split", "train+valid",
                           "/d")
