"""`jaxtrain compile`: figures of the compiled train step vs values computed by hand.

The digits CNN (8x8x1 inputs, 3x3 convs of 32 and 64 channels, 2x2 max-pool, dense
128, 10 classes) has, counted from its layer shapes:
  parameters  3*3*1*32+32 + 3*3*32*64+64 + 1024*128+128 + 128*10+10 = 151,306
  forward     per example, 2 FLOPs per multiply-add:
              64*9*1*32*2 + 64*9*32*64*2 + 1024*128*2 + 128*10*2 = 2,660,864
A train step costs about 3 forward passes (forward, and backward for activations and
weights; Kaplan et al. 2020, arXiv 2001.08361, sec. 2.1).
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import processes

from jaxtrain import aot, cli
from jaxtrain.config import base_config

PARAMS = 151_306
DENSE_KERNEL = 1024 * 128
FORWARD_FLOPS = 64 * 9 * 32 * 2 + 64 * 9 * 32 * 64 * 2 + 1024 * 128 * 2 + 128 * 10 * 2
CNN_EXPERIMENT = """
from jaxtrain.config import base_config
def get_config(arg=None):
  c = base_config()
  c.model.name = "cnn"
  c.data.source = "arrays"
  c.train.batch_size = 64
  return c
"""


def _batch_bytes(per_device: int) -> int:
  return per_device * (8 * 8 * 1 * 4 + 4 + 4)  # float32 image, int32 label and index


def _experiment(tmp_path) -> str:
  path = tmp_path / "cnn_experiment.py"
  path.write_text(CNN_EXPERIMENT)
  return str(path)


def _run_cli(argv, capsys):
  rc = cli.main(argv)
  out, err = capsys.readouterr()
  return rc, out, err


def test_data_parallel_figures_match_the_model_and_a_too_small_budget_exits_1(
    tmp_path, capsys):
  report_path = tmp_path / "report.json"
  rc, out, err = _run_cli(["compile", f"--config={_experiment(tmp_path)}",
                           "--topology=cpu:8", "--memory_gib=0.001",
                           f"--json={report_path}"], capsys)
  assert rc == 1, err
  # 0.001 GiB = 1.024 MiB, shown with its digits (it read "0.00 GiB").
  assert "does not fit" in err and "the target has 1.02 MiB" in err, err
  assert "DOES NOT FIT" in out
  r = json.loads(report_path.read_text())
  assert r["param_count"] == PARAMS and r["target"]["devices"] == 8
  # Replicated params and momentum, 1/8 of the batch, and a few scalars.
  expected = 2 * 4 * PARAMS + _batch_bytes(64 // 8)
  assert expected <= r["memory"]["arguments"] <= expected + 1024
  assert r["memory"]["aliased"] >= 2 * 4 * PARAMS  # state donated in place
  ratio = r["flops"] / (3 * FORWARD_FLOPS * 64 / 8)
  assert 0.7 < ratio < 1.3, ratio
  assert r["peak_flops"] is None and r["step_seconds_at_half_mfu"] is None
  assert "at 50% MFU      - (no peak FLOP/s known for 'cpu'" in out
  reduced = sum(b for op, dtype, _, b in r["collectives"]
                if op == "all-reduce" and dtype == "f32")
  # Every gradient is all-reduced once, plus metric sums.
  assert 4 * PARAMS <= reduced <= 4 * PARAMS + 4096


def test_fsdp_rule_shards_the_dense_kernel_eight_ways():
  c = base_config()
  c.model.name, c.data.source, c.train.batch_size = "cnn", "arrays", 64
  c.mesh.data, c.mesh.fsdp = 1, 8
  c.sharding.rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"))
  report, _ = aot.compile_train_step(c, aot.get_target("cpu:8"))
  # The (embed=1024, mlp=128) kernel and its momentum keep 1/8 per device.
  expected = 2 * 4 * (PARAMS - DENSE_KERNEL * 7 // 8) + _batch_bytes(8)
  assert expected <= report.memory["arguments"] <= expected + 1024
  gathered = sum(b for op, _, _, b in report.collectives if op == "all-gather")
  assert gathered >= 4 * DENSE_KERNEL  # the kernel is gathered whole for use


def test_ema_adds_a_copy_of_the_params_to_the_compiled_state():
  c = base_config()
  c.model.name, c.data.source, c.train.batch_size = "cnn", "arrays", 64
  c.train.ema_decay = 0.999
  report, _ = aot.compile_train_step(c, aot.get_target("cpu:8"))
  # Replicated params, momentum and their average (the CNN has no batch stats).
  expected = 3 * 4 * PARAMS + _batch_bytes(64 // 8)
  assert expected <= report.memory["arguments"] <= expected + 1024
  assert report.state_bytes >= 3 * 4 * PARAMS


def test_unprepared_tfds_dataset_compiles_from_shape_and_metadata(tmp_path):
  c = base_config()
  c.model.name, c.train.batch_size = "cnn", 64
  c.data.name, c.data.data_dir = "imagenet2012", str(tmp_path)
  c.data.image_shape = (8, 8, 3)
  c.data.train_transforms = "decode|random_resized_crop(8)|flip|normalize"
  c.data.eval_transforms = "decode|center_crop(8)|normalize"
  report, _ = aot.compile_train_step(c, aot.get_target("cpu:8"))
  assert any("not prepared here" in n for n in report.notes)
  # 1000 ImageNet classes from the TFDS metadata; the first conv sees 3 channels.
  assert report.param_count == PARAMS - 9 * 32 * 1 + 9 * 32 * 3 + 128 * 990 + 990


def test_unprepared_dataset_without_image_shape_names_the_field(tmp_path):
  c = base_config()
  c.data.name, c.data.data_dir = "imagenet2012", str(tmp_path)
  with pytest.raises(Exception, match=r"config\.data\.image_shape"):
    aot.compile_config(c, aot.get_target("cpu:8"))


def test_tpu_topology_without_libtpu_says_how_to_install(tmp_path, capsys,
                                                         monkeypatch):
  monkeypatch.setattr(aot, "libtpu_available", lambda: False)
  rc, _, err = _run_cli(["compile", f"--config={_experiment(tmp_path)}",
                         "--topology=v4:8x8x16"], capsys)
  assert rc == 2
  assert "--topology='v4:8x8x16'" in err
  assert "pip install 'jaxtrain[tpu]'" in err and "JAX_PLATFORMS=cpu" in err


def test_more_cpu_devices_than_exist_names_the_flag(tmp_path, capsys):
  rc, _, err = _run_cli(["compile", f"--config={_experiment(tmp_path)}",
                         "--topology=cpu:64"], capsys)
  assert rc == 2 and "--topology='cpu:64'" in err
  assert "xla_force_host_platform_device_count=64" in err


@pytest.mark.skipif(not aot.libtpu_available(),
                    reason="libtpu not installed (pip install -e '.[tpu]')")
def test_v4_topology_compile_reports_tpu_memory_flops_and_all_reduce(tmp_path):
  report_path = tmp_path / "report.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [*processes.jaxtrain_cmd(), "compile",
       f"--config={_experiment(tmp_path)}", "--topology=v4:2x2x1",
       f"--json={report_path}"],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "TPU v4 (1 device per chip, 2 TensorCores)" in proc.stdout
  r = json.loads(report_path.read_text())
  assert r["target"]["kind"] == "TPU v4" and r["target"]["devices"] == 4
  assert r["target"]["memory_bytes"] == 32 * 2**30 and r["fits"]
  assert r["compute_dtype"] == "bfloat16"  # "auto" on a TPU
  # TPU layouts pad small arrays to (8, 128) tiles: at least, not wildly more.
  expected = 2 * 4 * PARAMS + _batch_bytes(64 // 4)
  assert expected <= r["memory"]["arguments"] <= 2 * expected
  ratio = r["flops"] / (3 * FORWARD_FLOPS * 64 / 4)
  assert 0.7 < ratio < 1.3, ratio
  # One v4 device is one chip (megacore): 275 TFLOP/s dense bf16 (Cloud TPU docs).
  assert r["peak_flops"] == 275e12
  seconds = r["flops"] / (0.5 * 275e12)
  assert r["step_seconds_at_half_mfu"] == pytest.approx(seconds)
  assert (f"at 50% MFU      {seconds * 1e6:.4g} us per step on each chip: FLOPs per "
          "device / (0.5 x 275 TFLOP/s dense bf16 peak)") in proc.stdout
  reduced = sum(b for op, _, _, b in r["collectives"] if op == "all-reduce")
  # Every gradient, reduced in float32 though the convolutions run in bfloat16
  # (jaxtrain.precision).
  assert {dtype for op, dtype, _, _ in r["collectives"] if op == "all-reduce"} == {
      "f32"}
  assert 4 * PARAMS <= reduced <= 4 * PARAMS + 4096


@pytest.mark.parametrize("seconds,text", [(1.25, "1.25 s"), (0.08334, "83.34 ms"),
                                          (8.334e-7, "0.8334 us")])
def test_step_times_are_shown_in_the_unit_that_fits(seconds, text):
  assert aot.fmt_seconds(seconds) == text
