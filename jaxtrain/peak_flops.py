"""Dense bf16 peak FLOP/s per chip, for model FLOPs utilization (MFU).

MFU = achieved FLOP/s per chip / peak FLOP/s per chip (Chowdhery et al., PaLM, 2022,
arXiv 2204.02311, appendix B). The peaks below are the vendors' dense (no 2:4
sparsity) bf16 matrix-unit figures per chip; a device kind not listed (CPU, an H100
PCIe or NVL card, whose clocks and power differ from the SXM part) gives None rather
than a guess.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp

TERA = 1e12

# name -> dense bf16 FLOP/s per chip.
PEAK_BF16_FLOPS: dict[str, float] = {
    # Google Cloud TPU docs, "TPU v3" system architecture table: "Peak compute
    # per chip 123 teraflops (bf16)" (https://cloud.google.com/tpu/docs/v3).
    "tpu_v3": 123 * TERA,
    # "TPU v4" page: "Peak compute per chip 275 teraflops (bf16 or int8)"
    # (https://cloud.google.com/tpu/docs/v4).
    "tpu_v4": 275 * TERA,
    # "TPU v5e" page: "Peak compute per chip (bf16) 197 TFLOPs"
    # (https://cloud.google.com/tpu/docs/v5e).
    "tpu_v5e": 197 * TERA,
    # "TPU v5p" page: "Peak compute per chip (bf16) 459 TFLOPs"
    # (https://cloud.google.com/tpu/docs/v5p-training).
    "tpu_v5p": 459 * TERA,
    # "TPU v6e" (Trillium) page: "Peak compute per chip (bf16) 918 TFLOPs"
    # (https://docs.cloud.google.com/tpu/docs/v6e).
    "tpu_v6e": 918 * TERA,
    # NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf):
    # "BFLOAT16 Tensor Core 312 TFLOPS | 624 TFLOPS*", * = with sparsity; 312
    # dense, the same for SXM4 and PCIe, 40 and 80 GB. The datasheet is not among
    # our stored sources: figures as tabulated from it (dense 312, sparse 624) at
    # https://glennklockwood.com/garden/processors/A100.
    "a100": 312 * TERA,
    # NVIDIA H100 datasheet, SXM column: "BFLOAT16 Tensor Core 1,979 TFLOPS*", *
    # "Shown with sparsity. Specifications 1/2 lower without sparsity" (table as
    # reproduced at https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html);
    # 989.4 TFLOPS dense BF16 matrix from NVIDIA's Hopper whitepaper, as tabulated
    # (dense 989.4, sparse 1978.9) at glennklockwood.com/garden/processors/h100.
    "h100_sxm": 989.4 * TERA,
    # NVIDIA's H200 datasheet was not among the stored sources. Same GH100 compute
    # as H100 SXM, "FP16 / BF16 (dense) ~989 TFLOPS" for H200 SXM per
    # https://itkb.uw.cz/2026/06/nvidia-h200-vs-b300-precisions-cores.html (its
    # 1,979 TFLOPS headline, like the H100's, is with sparsity).
    "h200_sxm": 989.4 * TERA,
}

# (pattern on the lower-cased jax.Device.device_kind, table key); first match wins.
# JAX reports TPU v5e as "TPU v5 lite", v5p as "TPU v5" or "TPU v5p", v6e as
# "TPU v6 lite"; CUDA reports e.g. "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
# (SXM), "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA H200 NVL".
_KINDS: tuple[tuple[str, Optional[str]], ...] = (
    (r"^tpu v3\b", "tpu_v3"),
    (r"^tpu v4\b(?! lite)", "tpu_v4"),
    (r"^tpu v5 ?(lite|e)\b", "tpu_v5e"),
    (r"^tpu v5p?$", "tpu_v5p"),
    (r"^tpu v6 ?(lite|e)\b", "tpu_v6e"),
    (r"\ba100\b", "a100"),
    (r"\bh100\b.*\b(pcie|nvl)\b", None),  # lower clocks/power than SXM: unknown
    (r"\bh100\b", "h100_sxm"),
    (r"\bh200\b.*\bnvl\b", None),
    (r"\bh200\b", "h200_sxm"),
)


def _table_key(device_kind: str) -> Optional[str]:
  kind = device_kind.strip().lower()
  for pattern, key in _KINDS:
    if re.search(pattern, kind):
      return key
  return None


def peak_flops(device_kind: str) -> Optional[float]:
  """Dense bf16 peak FLOP/s of one chip of `device_kind`, or None if unknown.

  Args:
    device_kind: `jax.Device.device_kind`, e.g. "TPU v4", "TPU v5 lite",
      "NVIDIA H200"; "cpu" and kinds not in the table give None.

  Returns:
    FLOP/s per chip, or None.
  """
  key = _table_key(device_kind)
  return None if key is None else PEAK_BF16_FLOPS[key]


# TensorCores per chip of the table's multi-core TPUs. JAX shows a v4 or v5p chip as
# one device (megacore, `num_cores` 2) and a v3 chip as two (`num_cores` 1 each).
_CORES_PER_CHIP = {"tpu_v3": 2, "tpu_v4": 2, "tpu_v5p": 2}


def device_peak_flops(device: Any) -> Optional[float]:
  """Dense bf16 peak FLOP/s of one JAX device, or None if unknown.

  The chip's peak (`peak_flops`), shared by the devices of a chip where JAX shows
  each TensorCore as a device (TPU v3; a v4 topology compiled without megacore).

  Args:
    device: a `jax.Device` (or anything with `device_kind` and, on TPUs,
      `num_cores`).
  """
  key = _table_key(device.device_kind)
  if key is None:
    return None
  cores = _CORES_PER_CHIP.get(key, 1)
  return PEAK_BF16_FLOPS[key] * getattr(device, "num_cores", cores) / cores


def mfu(flops_per_step: float, step_seconds: float, n_devices: int,
        peak: float) -> float:
  """Model FLOPs utilization: achieved FLOP/s per device over the peak.

  Args:
    flops_per_step: FLOPs of one train step over all devices (e.g. from the
      compiled step's cost analysis, summed over devices).
    step_seconds: measured wall time of one step.
    n_devices: number of devices the step ran on.
    peak: peak FLOP/s of one device (`peak_flops(...)`, or a measured one).

  Returns:
    A fraction (1.0 = the peak).

  Raises:
    ValueError: a non-positive time, device count or peak.
  """
  if step_seconds <= 0 or n_devices < 1 or peak <= 0:
    raise ValueError(f"mfu needs step_seconds > 0, n_devices >= 1, peak > 0; got "
                     f"{step_seconds}, {n_devices}, {peak}")
  return flops_per_step / step_seconds / n_devices / peak


def measured_matmul_flops(dtype: Any = jnp.float32, n: int = 2048,
                          repeats: int = 5, device: Any = None) -> float:
  """FLOP/s one device reaches on an n x n by n x n matmul (2 n^3 FLOPs), best of
  `repeats` timed runs after a compile-and-warm-up run.

  A practical peak where the table has none (CPUs): `train.peak_tflops` takes it,
  and train/mfu is then utilization of what this device's matmul reaches, not of a
  vendor's figure. `python -m jaxtrain.peak_flops` prints it in TFLOP/s.
  """
  device = device or jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


if __name__ == "__main__":
  # The number alone on stdout: --config.train.peak_tflops=$(python -m ...).
  _kind = jax.devices()[0].device_kind
  print(f"{measured_matmul_flops() / TERA:.4g}")
  print(f"(measured float32 matmul TFLOP/s of one '{_kind}' device; the table's "
        f"dense bf16 peak: {(peak_flops(_kind) or 0) / TERA:g}, 0 = none)",
        file=sys.stderr)
