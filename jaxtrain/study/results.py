"""A study's results: DIR/results.json (everything) and results.csv, read and written.

`results.json` holds the study's header (target, study and experiment sections, train
set size) and one record per trial, with its learning curve; `results.csv` has one
row per trial (the `COLUMNS`, then its final metrics). Both are rewritten whole and
atomically (`write_atomic`), by process 0 only, through `etils.epath`: DIR may be a
local directory or gs://BUCKET/PATH. Written by `sweep`, read by `sweep` (to resume)
and `report`.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Sequence

import jax
from etils import epath

from jaxtrain.errors import ConfigError

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
COLUMNS = ("trial", "batch_size", "optimizer", "learning_rate", "warmup_epochs",
           "warmup_steps", "seed", "momentum", "weight_decay", "num_steps",
           "eval_every", "status", "steps_to_target", "examples_to_target",
           "diverged", "steps_run", "wall_time_s", "group_size")
Record = dict[str, Any]


def load_results(workdir: str) -> tuple[dict[str, Any], list[Record]]:
  """(header, trial records) from DIR/results.json; ({}, []) when absent."""
  path = epath.Path(workdir) / RESULTS_JSON
  if not path.exists():
    return {}, []
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
    trials = data["trials"]
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError("--workdir", workdir, f"{path} is not a sweep's results file "
                      f"({type(e).__name__}: {str(e)[:100]}); move it away, or use "
                      "another --workdir") from None
  return {k: v for k, v in data.items() if k != "trials"}, trials


def write_atomic(path: epath.Path, data: str | bytes) -> None:
  """Writes a whole file that readers see either as before or complete.

  Locally through a temporary file and a rename. An object store's upload is
  atomic already (and its "rename" a copy), so the object is written directly.
  """
  if "://" in str(path):
    tmp = path
  else:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  if isinstance(data, bytes):
    tmp.write_bytes(data)
  else:
    tmp.write_text(data, encoding="utf-8")
  if tmp != path:
    tmp.replace(path)


def write_results(workdir: str, header: dict[str, Any],
                  records: Sequence[Record]) -> None:
  """Writes results.json (everything) and results.csv (one row per trial)."""
  if jax.process_index() != 0:
    return
  root = epath.Path(workdir)
  write_atomic(root / RESULTS_JSON,
               json.dumps({**header, "trials": list(records)}, indent=1))
  finals = sorted({k for r in records for k in r.get("final", {})})
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow([*COLUMNS, *(f"final/{k}" for k in finals)])
  for r in records:
    w.writerow([_csv(r.get(c)) for c in COLUMNS]
               + [_csv(r.get("final", {}).get(k)) for k in finals])
  write_atomic(root / RESULTS_CSV, f.getvalue())


def _csv(value: Any) -> Any:
  return "" if value is None else value
