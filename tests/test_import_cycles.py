"""No import cycle among the modules of `jaxtrain/`.

The graph is read from the source with `ast`, nothing is imported: an edge A -> B is
an `import`/`from ... import` that runs when A is imported, i.e. one at module level
(also inside a module-level `if`/`try`/`with` or a class body). Imports inside a
function run when it is called (lazy imports, e.g. the CLI's, which keep
`jaxtrain --help` free of JAX) and do not count, nor do `if TYPE_CHECKING:` blocks.
`from pkg import name` is an edge to the submodule `pkg.name` when there is one,
else to `pkg` itself; the implicit import of a submodule's parent packages is not
an edge (Python runs a package's `__init__` first whichever way round, and the
package re-exports lazily).
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxtrain"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
      isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _eager_imports(body: list[ast.stmt]):
  """Import statements run at import time: not inside functions or TYPE_CHECKING."""
  for node in body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    elif isinstance(node, ast.If) and _is_type_checking(node):
      yield from _eager_imports(node.orelse)
    else:
      for field in ("body", "orelse", "finalbody", "handlers"):
        yield from _eager_imports(getattr(node, field, []) or [])


def _targets(node: ast.stmt, module: str, is_package: bool,
             known: set[str]) -> set[str]:
  """The jaxtrain modules one import statement loads."""
  if isinstance(node, ast.Import):
    return {a.name for a in node.names if a.name in known}
  if node.level:  # relative: from the module's package, `level` steps up
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    source = ".".join(base + ([node.module] if node.module else []))
  else:
    source = node.module or ""
  out = set()
  for alias in node.names:
    sub = f"{source}.{alias.name}"
    if sub in known:
      out.add(sub)
    elif source in known:
      out.add(source)
  return out


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    graph[name] = set()
    for node in _eager_imports(tree.body):
      graph[name] |= _targets(node, name, is_package, known) - {name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_finder_reports_a_cycle_and_accepts_a_tree():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_module_level_imports_only():
  graph = import_graph()
  # runner imports checkpoint at module level; cli imports runner only lazily.
  assert "jaxtrain.checkpoint" in graph["jaxtrain.runner"]
  assert "jaxtrain.runner" not in graph["jaxtrain.cli"]


def test_jaxtrain_has_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)
