"""Checkpoints: every Orbax manager of jaxtrain lives in this package.

  train_state  the run's own `workdir/checkpoints`: train state + data position +
               config (`Checkpointer`); unreadable steps set aside, mismatches named
  best         `workdir/best`: the best state by an eval metric (early stopping)
  read_only    another run's checkpoints, read-only (the distillation teacher,
               `jaxtrain eval`, `init_from`), and the step a config names
  host_state   the host-side state saved beside the train state (data position,
               early-stopping tracker)
  workdir      what a workdir holds, read from the directory alone (no manager)
  verify       checksum verification shared by every restore (`jaxtrain.checksums`)
  errors       mismatch, write failure, damage

The names below are the package's API; import them from `jaxtrain.checkpoint`.
"""
from jaxtrain.checkpoint.best import BestCheckpointer
from jaxtrain.checkpoint.errors import (CheckpointCorruptError,
                                       CheckpointMismatchError, CheckpointWriteError)
from jaxtrain.checkpoint.host_state import HostState
from jaxtrain.checkpoint.read_only import (ReadOnlyCheckpoints, checkpoints_of,
                                           choose_step, shape_differences)
from jaxtrain.checkpoint.train_state import Checkpointer, abstract_like
from jaxtrain.checkpoint.verify import check_checksums, has_checksums
from jaxtrain.checkpoint.workdir import checkpoint_dir, describe_intact, saved_config

__all__ = ["BestCheckpointer", "Checkpointer", "CheckpointCorruptError",
           "CheckpointMismatchError", "CheckpointWriteError", "HostState",
           "ReadOnlyCheckpoints", "abstract_like", "check_checksums", "checkpoint_dir",
           "checkpoints_of", "choose_step", "describe_intact", "has_checksums",
           "saved_config", "shape_differences"]
