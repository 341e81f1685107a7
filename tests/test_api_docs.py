"""API docs of `jaxtrain`: every exported function documents each parameter under Args
and its result under Returns; every exported class has a docstring naming what it is
and, for dataclasses and NamedTuples, each field under Attributes. (`jaxtrain.optim`
has the same checks in tests/optim/test_optim_docs.py; both parse with tests/docstrings.py.)"""
import dataclasses
import inspect

import pytest

import jaxtrain
from docstrings import documented_names, sections  # tests/docstrings.py

EXPORTS = {name: getattr(jaxtrain, name) for name in jaxtrain.__all__}
FUNCTIONS = sorted(n for n, obj in EXPORTS.items() if inspect.isfunction(obj))
CLASSES = sorted(n for n, obj in EXPORTS.items() if inspect.isclass(obj))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_documents_each_parameter_and_its_result(name):
  fn = EXPORTS[name]
  doc = sections(inspect.getdoc(fn) or "")
  params = {p for p, v in inspect.signature(fn).parameters.items()
            if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}
  if params:
    assert "Args" in doc, f"{name}: no Args section"
    assert documented_names(doc["Args"]) >= params, name
  assert doc.get("Returns", "").strip(), f"{name}: no Returns section"


@pytest.mark.parametrize("name", CLASSES)
def test_class_documents_itself_and_its_fields(name):
  cls = EXPORTS[name]
  doc = inspect.getdoc(cls) or ""
  assert doc.strip(), f"{name}: no docstring"
  if dataclasses.is_dataclass(cls) and not issubclass(cls, Exception):
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in (
        "parent", "name")}
    assert documented_names(sections(doc).get("Attributes", "")) >= fields, name
