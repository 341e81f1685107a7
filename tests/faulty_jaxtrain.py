"""`jaxtrain` with a storage fault injected when the run reaches a checkpoint step.

    python tests/faulty_jaxtrain.py --at_step=20 --fault=fill_disk:DIR -- train ...

The command after `--` is the real `jaxtrain` command line (`jaxtrain.cli.main`);
the only change is that the save of `--at_step` first waits for the saves before
it to complete (so they are intact, as on a run that has been going for a while)
and then injects the fault:

  fill_disk:DIR   fills the filesystem of DIR (a small tmpfs) with a file DIR/filler
  read_only:DIR   bind-mounts DIR read-only onto itself (root ignores permission
                  bits); the test unmounts it
  sigkill:I       process I of a multi-host run starts the save, then SIGKILLs
                  itself while it is being written (a peer dying mid-save)
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def fill_disk(directory: str) -> None:
  stat = os.statvfs(directory)
  with open(os.path.join(directory, "filler"), "wb") as f:
    f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - 4096, 0))


def read_only(directory: str) -> None:
  subprocess.run(["mount", "--bind", directory, directory], check=True)
  subprocess.run(["mount", "-o", "remount,ro,bind", directory, directory], check=True)


FAULTS = {"fill_disk": fill_disk, "read_only": read_only}


def _die_after(original, process: int):
  """The save of this step, after which process `process` dies at once."""
  def save(self, step, *a, **kw):
    import jax  # pylint: disable=g-import-not-at-top
    result = original(self, step, *a, **kw)
    if jax.process_index() == process:
      os.kill(os.getpid(), signal.SIGKILL)
    return result
  return save


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--at_step", type=int, required=True)
  parser.add_argument("--fault", required=True, help="NAME:DIR")
  args, rest = parser.parse_known_args()
  name, directory = args.fault.split(":", 1)
  from jaxtrain import checkpoint, cli  # pylint: disable=g-import-not-at-top
  original = checkpoint.Checkpointer.save

  dying = _die_after(original, int(directory)) if name == "sigkill" else None

  def save(self, step, *a, **kw):
    if step == args.at_step:
      self.wait()
      if dying is not None:
        return dying(self, step, *a, **kw)
      FAULTS[name](directory)
    return original(self, step, *a, **kw)

  checkpoint.Checkpointer.save = save
  return cli.main(rest[1:] if rest[:1] == ["--"] else rest)


if __name__ == "__main__":
  sys.exit(main())
