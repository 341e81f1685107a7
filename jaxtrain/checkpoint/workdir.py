"""What a workdir's checkpoints hold, read from the directory alone (no manager).

Read-only, safe before anything is built (`jaxtrain.resume_config`) and from the
thread that names a dying peer (`parallel.peers`).
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath


def describe_intact(workdir: str) -> str:
  """'the checkpoint at step N in DIR is intact', from the directory alone.

  Safe to call from any thread while a save is cut short: a step is complete once
  Orbax renamed it to its number (local disks) or wrote its commit_success.txt
  (object stores, where it is written in place).
  """
  directory = epath.Path(checkpoint_dir(workdir))
  try:
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()
             and ("://" not in workdir or (p / "commit_success.txt").exists())]
  except OSError:
    steps = []
  if not steps:
    return "no complete checkpoint exists yet"
  return f"the checkpoint at step {max(steps)} in {directory} is intact"


def checkpoint_dir(workdir: str) -> str:
  """`workdir/checkpoints` as the Checkpointer names it (gs:// URLs kept as given)."""
  base = workdir.rstrip("/") if "://" in workdir else os.path.abspath(workdir)
  return f"{base}/checkpoints"


def saved_config(workdir: str) -> tuple[int, dict[str, Any]] | None:
  """(step, config) of the newest checkpoint whose config item reads; None if none.

  Read-only (nothing is moved or written): run before compiling, to compare the
  config a resumed run would continue with (`jaxtrain.resume_config`). Steps are
  the directories Orbax finalized, as `describe_intact` finds them (unfinished
  saves and set-aside steps carry suffixes locally; on object stores a step is
  committed once marked); the item is read by Orbax's JSON handler.
  """
  directory = epath.Path(checkpoint_dir(workdir))
  if not directory.exists():
    return None
  remote = "://" in workdir  # written in place there: committed once marked
  steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()
                  and (not remote or (p / "commit_success.txt").exists())),
                 reverse=True)
  handler = ocp.JsonCheckpointHandler()
  try:
    for step in steps:
      try:
        return step, handler.restore(directory / str(step) / "config",
                                     ocp.args.JsonRestore())
      except Exception:  # pylint: disable=broad-except
        continue  # unreadable: restore_latest reports it and sets it aside
    return None
  finally:
    handler.close()
