"""`jaxtrain sweep` / `report` / `lr-find` with a gs:// workdir, against the GCS
emulator (the `gcs` fixture, tests/gcs_emulator.py); a missing bucket is refused
before anything compiles."""
import contextlib
import csv
import io
import json
import os

import numpy as np

from jaxtrain import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = os.path.join(ROOT, "experiments", "scaling", "digits_cnn.py")
OVERRIDES = ["--config.model.features=(8,)", "--config.model.hidden=16",
             "--config.study.batch_sizes=(32,)", "--config.study.optimizers=('sgd',)",
             "--config.study.lr_grid=(0.5, 1.0)", "--config.study.warmup_epochs=(0.0,)",
             "--config.study.max_steps=10", "--config.study.eval_every=5",
             "--config.study.eval_every_epochs=0"]
PNG = b"\x89PNG\r\n\x1a\n"


def _main(argv) -> tuple[int, str]:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = cli.main(argv)
  return code, out.getvalue()


def _outputs(gcs, prefix):
  """The names under `prefix`, less the compilation cache (checked to be there:
  by default a run caches its programs beside its outputs, in the bucket too)."""
  names = gcs.names(prefix)
  assert any(n.startswith(f"{prefix}compile_cache/") for n in names), names
  return [n for n in names if not n.startswith(f"{prefix}compile_cache/")]


def test_sweep_writes_results_report_and_plots_into_the_bucket_and_resumes(gcs):
  argv = ["sweep", f"--config={STUDY}", "--workdir=gs://bucket/study", *OVERRIDES]
  code, out = _main(argv)
  assert code == 0, out
  assert set(_outputs(gcs, "study/")) == {
      f"study/{n}" for n in ("results.json", "results.csv", "report.md",
                             "steps_to_target.png", "best_learning_rate.png",
                             "learning_curves.png")}
  trials = json.loads(gcs.read("study/results.json"))["trials"]
  assert len(trials) == 2
  rows = list(csv.DictReader(io.StringIO(gcs.read("study/results.csv").decode())))
  assert [r["trial"] for r in rows] == [t["trial"] for t in trials]
  assert gcs.read("study/report.md").decode() in out
  for name in ("steps_to_target", "best_learning_rate", "learning_curves"):
    assert gcs.read(f"study/{name}.png").startswith(PNG)
  assert not os.path.exists("gs:") and not os.path.exists(os.path.join(ROOT, "gs:"))
  # Read back from the bucket: nothing runs again; `report` regenerates from there.
  code, out = _main(argv)
  assert code == 0 and "Resuming: 2 of 2 trials already in gs://bucket/study" in out
  assert "[1/" not in out
  code, out = _main(["report", "gs://bucket/study"])
  assert code == 0 and "| sgd | 32 |" in out


def test_lr_find_writes_csv_and_plot_into_the_bucket(gcs):
  code, out = _main(["lr-find", f"--config={STUDY}", "--workdir=gs://bucket/lr",
                     "--optimizer=sgd", "--min_lr=1e-3", "--max_lr=10",
                     "--num_steps=8", *OVERRIDES])
  assert code == 0, out
  assert _outputs(gcs, "lr/") == ["lr/lr_find.csv", "lr/lr_find.png"]
  rows = list(csv.DictReader(io.StringIO(gcs.read("lr/lr_find.csv").decode())))
  np.testing.assert_allclose([float(r["learning_rate"]) for r in rows],
                             1e-3 * 1e4 ** (np.arange(len(rows)) / 7), rtol=1e-5)
  assert gcs.read("lr/lr_find.png").startswith(PNG)
  assert "plot: gs://bucket/lr/lr_find.png" in out


def test_missing_bucket_is_refused_before_compiling(gcs, capsys):
  for command, extra in (("sweep", []), ("lr-find", ["--num_steps=8"])):
    code = cli.main([command, f"--config={STUDY}",
                     "--workdir=gs://no-such-bucket/run", *extra, *OVERRIDES])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--workdir='gs://no-such-bucket/run'" in err
    assert "gcloud storage buckets create gs://no-such-bucket" in err
  assert gcs.buckets() == ["bucket"]  # the check created no bucket
