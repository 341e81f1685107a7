"""The real train step compiled ahead of time for a TPU pod (`jaxtrain compile`).

Know whether a pod run fits before paying for the pod (MaxText's `train_compile.py`).
`jax.experimental.topologies.get_topology_desc("v4:8x8x16", "tpu")` (libtpu, no TPU
needed) gives the pod's devices; the experiment is built on a mesh of them (config.mesh
resolved against their count, config.train.batch_size global), its state described by
`jax.ShapeDtypeStruct`s with shardings (nothing is initialized), and the runner's own
`train_fn` (`program.compile_program`) is lowered and compiled by the TPU compiler.
The compiled program reports per-device memory (`memory_analysis`), FLOPs
(`cost_analysis`) and, in its HLO, the collectives it runs
(`jaxtrain.parallel.collectives`).

`--topology=cpu:N` compiles for N of this machine's CPU devices instead (tests,
quick checks without libtpu).

A dataset that is not prepared on this machine (ImageNet lives on the pod's bucket)
is not read: the batch takes `data.image_shape` and the class count from the TFDS
metadata, which changes none of the figures (they depend on shapes only).
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding

from jaxtrain import flops_meter
from jaxtrain import peak_flops
from jaxtrain import program as program_lib
from jaxtrain import runner
from jaxtrain.data import builders, sources, tfds_source, transforms
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import collectives
from jaxtrain.parallel import sharding

GIB = 2**30
MIB = 2**20
# device_kind -> (HBM GiB per chip, TensorCores per chip). A JAX device is one chip
# on megacore parts (v4, v5p: both cores as one device) and one core on v2/v3, so a
# device's share is chip HBM * device.num_cores / cores per chip: v2 8 GiB, v3 16
# GiB, v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB (Cloud TPU system architecture).
CHIPS = {"TPU v2": (16, 2), "TPU v3": (32, 2), "TPU v4": (32, 2),
         "TPU v5 lite": (16, 1), "TPU v5": (95, 2), "TPU v5p": (95, 2),
         "TPU v6 lite": (32, 1)}
# Generations whose topology must ask for megacore to get one device per chip (as
# on the hardware); v5p is megacore by default.
_MEGACORE = ("v4",)


@dataclasses.dataclass
class Target:
  """Devices to compile for and the memory each has (None: unknown)."""
  spec: str
  devices: list[Any]
  kind: str
  memory_bytes: int | None
  platform: str

  def describe(self) -> str:
    n, d = len(self.devices), self.devices[0]
    if self.platform == "cpu":
      return f"{n} x CPU device"
    cores = getattr(d, "num_cores", 1)
    chips_per = CHIPS.get(self.kind, (0, cores))[1]
    unit = (f"1 device per chip, {cores} TensorCores" if cores == chips_per
            else f"1 device per TensorCore, {chips_per} per chip")
    return f"{n} x {self.kind} ({unit})"


def libtpu_available() -> bool:
  return bool(os.environ.get("TPU_LIBRARY_PATH")) or (
      importlib.util.find_spec("libtpu") is not None)


def _quiet_libtpu() -> None:
  """On a machine without TPU chips, stops libtpu's start-up complaints.

  Without these it logs that it cannot find the (absent) TPU VM's accelerator type
  and worker hostnames, and a second process compiling at the same time fails on
  /tmp/libtpu_lockfile. None of them changes the topology compiled for.
  """
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return
  for key, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_ACCELERATOR_TYPE", "v4-8")):
    os.environ.setdefault(key, value)
  if not os.environ.get("JAX_PLATFORMS"):
    # With libtpu importable, the default backend search would try to start a TPU.
    jax.config.update("jax_platforms", "cpu")


def _device_memory(device: Any) -> int | None:
  chip = CHIPS.get(device.device_kind)
  if chip is None:
    return None
  gib, cores_per_chip = chip
  return int(gib * GIB * getattr(device, "num_cores", 1) / cores_per_chip)


def get_target(spec: str) -> Target:
  """`v4:8x8x16` (any name libtpu knows) or `cpu:N`; raises ConfigError on --topology."""
  if spec.startswith("cpu:"):
    count = spec[4:]
    if not count.isdigit() or int(count) < 1:
      raise ConfigError("--topology", spec, "use cpu:N with N >= 1 devices")
    devices = jax.devices("cpu")
    if int(count) > len(devices):
      raise ConfigError("--topology", spec, f"this process has {len(devices)} CPU "
                        f"device(s); run with XLA_FLAGS=--xla_force_host_platform_"
                        f"device_count={count}")
    return Target(spec, devices[:int(count)], "cpu", None, "cpu")
  if not libtpu_available():
    raise ConfigError("--topology", spec, "compiling for a TPU topology needs libtpu: "
                      "pip install 'jaxtrain[tpu]', then run jaxtrain with "
                      "JAX_PLATFORMS=cpu on machines without TPUs (with libtpu "
                      "installed, `import jax` otherwise tries to start a TPU)")
  _quiet_libtpu()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = {"chip_config_name": "megacore"} if spec.split(":")[0] in _MEGACORE else {}
  try:
    devices = topologies.get_topology_desc(spec, "tpu", **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError("--topology", spec, f"libtpu does not know this topology "
                      f"({str(e).splitlines()[0][:200]}); use e.g. v4:8x8x16, "
                      "v5p:8x8x16, v3:16x32, v5e:16x16, v6e:16x16 or cpu:8") from None
  return Target(spec, list(devices), devices[0].device_kind,
                _device_memory(devices[0]), "tpu")


def _prepared_here(data: ml_collections.ConfigDict) -> bool:
  """Whether the TFDS dataset can be read on this machine (local builders can)."""
  name = data.name.split(":")[0]
  if name.split("/")[0] in builders.LOCAL:
    return True
  try:
    data_dir = tfds_source.resolve_data_dir(data.data_dir)
  except ConfigError:  # e.g. the pod's gs:// bucket
    return False
  return name in tfds_source.available_datasets(data_dir)


def _tfds_num_classes(data: ml_collections.ConfigDict) -> int:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    features = tfds.builder(data.name.split(":")[0]).info.features
    return int(features[data.label_key].num_classes)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError("data.name", data.name, f"not prepared here and its class "
                      f"count is not in the TFDS metadata ({e})") from None


def compile_config(config: ml_collections.ConfigDict, target: Target
                   ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """The config to build for `target`, and notes on what was substituted.

  precision "auto" resolves for the target's platform (bf16 on TPU); a TFDS dataset
  not prepared here becomes synthetic data of the same shape and class count (batch
  ops kept: they add the soft "targets" input).
  """
  c = ml_collections.ConfigDict(config.to_dict())
  notes = []
  if c.precision.compute_dtype == "auto":
    c.precision.compute_dtype = "bfloat16" if target.platform != "cpu" else "float32"
  data = c.data
  if data.source != "tfds" or _prepared_here(data):
    return c, notes
  shape = tuple(data.image_shape)
  if not shape:
    raise ConfigError("data.image_shape", shape, f"'{data.name}' is not prepared "
                      "here, so compile takes the input shape from data.image_shape; "
                      "set it, e.g. (224, 224, 3)")
  num_classes = _tfds_num_classes(data)
  batch_ops = [op for op in data.train_transforms.split("|")
               if op.strip().split("(")[0].strip() in transforms.BATCH_OPS]
  notes.append(f"data: tfds '{data.name}' is not prepared here; compiled with "
               f"{shape} images and {num_classes} classes (TFDS metadata)")
  data.source, data.train_transforms, data.eval_transforms = (
      "synthetic", "|".join(batch_ops), "")
  data.synthetic.image_shape, data.synthetic.num_classes = shape, num_classes
  for key in ("data_dir", "image_key", "label_key"):  # read by tfds sources only
    data[key] = sources.default_config()[key]
  if c.train.num_epochs:
    notes.append(f"steps: the split size is unknown here, so the schedule uses "
                 f"train.num_steps={c.train.num_steps} (memory and FLOPs do not "
                 "depend on it)")
    c.train.num_epochs = 0.0
  return c, notes


def _physical_mesh(mesh: Mesh, devices: list[Any]) -> Mesh:
  """The same mesh with devices ordered for the pod's torus (as on the hardware)."""
  try:
    array = mesh_utils.create_device_mesh(mesh.devices.shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    return mesh
  return Mesh(array, mesh.axis_names, axis_types=mesh.axis_types)


def _on_mesh(exp: runner.Experiment, mesh: Mesh) -> runner.Experiment:
  """`exp` on `mesh` (same axes, devices reordered): a distillation teacher's
  abstract variables move to it too."""
  teacher = exp.teacher
  if teacher is not None:
    moved = jax.tree.map(lambda x: NamedSharding(mesh, x.sharding.spec),
                         teacher.variables)
    teacher = dataclasses.replace(
        teacher, variables=sharding.abstract(teacher.variables, moved))
  return dataclasses.replace(exp, mesh=mesh, teacher=teacher)


def _example_batch(exp: runner.Experiment) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch `pipeline.to_global` would feed: every key, shape and dtype."""
  return program_lib.example_batch(
      exp, exp.train_source.load_batch(np.arange(2), train=True))


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.shape if leaf.sharding is None else leaf.sharding.shard_shape(
        leaf.shape)
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


@dataclasses.dataclass
class Report:
  """What the compiled train step needs per device, per step."""
  target: Target
  mesh_shape: dict[str, int]
  batch_size: int
  compute_dtype: str
  param_count: int
  state_bytes: int            # TrainState bytes on one device, from its shardings
  batch_bytes: int            # one device's share of the global batch
  memory: dict[str, int]      # arguments, outputs, aliased, temporaries, code, total
  flops: float                # per device per step (cost analysis)
  collectives: list[tuple[str, str, int, int]]  # (op, dtype, arrays, bytes)
  seconds: dict[str, float]   # lower, compile
  notes: list[str]
  peak_flops: float | None = None  # dense bf16 FLOP/s per device (peak_flops)

  @property
  def fits(self) -> bool:
    limit = self.target.memory_bytes
    return limit is None or self.memory["total"] <= limit

  @property
  def step_seconds_at_half_mfu(self) -> float | None:
    """The step time at 50% MFU: FLOPs per device / (0.5 * peak per device).

    Devices run their shares of the step at once, so this is also the time each
    chip needs for its devices' shares at half its peak. None without a known
    peak or FLOP count.
    """
    if not self.peak_flops or not self.flops:
      return None
    return self.flops / (0.5 * self.peak_flops)

  def to_json(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["target"] = {"spec": self.target.spec, "kind": self.target.kind,
                   "devices": len(self.target.devices),
                   "memory_bytes": self.target.memory_bytes}
    d["fits"] = self.fits
    d["step_seconds_at_half_mfu"] = self.step_seconds_at_half_mfu
    return d


def _memory(compiled: Any) -> dict[str, int]:
  m = compiled.memory_analysis()
  memory = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
            "generated_code": m.generated_code_size_in_bytes}
  # Donated state is both an argument and an output but occupies one buffer.
  memory["total"] = (memory["arguments"] + memory["outputs"] - memory["aliased"]
                     + memory["temporaries"] + memory["generated_code"])
  return memory


def compile_train_step(config: ml_collections.ConfigDict,
                       target: Target) -> tuple[Report, Any]:
  """Builds the experiment on `target`'s devices and compiles its train step.

  Returns:
    (report, compiled): the figures, and the `jax.stages.Compiled` step.
  """
  config, notes = compile_config(config, target)
  exp = runner.build(config, target.devices)
  if target.platform != "cpu":
    exp = _on_mesh(exp, _physical_mesh(exp.mesh, target.devices))
  rules = config.sharding.rules
  program = program_lib.compile_program(exp, abstract=True)  # nothing allocated
  state, teacher = program.abstract_state, program.teacher_args
  batch = _example_batch(exp)
  sums = jax.eval_shape(program.init_sums)
  if config.train.steps_per_dispatch > 1:
    notes.append(f"train.steps_per_dispatch={config.train.steps_per_dispatch}: the "
                 "run scans that many steps per program; compiled here: one step")
  t0 = time.perf_counter()
  with sharding.activate(exp.mesh, rules):
    lowered = program.train_fn.lower(state, sums, batch, *teacher)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  report = Report(
      target=target, mesh_shape=dict(exp.mesh.shape), batch_size=config.train.batch_size,
      compute_dtype=config.precision.compute_dtype,
      param_count=sum(math.prod(p.shape) for p in jax.tree.leaves(state.params)),
      state_bytes=per_device_bytes(state), batch_bytes=per_device_bytes(batch),
      memory=_memory(compiled), flops=flops_meter.compiled_flops(compiled) or 0.0,
      collectives=[(op, dtype, t.count, t.bytes) for (op, dtype), t in
                   collectives.summary(compiled.as_text(), by_dtype=True).items()],
      seconds={"lower": t1 - t0, "compile": t2 - t1}, notes=notes,
      peak_flops=peak_flops.device_peak_flops(target.devices[0]))
  return report, compiled


def _mib(n: float) -> str:
  return f"{n / MIB:10.1f} MiB"


def fmt_bytes(n: float) -> str:
  """Bytes with three significant digits in the unit that fits: 1.02 MiB, 31.8 GiB."""
  for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
    if n >= scale:
      return f"{n / scale:.3g} {unit}"
  return f"{n:.0f} bytes"


def fmt_seconds(t: float) -> str:
  """Seconds with four significant digits in the unit that fits: 1.25 s, 83.34 us."""
  for unit, scale in (("s", 1.0), ("ms", 1e-3)):
    if t >= scale:
      return f"{t / scale:.4g} {unit}"
  return f"{t / 1e-6:.4g} us"


def _half_mfu_line(r: Report) -> str:
  """The step time at 50% MFU, or why there is none."""
  seconds = r.step_seconds_at_half_mfu
  if seconds is None:
    why = ("no FLOP count from the compiler" if not r.flops else
           f"no peak FLOP/s known for '{r.target.kind}' (jaxtrain.peak_flops)")
    return f"at 50% MFU      - ({why})"
  return (f"at 50% MFU      {fmt_seconds(seconds)} per step on each chip: FLOPs per "
          f"device / (0.5 x {r.peak_flops / peak_flops.TERA:.4g} TFLOP/s dense bf16 "
          "peak)")


def format_report(r: Report) -> str:
  """The report as the CLI prints it."""
  n = len(r.target.devices)
  mesh = " ".join(f"{k}={v}" for k, v in r.mesh_shape.items())
  limit = r.target.memory_bytes
  lines = [
      f"target    {r.target.spec}: {r.target.describe()}"
      + (f", {fmt_bytes(limit)} per device" if limit else ""),
      f"mesh      {mesh}; global batch {r.batch_size} ({r.batch_size / n:g} per "
      f"device); compute {r.compute_dtype}",
      f"model     {r.param_count:,} parameters; train state {r.state_bytes / MIB:.1f} "
      f"MiB per device, batch {r.batch_bytes / MIB:.1f} MiB per device",
      f"compile   lowered in {r.seconds['lower']:.1f} s, compiled in "
      f"{r.seconds['compile']:.1f} s",
      *(f"note      {note}" for note in r.notes),
      "", "memory per device (compiled program)"]
  labels = (("arguments", "arguments (state, sums, batch)"),
            ("outputs", "outputs"), ("aliased", "- donated (aliased) outputs"),
            ("temporaries", "temporaries"), ("generated_code", "generated code"),
            ("total", "total"))
  lines += [f"  {label:<32}{_mib(r.memory[key])}" for key, label in labels]
  if limit:
    verdict = "fits" if r.fits else "DOES NOT FIT"
    lines.append(f"  {'HBM per device':<32}{_mib(limit)}   "
                 f"{100 * r.memory['total'] / limit:.1f}% used: {verdict}")
  else:
    lines.append("  no memory limit known for this target (--memory_gib sets one)")
  per_example = r.flops * n / r.batch_size
  lines += ["", f"FLOPs per step  {r.flops:.4g} per device, {r.flops * n:.4g} in all "
            f"({per_example / 1e9:.2f} GFLOP per example)", _half_mfu_line(r), "",
            "collectives per step (per device; arrays of a combined op counted "
            "one by one)"]
  if not r.collectives:
    lines.append("  none")
  for op, dtype, count, size in r.collectives:
    lines.append(f"  {op:<20} {dtype:<5} {count:6d} arrays {_mib(size)}")
  return "\n".join(lines)
