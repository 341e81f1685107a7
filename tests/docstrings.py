"""Google-style docstring sections, for the API-docs tests (tests/ is on sys.path:
tests/conftest.py lives there)."""
import re

SECTION = re.compile(r"^(Args|Attributes|Returns|Raises|Example|References):\s*$")


def sections(doc: str) -> dict[str, str]:
  """Google-style docstring sections: header -> the indented text under it."""
  out, current = {}, None
  for line in doc.splitlines():
    match = SECTION.match(line)
    if match:
      current = match.group(1)
      out[current] = ""
    elif current and (line.startswith(" ") or not line.strip()):
      out[current] += line + "\n"
    else:
      current = None
  return out


def documented_names(section: str) -> set[str]:
  """Names that start an entry (`name:` or `a, b, c:` at the section's indent)."""
  lines = [l for l in section.splitlines() if l.strip()]
  if not lines:
    return set()
  indent = min(len(l) - len(l.lstrip()) for l in lines)
  names = set()
  for line in lines:
    entry = re.match(r"(\w+(?:, \w+)*):", line[indent:])
    if len(line) - len(line.lstrip()) == indent and entry:
      names.update(entry.group(1).split(", "))
  return names


# ``name(a, b) -> (x, y)`` or ``name(a) -> x`` in a Returns section.
CALL = re.compile(r"``(\w+)\(([^)]*)\)\s*->\s*(\([^)]*\)|\w+)")


def documented_call(returns: str) -> tuple[str, list[str], list[str]] | None:
  """(name, parameters, results) of the call signature a Returns section shows."""
  match = CALL.search(" ".join(returns.split()))
  if not match:
    return None
  split = lambda s: [w.strip() for w in s.strip("()").split(",") if w.strip()]  # noqa: E731
  return match.group(1), split(match.group(2)), split(match.group(3))
