"""The PyTorch side of benchmarks/gpu_check.py: one model's train step, served.

ResNet-50 is torchvision's ``resnet50`` (v1.5: stride on the 3x3 convolution, He et
al. 2015, arXiv:1512.03385, as NVIDIA DeepLearningExamples); ViT-B/16 is
torchvision's ``vit_b_16`` (Dosovitskiy et al. 2020, arXiv:2010.11929). The step is
the usual mixed-precision loop: ``torch.autocast(bfloat16)`` forward and loss,
backward, SGD with momentum 0.9; channels_last memory format; random inputs
already on the device. With ``--compile`` the model is ``torch.compile``d (default
mode). PyTorch is not a jaxtrain dependency: this runs where it is installed.

Protocol (stdout, one JSON object per line): after building and warming up it
prints ``{"ready": true, ...}`` (torch version, device, FLOPs of one step counted
by ``torch.utils.flop_counter.FlopCounterMode`` in eager mode, compile seconds);
then each stdin line ``N`` runs N steps and answers ``{"seconds": s}`` (CUDA
synchronized), ``mem`` answers ``{"peak_bytes": torch.cuda.max_memory_allocated()}``;
an empty line or EOF ends it.

  python3 benchmarks/gpu_torch_peer.py --model=resnet50 --batch=256 --size=224 [--compile]
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def build_model(name: str, size: int, toy: bool):
  """torchvision's model, or a toy of the same family (`--toy`, CPU dry runs)."""
  import torchvision  # pylint: disable=g-import-not-at-top
  from torchvision.models import vision_transformer  # pylint: disable=g-import-not-at-top
  if name == "resnet50":
    return torchvision.models.resnet18() if toy else torchvision.models.resnet50()
  if name == "vit_b16":
    if toy:
      return vision_transformer.VisionTransformer(
          image_size=size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
          mlp_dim=64)
    return torchvision.models.vit_b_16()
  raise ValueError(f"unknown model {name}")


def make_step(args):
  """(step, flops): `step()` runs one train step; FLOPs counted in eager mode."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  model = build_model(args.model, args.size, args.toy).to(device)
  model = model.to(memory_format=torch.channels_last).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  x = torch.randn(args.batch, 3, args.size, args.size, device=device)
  x = x.to(memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (args.batch,), device=device)

  def run(module):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
      loss = F.cross_entropy(module(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  flops = None
  if not args.compile:
    counter = FlopCounterMode(display=False)
    with counter:
      run(model)
    flops = counter.get_total_flops()
  forward = torch.compile(model) if args.compile else model
  return (lambda: run(forward)), flops, device


def sync(device) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  if device.type == "cuda":
    torch.cuda.synchronize()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("resnet50", "vit_b16"), required=True)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--compile", action="store_true")
  parser.add_argument("--toy", action="store_true", help="small model (dry runs)")
  parser.add_argument("--warmup", type=int, default=3)
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  step, flops, device = make_step(args)
  for _ in range(args.warmup):  # the first call compiles (--compile)
    step()
  sync(device)
  name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
  print(json.dumps({"ready": True, "torch": torch.__version__, "device": name,
                    "flops_per_step": flops,
                    "warmup_seconds": time.perf_counter() - t0}), flush=True)
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  for line in sys.stdin:
    line = line.strip()
    if not line:
      break
    if line == "mem":
      peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
      print(json.dumps({"peak_bytes": peak}), flush=True)
      continue
    t = time.perf_counter()
    for _ in range(int(line)):
      step()
    sync(device)
    print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
  main()
