"""`jaxtrain --help` and config errors start fast because they import no heavy module.

The time itself is measured by benchmarks/cli_startup.py (timings are not asserted
in tests); this checks its cause: each command runs in a fresh process, as a user
types it, and afterwards no module of JAX, Flax, Optax, Orbax, matplotlib, TFDS,
Grain or tensorboardX is in `sys.modules`.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
DIGITS = os.path.join(ROOT, "experiments", "digits_cnn.py")
STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "matplotlib",
         "tensorflow_datasets", "grain", "tensorboardX", "tensorflow")

# Runs `jaxtrain ARGS` in this process, then lists the heavy modules it imported.
PROBE = f"""
import sys
from jaxtrain import cli
try:
  code = cli.main(sys.argv[1:])
except SystemExit as e:
  code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""

HELP = [["--help"], ["train", "--help"], ["eval", "--help"], ["compile", "--help"],
        ["optim-summary", "--help"], ["sweep", "--help"], ["report", "--help"],
        ["lr-find", "--help"]]

WORKDIR = "--workdir=/nonexistent/never/written"
CONFIG_ERRORS = [
    # (argv, the field the one-line message names)
    (["train", f"--config={DIGITS}", WORKDIR, "--config.train.batchsize=3"],
     "config.train.batchsize"),
    (["train", f"--config={DIGITS}", WORKDIR, "--config.train.batch_size=0"],
     "config.train.batch_size"),
    (["train", f"--config={DIGITS}", WORKDIR, "--config.optimizer.nme=sgd"],
     "config.optimizer.nme"),
    (["train", f"--config={DIGITS}", WORKDIR, "--config.data.source=floppy"],
     "config.data.source"),
    (["train", f"--config={DIGITS}", WORKDIR, "--config.checkpoint.keep=0"],
     "config.checkpoint.keep"),
    (["train", "--config=experiments/no_such_file.py", WORKDIR], "--config"),
    (["compile", f"--config={DIGITS}", "--topology=cpu:8",
      "--config.train.log_every=0"], "config.train.log_every"),
    (["sweep", f"--config={STUDY}", WORKDIR, "--config.study.batchsize=3"],
     "config.study.batchsize"),
    (["lr-find", f"--config={DIGITS}", WORKDIR, "--config.train.log_every=0"],
     "config.train.log_every"),
]


def _run(argv):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # as a user's shell has it
  proc = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  heavy = proc.stderr.rsplit("HEAVY=", 1)[1].split()
  return proc, (heavy[0].split(",") if heavy else [])


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_help_imports_no_heavy_module(argv):
  proc, heavy = _run(argv)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("usage: jaxtrain")
  assert heavy == []


@pytest.mark.parametrize("argv,field", CONFIG_ERRORS, ids=lambda a: str(a)[-40:])
def test_config_error_is_one_line_and_imports_no_heavy_module(argv, field):
  proc, heavy = _run(argv)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.splitlines()
  assert len(lines) == 2 and lines[0].startswith("jaxtrain: error: "), lines
  assert field in lines[0]
  assert heavy == []


def test_the_probe_sees_heavy_modules_when_they_are_imported():
  # The checks above can fail: a command that builds a model imports JAX.
  proc, heavy = _run(["train", f"--config={DIGITS}", WORKDIR,
                      "--config.model.widht=3"])
  assert proc.returncode == 2, proc.stderr
  assert "jax" in heavy and "flax" in heavy


def test_lr_find_help_shows_every_default_and_how_the_suggestion_is_chosen():
  proc, _ = _run(["lr-find", "--help"])
  text = " ".join(proc.stdout.split())
  options = text.split(" options: ", 1)[1]
  for flag, default in (("--min_lr", "1e-05"), ("--max_lr", "10"),
                        ("--num_steps", "100"), ("--smoothing", "0.98"),
                        ("--divergence_factor", "4")):
    after = options.split(f"{flag} ", 1)[1]  # the option's help, then the others'
    assert re.search(r"\(default: ([^)]*)\)", after).group(1) == default, flag
  assert "minimum smoothed loss divided by 10" in text
  assert "steepest descent" in text


def test_sweep_help_describes_the_sweeps_own_workdir():
  proc, _ = _run(["sweep", "--help"])
  text = " ".join(proc.stdout.split())
  workdir = text.split(" options: ", 1)[1].split("--workdir DIR ", 1)[1]
  workdir = workdir.split(" multi-host ", 1)[0]
  assert "results.json" in workdir and "report.md" in workdir
  assert "skips the trials already" in workdir
  assert "checkpoints" not in workdir  # train's text, not the sweep's
