"""Wall time of `jaxtrain --help` and of one-line config errors, vs. `python -c pass`.

Each command runs in a fresh process, as a user types it; the commands take turns
(round-robin, `--rounds` rounds) so a change in machine load hits them all alike.
Printed per command: the median and the fastest wall time, and the median's ratio to
the interpreter's own start-up (`python -c pass`, timed in the same rounds). The
load average before and after is printed too: on a busy machine every figure grows,
the ratios less so. The target is under 1 s for help and config errors: they need
neither JAX nor matplotlib nor Orbax (tests/test_cli_startup.py checks that
structurally); a command that does work (train, compile) pays for JAX once it has a
valid config.

  python benchmarks/cli_startup.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
JAXTRAIN = [sys.executable, "-m", "jaxtrain.cli"]

# (label, argv, expected exit code)
COMMANDS = [
    ("python -c pass (baseline)", [sys.executable, "-c", "pass"], 0),
    ("jaxtrain --help", [*JAXTRAIN, "--help"], 0),
    ("jaxtrain train --help", [*JAXTRAIN, "train", "--help"], 0),
    ("jaxtrain lr-find --help", [*JAXTRAIN, "lr-find", "--help"], 0),
    ("config error: unknown key", [*JAXTRAIN, "train", f"--config={EXPERIMENT}",
                                   "--workdir=/nonexistent/never/written",
                                   "--config.train.batchsize=3"], 2),
    ("config error: bad value", [*JAXTRAIN, "train", f"--config={EXPERIMENT}",
                                 "--workdir=/nonexistent/never/written",
                                 "--config.train.batch_size=0"], 2),
    ("config error: no such file", [*JAXTRAIN, "train", "--config=nope.py",
                                    "--workdir=/nonexistent/never/written"], 2),
]


def time_once(argv: list[str], expected_rc: int) -> float:
  start = time.perf_counter()
  proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
  elapsed = time.perf_counter() - start
  if proc.returncode != expected_rc:
    raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}, expected "
                     f"{expected_rc}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
  return elapsed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=7,
                      help="times each command runs, interleaved (default: 7)")
  args = parser.parse_args()
  load_before = os.getloadavg()
  times: dict[str, list[float]] = {label: [] for label, _, _ in COMMANDS}
  for label, argv, rc in COMMANDS:  # warm-up: file caches, .pyc files
    time_once(argv, rc)
  for _ in range(args.rounds):
    for label, argv, rc in COMMANDS:
      times[label].append(time_once(argv, rc))
  load_after = os.getloadavg()
  base = statistics.median(times[COMMANDS[0][0]])
  print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.rounds} "
        f"rounds; load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}")
  print(f"{'command':<30} {'median s':>9} {'min s':>7} {'x baseline':>11}  < 1 s")
  for label, _, _ in COMMANDS:
    med = statistics.median(times[label])
    ok = "yes" if med < 1.0 else "NO"
    print(f"{label:<30} {med:>9.3f} {min(times[label]):>7.3f} {med / base:>11.1f}  "
          f"{ok}")


if __name__ == "__main__":
  main()
