"""Plug-in optimizers: `optimizer.name` naming a user's Optax factory.

Besides the built-in names (`defaults.OPTIMIZERS`), `config.optimizer.name` may be

  * a name registered with `@jaxtrain.optim.register("name")`, e.g. in the
    experiment file itself (as models register with `jaxtrain.models.register`);
  * a path ``"package.module:factory"`` to any importable function.

The factory is called as ``factory(learning_rate=schedule, **optimizer.kwargs)``:
the learning rate is the usual `optimizer.learning_rate` and `optimizer.schedule`
(a schedule of the update count, as Optax aliases accept), the rest are its own
keyword arguments from `optimizer.kwargs`. It must return an Optax
`GradientTransformation`; `build` wraps it like a built-in's direction (gradient
clipping and noise, decoupled weight decay, LR multipliers, freezing, EMA,
accumulation). Every mistake (a bad path, a missing or uncallable attribute, an
unknown or missing keyword argument, a factory that raises or returns something
else) is a `ConfigError` naming `optimizer.name` or `optimizer.kwargs.<arg>` before
anything compiles.

Plain Python at import (no JAX or Optax), so experiment files can register
factories while the config loads.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping, TypeVar

from jaxtrain.errors import ConfigError
from jaxtrain.optim.defaults import OPTIMIZERS

FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])
_REGISTRY: dict[str, Callable[..., Any]] = {}
_PATH_FORM = "'package.module:factory'"


def register(name: str) -> Callable[[FactoryT], FactoryT]:
  """Decorator: makes an Optax factory usable as `config.optimizer.name = name`.

  The factory takes `learning_rate` (a schedule) and keyword arguments (from
  `config.optimizer.kwargs`) and returns an `optax.GradientTransformation`.
  Loading an experiment file again, or another one registering the same name,
  replaces a factory an experiment file registered; any other clash is refused.

  Example:
    >>> @register("my_sgd")
    ... def my_sgd(learning_rate, momentum=0.9):
    ...   return optax.sgd(learning_rate, momentum)

  Args:
    name: the optimizer's name; not a built-in one, and without ':' (the mark of
      a ``package.module:factory`` path).

  Returns:
    The decorator; it returns the factory unchanged.

  Raises:
    ConfigError: (field `optimizer.name`) a built-in or path-like name, or a name
      another factory holds.
  """
  if not isinstance(name, str) or not name or name in OPTIMIZERS or ":" in name:
    why = ("a built-in optimizer's name" if name in OPTIMIZERS else
           "path-like (':' marks 'package.module:factory')" if isinstance(name, str)
           and ":" in name else "not a name")
    raise ConfigError("optimizer.name", name, f"register(...) refused: {why}; "
                      "register the factory under another name")

  def wrap(factory: FactoryT) -> FactoryT:
    old = _REGISTRY.get(name)
    if old is not None and _where(old) != _where(factory) and not _from_experiment(
        old):
      raise ConfigError("optimizer.name", name, f"already registered by "
                        f"{_where(old)}; register {_where(factory)} under another "
                        "name")
    _REGISTRY[name] = factory
    return factory
  return wrap


def _from_experiment(factory: Any) -> bool:
  """Defined in an experiment file (`config.load_module`): loading another one
  that registers the same name makes the newer definition current, as the file
  the command runs."""
  return getattr(factory, "__module__", "").startswith(_EXPERIMENT_MODULES)


_EXPERIMENT_MODULES = "_jaxtrain_experiment_"  # config.load_module's module names


def registered_names() -> list[str]:
  """The optimizer names `register` holds (from experiment files or code).

  Returns:
    The names, sorted.
  """
  return sorted(_REGISTRY)


def is_plugin(name: Any) -> bool:
  """Whether `optimizer.name` names a plug-in (registered or a path), not a
  built-in; says nothing of whether it resolves (see `resolve`)."""
  return isinstance(name, str) and (name in _REGISTRY or ":" in name)


def _where(factory: Any) -> str:
  module = getattr(factory, "__module__", "?")
  return f"{module}.{getattr(factory, '__qualname__', type(factory).__name__)}"


def describe(name: str) -> str:
  """'module.qualname' of the factory `name` resolves to."""
  return _where(resolve(name))


def resolve(name: str) -> Callable[..., Any]:
  """The factory `optimizer.name` names (registered name or path).

  Raises:
    ConfigError: naming `optimizer.name`: unknown name, a path whose module does
      not import, a missing attribute, something not callable.
  """
  if name in _REGISTRY:
    return _REGISTRY[name]
  if not isinstance(name, str) or ":" not in name:
    raise ConfigError("optimizer.name", name, "unknown optimizer: use a built-in "
                      f"one, a name registered with @jaxtrain.optim.register, or a "
                      f"path {_PATH_FORM}", choices=[*OPTIMIZERS, *_REGISTRY])
  module_name, _, attr = name.partition(":")
  if not module_name or not attr:
    raise ConfigError("optimizer.name", name, f"a plug-in path is {_PATH_FORM}")
  try:
    obj = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError("optimizer.name", name, f"importing {module_name!r} failed "
                      f"({type(e).__name__}: {_first_line(e)}); install the "
                      "module or put its directory on PYTHONPATH") from None
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ConfigError("optimizer.name", name, f"{obj.__name__!r} has no "
                        f"attribute {part!r}; name a factory defined there")
    obj = getattr(obj, part)
  if not callable(obj):
    raise ConfigError("optimizer.name", name, f"{attr} is a {type(obj).__name__} "
                      "value, not callable; name a function returning an Optax "
                      "GradientTransformation")
  return obj


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [""])[0][:200]


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> inspect.Signature | None:
  """Checks `optimizer.kwargs` against the factory's signature.

  Returns:
    The signature (None when Python cannot read it: the call decides).

  Raises:
    ConfigError: naming `optimizer.kwargs.<arg>` (unknown, missing, or the
      learning rate, which comes from optimizer.learning_rate) or `optimizer.name`
      (a factory that takes no learning_rate).
  """
  factory = resolve(name)
  if "learning_rate" in kwargs:
    raise ConfigError("optimizer.kwargs.learning_rate", kwargs["learning_rate"],
                      "the learning rate comes from optimizer.learning_rate and "
                      "optimizer.schedule; set those and remove it")
  try:
    sig = inspect.signature(factory)
  except (TypeError, ValueError):
    return None
  params = sig.parameters
  var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
  if "learning_rate" not in params and not var_kw:
    raise ConfigError("optimizer.name", name, f"{_where(factory)} takes no "
                      "learning_rate argument; give it one (jaxtrain passes the "
                      "schedule as learning_rate=)")
  for key, value in kwargs.items():
    if key not in params and not var_kw:
      raise ConfigError(f"optimizer.kwargs.{key}", value, f"not an argument of "
                        f"{_where(factory)}", choices=_options(sig))
  for key, p in params.items():
    if (p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and key != "learning_rate" and key not in kwargs):
      raise ConfigError(f"optimizer.kwargs.{key}", None, f"required by "
                        f"{_where(factory)}; set --config.optimizer.kwargs.{key}=...")
  return sig


def _options(sig: inspect.Signature) -> list[str]:
  return [k for k, p in sig.parameters.items() if k != "learning_rate"
          and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def accepts(name: str, argument: str) -> bool:
  """Whether the factory `name` takes keyword `argument` (explicitly)."""
  try:
    return argument in inspect.signature(resolve(name)).parameters
  except (TypeError, ValueError):
    return False


def make(name: str, kwargs: Mapping[str, Any], learning_rate: Any) -> Any:
  """Calls the factory: ``factory(learning_rate=learning_rate, **kwargs)``.

  Args:
    name: the plug-in's `optimizer.name`.
    kwargs: its keyword arguments (`optimizer.kwargs`, as a plain dict).
    learning_rate: the schedule (or, for a check, any schedule of the count).

  Returns:
    The factory's `optax.GradientTransformation`.

  Raises:
    ConfigError: see `check_kwargs`; a factory that raises, or returns something
      that is not a GradientTransformation (field `optimizer.name`).
  """
  import optax  # pylint: disable=g-import-not-at-top
  check_kwargs(name, kwargs)
  factory = resolve(name)
  try:
    tx = factory(learning_rate=learning_rate, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError("optimizer.name", name, f"{_where(factory)}(learning_rate="
                      f"<schedule>, **{dict(kwargs)!r}) raised {type(e).__name__}: "
                      f"{_first_line(e)}; fix optimizer.kwargs or the factory"
                      ) from None
  if not isinstance(tx, optax.GradientTransformation):
    raise ConfigError("optimizer.name", name, f"{_where(factory)} returned a "
                      f"{type(tx).__name__}, not an optax.GradientTransformation; "
                      "return one (e.g. optax.chain(...))")
  return tx
