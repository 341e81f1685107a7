"""benchmarks/gpu_check.py --dry-run: the GPU check's code, at toy size on CPU."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_dry_run_fills_every_row(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(OUT=str(tmp_path), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks",
                                                      "gpu_check.py"), "--dry-run"],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "gpu_check.json") as f:
    report = json.load(f)
  rows = report["rows"]
  assert not [r for r in rows if "FAILED" in str(r.get("notes"))], rows
  assert report["header"]["compute_dtype(auto)"] == "float32"  # CPU
  (digits,) = [r for r in rows if r["row"].startswith("digits")]
  assert "test accuracy" in digits["notes"] and "12 steps" in digits["notes"]
  for label in ("ResNet-50 train step", "ViT-B/16 train step"):
    (ours,) = [r for r in rows if r["row"] == label and r["variant"] == "jaxtrain"]
    assert ours["images_s"] > 0 and ours["TFLOP_s"] > 0
    assert "f64 ops 0" in ours["notes"]
    (amp,) = [r for r in rows if r["row"] == label
              and r["variant"] == "jaxtrain, weight_grad_dtype=compute"]
    assert amp["images_s"] > 0 and "f64 ops 0" in amp["notes"]
    torch_rows = [r for r in rows
                  if r["row"] == label and not r["variant"].startswith("jaxtrain")]
    if importlib.util.find_spec("torch") is None:
      assert [r["notes"] for r in torch_rows] == ["skipped: torch is not installed"]
    else:
      assert {r["variant"] for r in torch_rows} >= {"torch eager"}
  table = (tmp_path / "gpu_check.txt").read_text()
  assert table.splitlines()[1].startswith("| row | variant | images/s")
  assert table.count("\n| ") == len(rows) + 1
