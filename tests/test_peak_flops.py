"""The peak-FLOP/s table's lookup from device kinds, and MFU."""
import os
import subprocess
import sys
import types

import jax
import pytest

from jaxtrain import peak_flops as pf


@pytest.mark.parametrize("kind,tflops", [
    ("TPU v3", 123), ("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5e", 197),
    ("TPU v5", 459), ("TPU v5p", 459), ("TPU v6 lite", 918), ("TPU v6e", 918),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-SXM4-40GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H200", 989.4),
])
def test_known_kinds(kind, tflops):
  assert pf.peak_flops(kind) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("kind", ["cpu", "TPU v2", "NVIDIA H100 PCIe",
                                  "NVIDIA H100 NVL", "NVIDIA H200 NVL",
                                  "NVIDIA GeForce RTX 4090", "TPU v4 lite", ""])
def test_unknown_kinds_give_none(kind):
  assert pf.peak_flops(kind) is None


def test_this_hosts_cpu_is_unknown():
  assert pf.peak_flops(jax.devices()[0].device_kind) is None


@pytest.mark.parametrize("kind,num_cores,tflops", [
    ("TPU v3", 1, 123 / 2),      # one device per TensorCore, two per chip
    ("TPU v4", 2, 275),          # megacore: one device per chip
    ("TPU v4", 1, 275 / 2),      # a v4 topology without megacore
    ("TPU v5p", 2, 459), ("TPU v5 lite", 1, 197), ("TPU v6 lite", 1, 918),
    ("NVIDIA H200", None, 989.4),  # CUDA devices have no num_cores
])
def test_device_peak_shares_a_chip_among_its_devices(kind, num_cores, tflops):
  device = types.SimpleNamespace(device_kind=kind)
  if num_cores is not None:
    device.num_cores = num_cores
  assert pf.device_peak_flops(device) == pytest.approx(tflops * 1e12)


def test_device_peak_of_this_hosts_cpu_is_unknown():
  assert pf.device_peak_flops(jax.devices()[0]) is None


def test_mfu():
  # 8 chips, 4e15 FLOPs per step in 0.5 s: 1e15 FLOP/s per chip; of a 2e15 peak
  # that is 50%.
  assert pf.mfu(4e15, 0.5, 8, 2e15) == pytest.approx(0.5)
  # One TPU v4 chip doing 137.5 TFLOP in one second: half its 275 TFLOP/s peak.
  assert pf.mfu(137.5e12, 1.0, 1, pf.peak_flops("TPU v4")) == pytest.approx(0.5)


@pytest.mark.parametrize("args", [(1.0, 0.0, 1, 1.0), (1.0, 1.0, 0, 1.0),
                                  (1.0, 1.0, 1, 0.0)])
def test_mfu_refuses_nonpositive_inputs(args):
  with pytest.raises(ValueError, match="mfu needs"):
    pf.mfu(*args)


def test_measured_matmul_rate_prints_one_number_for_train_peak_tflops():
  # `--config.train.peak_tflops=$(python -m jaxtrain.peak_flops)`: stdout is the
  # number alone; what it is goes to stderr.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.peak_flops"], env=env,
                        capture_output=True, text=True, timeout=300, check=True)
  tflops = float(proc.stdout)
  assert 0 < tflops < 1e4, proc.stdout
  assert "measured float32 matmul TFLOP/s of one 'cpu' device" in proc.stderr
