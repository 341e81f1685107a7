"""jaxtrain.checks: the field checks every validator shares, and their words."""
import ml_collections
import pytest

from jaxtrain import checks
from jaxtrain.errors import ConfigError


@pytest.mark.parametrize("value,ok", [(3, True), (2, True), (1, False), (True, False),
                                      (2.0, False), ("2", False), (2**31, False)])
def test_check_int_takes_non_bool_ints_in_range(value, ok):
  if ok:
    checks.check_int("train.batch_size", value, minimum=2)
  else:
    with pytest.raises(ConfigError) as e:
      checks.check_int("train.batch_size", value, minimum=2)
    fix = ("use an integer <= 2147483647" if value == 2**31
           else "use an integer >= 2")
    assert str(e.value) == f"config.train.batch_size={value!r}: {fix}"


def test_is_int_bounds_are_inclusive():
  assert checks.is_int(0, 0, 5) and checks.is_int(5, 0, 5)
  assert not checks.is_int(6, 0, 5) and not checks.is_int(False, 0)


def test_check_choice_lists_the_choices():
  checks.check_choice("precision.compute_dtype", "auto", ("auto", "float32"))
  with pytest.raises(ConfigError) as e:
    checks.check_choice("precision.compute_dtype", "fp8", ("auto", "float32"))
  assert str(e.value) == ("config.precision.compute_dtype='fp8': not a known "
                          "choice (valid choices: auto, float32)")


def test_unknown_suggests_the_closest_known_key():
  with pytest.raises(ConfigError) as e:
    checks.unknown("train.batchsize", ["batch_size", "num_steps"], 3)
  assert str(e.value) == ("config.train.batchsize=3: unknown key; did you mean "
                          "'batch_size'? (valid choices: batch_size, num_steps)")
  with pytest.raises(ConfigError, match="unknown key; no such field"):
    checks.unknown("train.zzz", ["batch_size"])


def _base():
  return ml_collections.ConfigDict({"a": 1, "sec": {"b": 2}})


def test_check_keys_refuses_missing_keys_only_when_complete():
  given = ml_collections.ConfigDict({"sec": {"b": 2}})
  checks.check_keys(given, _base(), "x.", complete=False)
  with pytest.raises(ConfigError) as e:
    checks.check_keys(given, _base(), "x.")
  assert e.value.field == "x.a" and "=None: missing;" in str(e.value)


def test_check_keys_names_nested_unknown_keys_and_sections_given_values():
  with pytest.raises(ConfigError, match="did you mean 'b'") as e:
    given = ml_collections.ConfigDict({"a": 1, "sec": {"b": 1, "bx": 2}})
    checks.check_keys(given, _base(), "x.")
  assert e.value.field == "x.sec.bx"
  with pytest.raises(ConfigError, match="this is a section, not a value"):
    checks.check_keys(ml_collections.ConfigDict({"a": 1, "sec": 3}), _base(), "x.")
  checks.check_keys(ml_collections.ConfigDict({"a": 1, "sec": {"b": 2}, "s": 0}),
                    _base(), "x.", skip=("s",))
