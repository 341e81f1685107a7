"""Launching real JAX processes from tests: free ports, CPU environments, and a
group of processes that all finish, or are all killed, within a time limit."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Sequence


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on (for the coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cpu_env(devices: int) -> dict[str, str]:
  """This process's environment for a child JAX with `devices` CPU devices,
  compiling at LLVM -O0 as tests/conftest.py does by default (XLA_FLAGS is
  replaced, not extended)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={devices} "
      "--xla_backend_optimization_level=0"))


def jaxtrain_cmd(*args: str) -> list[str]:
  """`jaxtrain ARGS...` run by this Python (no reliance on the console script)."""
  return [sys.executable, "-m", "jaxtrain.cli", *args]


def multihost_flags(port: int, num_processes: int, process_id: int) -> list[str]:
  return [f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={num_processes}", f"--process_id={process_id}"]


def run_together(commands: Sequence[Sequence[str]],
                 env: dict[str, str] | Sequence[dict[str, str]],
                 timeout: float, cwds: Sequence[str | os.PathLike] | None = None
                 ) -> list[str]:
  """Starts every command at once (the processes of one distributed job), waits
  for all, kills any left `timeout` s after the start; returns their outputs
  (stdout and stderr) after asserting that each exited 0, showing the tail of
  every process's output when one did not. `env` is every process's environment,
  or a list with one per command (a launcher's per-process variables).
  """
  deadline = time.monotonic() + timeout
  envs = [env] * len(commands) if isinstance(env, dict) else list(env)
  procs = [subprocess.Popen(list(cmd), env=envs[i], cwd=cwds[i] if cwds else None,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
           for i, cmd in enumerate(commands)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=max(0.0, deadline - time.monotonic()))[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  if any(p.returncode != 0 for p in procs):
    raise AssertionError("\n".join(
        f"--- process {i} exited {p.returncode}:\n{out[-3000:]}"
        for i, (p, out) in enumerate(zip(procs, outs))))
  return outs
