"""API docs of `jaxtrain`: every exported function documents each parameter under Args
and its result under Returns; every exported class has a docstring naming what it is
and, for dataclasses and NamedTuples, each field under Attributes. (`jaxtrain.optim`
has the same checks in tests/optim/test_optim_docs.py; both parse with tests/docstrings.py.)
A Returns section that shows the returned function's call signature,
``name(a, b) -> (x, y)``, must name what the function returns."""
import ast
import dataclasses
import inspect
import textwrap

import pytest

import jaxtrain
from docstrings import documented_call, documented_names, sections  # tests/docstrings.py

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


def returned_function(fn) -> ast.FunctionDef | None:
  """The nested `def` that `fn` returns by name (its last top-level return)."""
  tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
  nested = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
  returns = [n for n in tree.body if isinstance(n, ast.Return)]
  if returns and isinstance(returns[-1].value, ast.Name):
    return nested.get(returns[-1].value.id)
  return None


def _own_returns(body: list[ast.stmt]):
  """The return statements of a function body, not of functions nested in it."""
  for node in body:
    if isinstance(node, ast.Return):
      yield node
    elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                               ast.ClassDef)):
      for field in ("body", "orelse", "finalbody", "handlers"):
        yield from _own_returns(getattr(node, field, []) or [])


def signature_mismatches(doc: str, fn) -> list[str]:
  """How the call signature shown under Returns differs from what `fn` returns.

  The name and parameters must be the returned `def`'s; each documented result
  must be a name the `def` returns (in a tuple, position for position in count)
  or one of its parameters, returned updated (``state``).
  """
  shown = documented_call(sections(doc).get("Returns", ""))
  made = returned_function(fn)
  if shown is None or made is None:
    return []
  name, params, results = shown
  real = [a.arg for a in made.args.args]
  problems = []
  if name != made.name:
    problems.append(f"named {name}, returns {made.name}")
  if params != real:
    problems.append(f"parameters ({', '.join(params)}), takes ({', '.join(real)})")
  for ret in _own_returns(made.body):
    if isinstance(ret.value, ast.Tuple):
      names = {e.id for e in ret.value.elts if isinstance(e, ast.Name)}
      if len(results) != len(ret.value.elts):
        problems.append(f"{len(results)} results, returns {len(ret.value.elts)}")
      problems += [f"result {r} is neither returned nor a parameter" for r in results
                   if r not in names | set(real)]
    elif len(results) != 1:
      problems.append(f"{len(results)} results, returns one value")
  return problems


SIGNED = sorted(n for n in FUNCTIONS if returned_function(EXPORTS[n]) is not None
                and documented_call(sections(inspect.getdoc(EXPORTS[n]) or "").get(
                    "Returns", "")))


def test_the_step_builders_show_the_signature_of_what_they_return():
  assert {"make_train_step", "make_eval_step"} <= set(SIGNED)


@pytest.mark.parametrize("name", SIGNED)
def test_documented_return_signature_is_the_returned_functions(name):
  fn = EXPORTS[name]
  assert signature_mismatches(inspect.getdoc(fn), fn) == [], name


def test_a_wrong_return_signature_is_found():
  old = """Builds the pure train step.

  Returns:
    ``train_step(state, sums, batch) -> (state, sums)``: one update.
  """
  assert signature_mismatches(inspect.cleandoc(old), EXPORTS["make_train_step"]) == [
      "named train_step, returns step",
      "parameters (state, sums, batch), takes (state, batch)",
      "result sums is neither returned nor a parameter"]
