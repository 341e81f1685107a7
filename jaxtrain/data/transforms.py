"""Transforms: a registry of image/label ops composed from one config string.

Syntax (`config.data.train_transforms`, `config.data.eval_transforms`): ops joined
by `|`, each a registered name, optionally called with Python literal arguments
(numbers, strings, tuples, lists; `3/4`-style arithmetic allowed)::

  decode|random_resized_crop(224)|flip|normalize|mixup(0.2)
  decode|center_crop(224, crop_ratio=0.875)|normalize
  random_crop(32, padding=4)|flip|normalize(mean=(125.3, 123.0, 113.9), std=63.0)

An empty string means no op: images only become float32. Per-example ops run in
order on each example's HWC image; batch ops (mixup, cutmix) come
last, run on the stacked batch and add soft `"targets"` (see `jaxtrain.data.mixing`).
Eval chains hold per-example ops only. `parse` reports an unknown op, a bad argument
or a misplaced op as a `ConfigError` naming the config field and the op.

Randomness is a pure function of (seed, epoch, example index): each example draws
from `example_rng(seed, epoch, index)`, each mixing pair from the generator of its
first example's stream 1, so an example gets the same augmentation whatever the
number of processes, worker processes or threads.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import operator
from typing import Any, Sequence

import numpy as np

from jaxtrain.data import image_ops, mixing, randaugment
from jaxtrain.errors import ConfigError

EXAMPLE_OPS: dict[str, type] = {
    "decode": image_ops.Decode,
    "resize": image_ops.Resize,
    "random_resized_crop": image_ops.RandomResizedCrop,
    "center_crop": image_ops.CenterCrop,
    "flip": image_ops.Flip,
    "random_crop": image_ops.RandomCrop,
    "normalize": image_ops.Normalize,
    "randaugment": randaugment.RandAugment,
}
BATCH_OPS: dict[str, type] = {
    "mixup": mixing.Mixup,
    "cutmix": mixing.Cutmix,
}
# Ops that moved out of the transforms: refused, naming where they went.
MOVED_OPS = {"label_smoothing": "loss.label_smoothing"}
REGISTRY = {**EXAMPLE_OPS, **BATCH_OPS}

_EXAMPLE_STREAM, _PAIR_STREAM = 0, 1


def example_rng(seed: int, epoch: int, index: int, stream: int = _EXAMPLE_STREAM,
                copy: int = 0) -> np.random.Generator:
  """The generator of example `index` in `epoch`: a pure function of its arguments.

  `copy` > 0 numbers the extra copies of repeated augmentation
  (`data.aug_repeats`); copy 0 draws what an unrepeated example draws.
  """
  entropy = [int(seed), int(epoch), int(index)] + ([int(copy)] if copy else [])
  seq = np.random.SeedSequence(entropy, spawn_key=(stream,))
  return np.random.Generator(np.random.PCG64(seq))


def _pixels(image: Any) -> np.ndarray:
  """The transformed image(s) as float32; encoded bytes left over are an error."""
  image = np.asarray(image)
  if image.dtype.kind not in "biuf":
    raise TypeError(f"the image is {image.dtype} data after the transforms, not "
                    "pixels; encoded images need 'decode' first")
  return image.astype(np.float32, copy=False)


@dataclasses.dataclass(frozen=True)
class Chain:
  """A parsed transform string: per-example ops, then batch ops."""
  spec: str = ""
  example_ops: tuple[Any, ...] = ()
  batch_ops: tuple[Any, ...] = ()

  @property
  def random(self) -> bool:
    return any(op.RANDOM for op in self.example_ops)

  @property
  def has_targets(self) -> bool:
    """Whether batches get soft `"targets"` (any batch op present)."""
    return bool(self.batch_ops)

  def example(self, image: Any, seed: int = 0, epoch: int = 0,
              index: int = 0, copy: int = 0) -> np.ndarray:
    """Runs the per-example ops on one image; returns a float32 HWC array."""
    return self._run(image, self._rng(seed, epoch, index, copy))

  def examples(self, images: Sequence[Any], seed: int, epochs: Sequence[int],
               indices: Sequence[int], copies: Sequence[int]) -> np.ndarray:
    """`example` on each image, stacked: a float32 BHWC array.

    When every op has a `batch` method and the images are arrays of one shape, the
    ops run once on the stacked batch (a batch of 64 8x8 digits: one `np.pad` and
    one gather instead of 64 of each); each image still draws from its own
    `example_rng`, in the same order, so the result is `example`'s.
    """
    rngs = [self._rng(seed, e, i, c) for e, i, c in zip(epochs, indices, copies)]
    if not self._batchable(images):
      return np.stack([self._run(image, rng) for image, rng in zip(images, rngs)])
    batch = np.stack(images)
    for op in self.example_ops:
      batch = op.batch(batch, rngs)
    return _pixels(batch)

  def _rng(self, seed: int, epoch: int, index: int,
           copy: int) -> np.random.Generator | None:
    """The example's generator; None when no op draws from one."""
    if not self.random:
      return None
    return example_rng(seed, epoch, index, _EXAMPLE_STREAM, copy)

  def _run(self, image: Any, rng: np.random.Generator | None) -> np.ndarray:
    for op in self.example_ops:
      image = op(image, rng)
    return _pixels(image)

  def _batchable(self, images: Sequence[Any]) -> bool:
    if not (images and all(hasattr(op, "batch") for op in self.example_ops)):
      return False
    first = images[0]
    return (isinstance(first, np.ndarray) and first.ndim == 3
            and first.dtype.kind in "biuf"
            and all(isinstance(x, np.ndarray) and x.shape == first.shape
                    and x.dtype == first.dtype for x in images))

  def batch(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
            seed: int, epochs: np.ndarray, indices: np.ndarray,
            copies: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs the batch ops; returns (images, soft targets or None)."""
    if not self.batch_ops:
      return images, None
    copies = np.zeros_like(indices) if copies is None else copies
    pair_rngs = [example_rng(seed, epochs[a], indices[a], _PAIR_STREAM, copies[a])
                 for a in range(0, len(indices) - 1, 2)]
    return mixing.soft_targets(images, labels, num_classes, self.batch_ops,
                               pair_rngs)

  def resized(self, size: int | None) -> "Chain":
    """This chain with its last sized op producing `size` (None: unchanged).

    Progressive resizing (`config.train.stages`) changes the output size of, e.g.,
    `random_resized_crop(224)` per stage; ops before it keep theirs.

    Raises:
      ValueError: no op of the chain has a `size`.
    """
    if size is None:
      return self
    sized = [i for i, op in enumerate(self.example_ops) if hasattr(op, "size")]
    if not sized:
      raise ValueError(f"'{self.spec}' has no op with a size (e.g. resize, "
                       "random_resized_crop, center_crop, random_crop) to change")
    ops = list(self.example_ops)
    ops[sized[-1]] = dataclasses.replace(ops[sized[-1]], size=size)
    return dataclasses.replace(self, example_ops=tuple(ops))


def parse(spec: str, field: str, allow_batch_ops: bool = True) -> Chain:
  """Parses a transform string; raises ConfigError naming `field` if it is bad."""
  if not isinstance(spec, str):
    raise ConfigError(field, spec, "use a string of ops joined by '|', e.g. "
                      "'decode|random_resized_crop(224)|flip|normalize'")
  example_ops, batch_ops = [], []
  for text in (t.strip() for t in spec.split("|")):
    if not text:
      continue
    name, args, kwargs = _parse_call(text, spec, field)
    if name in MOVED_OPS:
      raise ConfigError(field, spec, f"'{name}' is no longer a transform: set "
                        f"{MOVED_OPS[name]} instead")
    if name not in REGISTRY:
      raise ConfigError(field, spec, f"unknown op '{name}'", choices=REGISTRY)
    if name in BATCH_OPS and not allow_batch_ops:
      raise ConfigError(field, spec, f"'{name}' mixes labels across a batch; eval "
                        "transforms take per-example ops only", choices=EXAMPLE_OPS)
    if name in EXAMPLE_OPS and batch_ops:
      raise ConfigError(field, spec, f"'{name}' is a per-example op after the batch "
                        f"op '{batch_ops[-1][0]}'; put batch ops "
                        f"({', '.join(BATCH_OPS)}) last")
    op = _construct(name, args, kwargs, spec, field)
    (batch_ops if name in BATCH_OPS else example_ops).append((name, op))
  return Chain(spec, tuple(op for _, op in example_ops),
               tuple(op for _, op in batch_ops))


def signature(name: str) -> str:
  """`name(arg=default, ...)` of a registered op, for error messages and docs."""
  params = inspect.signature(REGISTRY[name]).parameters.values()
  args = [p.name if p.default is p.empty else f"{p.name}={p.default!r}"
          for p in params]
  return f"{name}({', '.join(args)})"


def _construct(name: str, args: Sequence[Any], kwargs: dict[str, Any], spec: str,
               field: str) -> Any:
  try:
    return REGISTRY[name](*args, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(field, spec, f"bad arguments to '{name}': {e}; the op is "
                      f"{signature(name)}") from None


def _parse_call(text: str, spec: str, field: str
                ) -> tuple[str, list[Any], dict[str, Any]]:
  """'name' or 'name(args, k=v)' -> (name, args, kwargs) of literal values."""
  try:
    node = ast.parse(text, mode="eval").body
    if isinstance(node, ast.Name):
      return node.id, [], {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      raise ValueError("not a call")
    return (node.func.id, [_literal(a) for a in node.args],
            {k.arg: _literal(k.value) for k in node.keywords if k.arg})
  except (SyntaxError, ValueError) as e:
    raise ConfigError(field, spec, f"cannot read op '{text}' ({e}); write "
                      "name or name(arg, key=value) with literal values") from None


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub,
               ast.Mult: operator.mul, ast.Div: operator.truediv}


def _literal(node: ast.AST) -> Any:
  """A Python literal, allowing + - * / between numbers (e.g. `3/4`)."""
  if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
    left, right = _literal(node.left), _literal(node.right)
    if not all(isinstance(x, (int, float)) for x in (left, right)):
      raise ValueError("arithmetic only between numbers")
    return _ARITHMETIC[type(node.op)](left, right)
  if isinstance(node, (ast.Tuple, ast.List)):
    values = [_literal(e) for e in node.elts]
    return tuple(values) if isinstance(node, ast.Tuple) else values
  return ast.literal_eval(node)
