"""API docs of `jaxtrain.optim`, Optax style: every exported function documents each
of its parameters under Args and its result under Returns, state classes document
their fields under Attributes, and algorithms cite their source under References."""
import inspect
import re

import pytest

from docstrings import documented_names, sections  # tests/docstrings.py
from jaxtrain import optim

# Exports that implement an algorithm from a paper or a reference implementation.
ALGORITHMS = (
    "addsign", "powersign", "scale_by_addsign", "scale_by_powersign", "lars",
    "linear_decay_fn", "cosine_decay_fn", "restart_decay_fn",
    "linear_cosine_decay_schedule", "noisy_linear_cosine_decay_schedule",
    "mlperf_polynomial_schedule", "sgdr_warm_restarts_schedule",
    "inverse_time_decay_schedule", "warmup_polynomial_schedule",
    "with_linear_warmup", "scale_lr", "track_params_ema", "decoupled_weight_decay",
)

EXPORTS = {name: getattr(optim, name) for name in optim.__all__}
FUNCTIONS = sorted(n for n, obj in EXPORTS.items() if inspect.isfunction(obj))
CLASSES = sorted(n for n, obj in EXPORTS.items() if inspect.isclass(obj))


def test_every_export_is_a_function_a_class_or_a_tuple_of_names():
  for name, obj in EXPORTS.items():
    assert (inspect.isfunction(obj) or inspect.isclass(obj) or (
        isinstance(obj, tuple) and all(isinstance(x, str) for x in obj))), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_documents_each_parameter_and_its_result(name):
  fn = EXPORTS[name]
  doc = sections(inspect.getdoc(fn) or "")
  params = set(inspect.signature(fn).parameters)
  if params:
    assert "Args" in doc, f"{name}: no Args section"
    assert documented_names(doc["Args"]) == params, name
  assert doc.get("Returns", "").strip(), f"{name}: no Returns section"


@pytest.mark.parametrize("name", CLASSES)
def test_state_class_documents_each_field(name):
  cls = EXPORTS[name]
  doc = sections(inspect.getdoc(cls) or "")
  assert "Attributes" in doc, f"{name}: no Attributes section"
  assert documented_names(doc["Attributes"]) == set(cls._fields), name


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_cites_its_source(name):
  doc = sections(inspect.getdoc(EXPORTS[name]) or "")
  assert re.search(r"arXiv \d{4}\.\d{4,5}|TF|TensorFlow|\d{4}",
                   doc.get("References", "")), f"{name}: no References"


def test_the_section_parser_sees_a_missing_parameter():
  # The checks above must be able to fail: a docstring missing `beta` is caught.
  def example(alpha, beta):
    """Example.

    Args:
      alpha: documented.

    Returns:
      Nothing.
    """
  doc = sections(inspect.getdoc(example))
  assert documented_names(doc["Args"]) == {"alpha"}
  assert documented_names(doc["Args"]) != set(inspect.signature(example).parameters)
