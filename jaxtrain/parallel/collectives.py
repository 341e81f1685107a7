"""Collective operations in compiled HLO text, and the bytes they move.

`compiled.as_text()` of a jitted step (after `.lower(...).compile()`, on any backend,
including a TPU pod compiled ahead of time from a topology) lists every cross-device
operation the partitioner emitted. Reading them answers the scale-out questions a
loss curve cannot: does data parallelism reduce each gradient exactly once (one
all-reduce of the gradient bytes per step, Goyal et al. 2017, arXiv 1706.02677)? Does
FSDP gather parameters and reduce-scatter gradients (ZeRO-3, Rajbhandari et al. 2019,
arXiv 1910.02054)? Does tensor parallelism add the two all-reduces per block of
Megatron-LM (Shoeybi et al. 2019, arXiv 1909.08053) and no more?

Conventions:
  - One `Collective` per array: a combined (tuple-shaped) all-reduce of 30 gradients
    gives 30 entries, so totals do not depend on XLA's combiner thresholds.
  - `bytes` is the size of the result array on one device: the reduced array for
    all-reduce, the gathered array for all-gather, the scattered shard for
    reduce-scatter, the received array for all-to-all and collective-permute.
  - Async pairs are counted once, at `*-start`; `*-done` is skipped. The result of
    an async all-gather / collective-permute start is `(operands, outputs, ...)`;
    only the outputs count.
  - The count is static: an op inside a loop body is counted once, not per iteration.

Dtypes: XLA:CPU promotes bfloat16 all-reduces to float32 after partitioning (its
`all-reduce-promotion` pass), so on CPU the dtype the partitioner chose, which TPU
and GPU run as is, is read from `partitioned_hlo`, not from the final program.
"""
from __future__ import annotations

import glob
import math
import os
import re
import tempfile
from typing import Any, Iterable, NamedTuple

OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
       "collective-permute", "collective-broadcast", "ragged-all-to-all")

# `%name = <shape> <op>(-start|-done)?(` ; the shape may be a (nested) tuple.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+"
    r"(?P<op>" + "|".join(re.escape(o) for o in sorted(OPS, key=len, reverse=True))
    + r")(?P<phase>-start|-done)?\(")
_ARRAY = re.compile(r"(?P<dtype>[a-z][a-z0-9]*)\[(?P<dims>[0-9,]*)\]")
_COMMENT = re.compile(r"/\*.*?\*/")
# Start ops whose result is (operands, outputs[, scratch]) rather than the outputs.
_SPLIT_START = ("all-gather", "collective-permute", "all-to-all")


class Collective(NamedTuple):
  """One array moved by a collective: op name, dtype, shape, bytes per device."""
  op: str
  dtype: str
  shape: tuple[int, ...]
  bytes: int


class OpTotal(NamedTuple):
  """Totals of one collective op over a program: arrays moved and their bytes."""
  count: int
  bytes: int


def dtype_bits(dtype: str) -> int:
  """Bits per element of an HLO element type (f32 -> 32, bf16 -> 16, pred -> 8)."""
  if dtype == "pred":
    return 8  # stored as one byte
  if dtype in ("token", "opaque"):
    return 0
  digits = re.search(r"\d+", dtype)
  if digits is None:
    raise ValueError(f"unknown HLO element type {dtype!r}")
  return int(digits.group())


def _split_top_level(shape: str) -> list[str]:
  """'(a, (b, c), d)' -> ['a', '(b, c)', 'd']; a non-tuple shape -> [shape]."""
  shape = shape.strip()
  if not shape.startswith("("):
    return [shape]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(shape):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 1:
      parts.append(shape[start:i])
      start = i + 1
  parts.append(shape[start:-1])
  return [p.strip() for p in parts if p.strip()]


def _arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  """Every (dtype, dims) array in an HLO shape string, tuples flattened."""
  return [(m["dtype"], tuple(int(d) for d in m["dims"].split(",") if d))
          for m in _ARRAY.finditer(shape)]


def _result_shape(op: str, phase: str | None, shape: str) -> str:
  if phase == "-start" and op in _SPLIT_START:
    parts = _split_top_level(shape)
    if len(parts) >= 2:
      return parts[1]
  return shape


def collectives(hlo_text: str) -> list[Collective]:
  """Every array moved by a collective in `hlo_text` (see the module docstring)."""
  found = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(_COMMENT.sub("", line))
    if match is None or match["phase"] == "-done":
      continue
    shape = _result_shape(match["op"], match["phase"], match["shape"])
    for dtype, dims in _arrays(shape):
      size = math.prod(dims) * dtype_bits(dtype)
      found.append(Collective(match["op"], dtype, dims, (size + 7) // 8))
  return found


def summary(found: Iterable[Collective] | str, by_dtype: bool = False
            ) -> dict[Any, OpTotal]:
  """Per op (or per (op, dtype) with `by_dtype`): number of arrays and total bytes;
  takes HLO text or `collectives(...)`."""
  if isinstance(found, str):
    found = collectives(found)
  totals: dict[Any, OpTotal] = {}
  for c in found:
    key = (c.op, c.dtype) if by_dtype else c.op
    count, size = totals.get(key, OpTotal(0, 0))
    totals[key] = OpTotal(count + 1, size + c.bytes)
  return dict(sorted(totals.items()))


def format_summary(totals: dict[str, OpTotal]) -> str:
  """A small table, one op per line, for `jaxtrain compile` and logs."""
  if not totals:
    return "no collectives"
  width = max(len(op) for op in totals)
  return "\n".join(f"{op:<{width}}  {t.count:6d} arrays  {t.bytes / 2**20:12.3f} MiB"
                   for op, t in totals.items())


def partitioned_hlo(lowered: Any) -> str:
  """HLO text of `lowered` (a `jax.stages.Lowered`) right after SPMD partitioning.

  Compiles it once more with XLA's pass dump on for that pass only: the collectives
  as the partitioner emitted them, before backend passes change their dtypes.
  """
  with tempfile.TemporaryDirectory() as tmp:
    # JAX's persistent compilation cache (e.g. set by `jaxtrain sweep`) drops dump
    # options from its key, so a cached program would be returned without compiling
    # or dumping; xla_embed_ir_in_executable stays in the key and changes no code.
    lowered.compile(compiler_options={"xla_dump_to": tmp,
                                      "xla_dump_hlo_pass_re": "spmd-partitioning",
                                      "xla_embed_ir_in_executable": True})
    found = sorted(glob.glob(os.path.join(tmp, "*after_spmd-partitioning*.txt")))
    if not found:
      raise RuntimeError("XLA wrote no after_spmd-partitioning dump (a program "
                         "compiled for one device is not partitioned, or it came "
                         "from a cache)")
    with open(found[-1], encoding="utf-8") as f:
      return f.read()
