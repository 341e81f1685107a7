"""A validated experiment config as typed, frozen settings.

An experiment is written and overridden as an `ml_collections.ConfigDict`
(`jaxtrain.config`: ``get_config()`` and ``--config.a.b=value``); `config.validate`
checks it once and returns `Settings`, which every layer below the CLI reads:

- the sections every run reads the same way (`train`, `mesh`, `precision`,
  `checkpoint`) are frozen dataclasses, so a reader (and a type checker) sees each
  field's type and default here, in one place; `config.base_config` builds the
  ConfigDict defaults from these classes, so the two cannot drift apart;
- the sections whose fields depend on a choice (the model's options beside
  `model.name`, the loss's, the data source's, the optimizer's and its plug-in
  kwargs, distillation, trackers, init_from, sharding rules) stay key-value
  sections, frozen (`ml_collections.FrozenConfigDict`).

Nothing can change a `Settings` after validation: a run is the run that was
checked. Code that derives a new experiment from one (a sweep's trials, lr-find,
`jaxtrain compile`) edits a copy (`Settings.to_config`) and validates that.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

from jaxtrain import validated

_Section = ml_collections.FrozenConfigDict


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """`train.early_stopping` (jaxtrain.early_stopping)."""
  metric: str = ""          # e.g. "eval/accuracy" or "eval_ema/loss"; "": off
  mode: str = "max"         # max | min: which direction is better
  patience: int = 0         # stop after this many evals without improvement;
                            # 0: never stop, only keep (and restore) the best
  min_delta: float = 0.0    # an improvement must exceed this
  restore_best: bool = True  # end with the best checkpoint's state


@dataclasses.dataclass(frozen=True)
class Train:
  """`config.train`: run length, logging, evaluation, stages, EMA, early stopping."""
  batch_size: int = 128          # global batch size, over all processes
  num_steps: int = 1000          # used when num_epochs == 0
  num_epochs: float = 0.0        # > 0: num_steps = ceil(num_epochs * train size / batch)
  log_every: int = 50            # fetch and write train metrics every this many steps
  eval_every: int = 0            # 0: evaluate only at the end
  eval_batch_size: int = 0       # 0: same as batch_size
  on_nonfinite: str = "halt"     # halt | skip: after a step with NaN/Inf loss or grads
  max_consecutive_skips: int = 10  # skip: halt after this many skipped steps in a row
  steps_per_dispatch: int = 1    # k > 1: k steps per host dispatch (lax.scan)
  profile_steps: tuple[int, int] = (0, 0)  # (start, stop): JAX profiler trace into
                                           # workdir/profile
  # Peak TFLOP/s per device for train/mfu; 0: the device kind's dense bf16 peak
  # (jaxtrain.peak_flops; none for CPUs: then train/mfu is not logged).
  peak_tflops: float = 0.0
  # JAX's persistent compilation cache (jaxtrain.compile_cache): "" is
  # workdir/compile_cache, a path (e.g. one shared by a pod's hosts) is used as
  # given, "off" compiles everything afresh.
  compilation_cache_dir: str = ""
  # ((from_step, image_size, batch_size), ...): progressive resizing / growing
  # batches; the first from step 0; 0 keeps the transforms' size / batch_size.
  stages: tuple[tuple[int, int, int], ...] = ()
  diagnostics: bool = False      # per-step update norms/ratios, trust ratios, noise
                                 # scale as train/... (jaxtrain.step_diagnostics)
  ema_decay: float = 0.0         # > 0: EMA of params + BN stats, evaluated as eval_ema/
  ema_warmup_power: float = 0.0  # > 0: decay min(1 - (1 + (t-1)/gamma)^-power, decay)
  ema_warmup_gamma: float = 1.0  #      (timm ModelEmaV3 warmup); 0: constant decay
  early_stopping: EarlyStopping = dataclasses.field(default_factory=EarlyStopping)


@dataclasses.dataclass(frozen=True)
class Mesh:
  """`config.mesh`: axis sizes; -1 fills the remaining devices (jaxtrain.parallel)."""
  data: int = -1
  fsdp: int = 1
  model: int = 1


@dataclasses.dataclass(frozen=True)
class Precision:
  """`config.precision` (jaxtrain.precision)."""
  compute_dtype: str = "auto"    # auto | bfloat16 | float32
  # float32: weight gradients with float32 results, summed across replicas in
  # float32 | compute: autocast's (bf16, then cast; 1.33x faster ResNet-50 step on
  # one H200, summed in bf16). See jaxtrain/precision.py.
  weight_grad_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """`config.checkpoint` (jaxtrain.checkpoint)."""
  every: int = 500         # save every this many steps (and at the end); 0: end only
  keep: int = 3            # keep the newest N checkpoints (+ the best, with
                           # train.early_stopping.metric, in workdir/best)
  restore: str = "auto"    # auto: resume if present | never: start fresh | required
  async_save: bool = True


_TYPED = {"train": Train, "mesh": Mesh, "precision": Precision,
          "checkpoint": Checkpoint}


def default_section(name: str) -> ml_collections.ConfigDict:
  """The ConfigDict defaults of a typed section (`config.base_config`)."""
  return ml_collections.ConfigDict(dataclasses.asdict(_TYPED[name]()))


@dataclasses.dataclass(frozen=True)
class Settings:
  """A validated experiment: what `config.validate` returns (see the module doc).

  Attributes:
    seed: the one seed for init, data order, augmentation and dropout.
    model: ``name`` and the model's keyword arguments (frozen key-value section).
    loss: the loss and its options, e.g. ``label_smoothing``.
    data: the source, splits, transforms and their options.
    optimizer: ``name``, its hyperparameters and schedule, masks, plug-in kwargs.
    train: run length, logging, evaluation, stages, EMA, early stopping (`Train`).
    mesh: the device mesh's axis sizes (`Mesh`).
    sharding: logical-axis rules for tensor and FSDP sharding.
    precision: compute and weight-gradient dtypes (`Precision`).
    checkpoint: save interval, retention, restore mode (`Checkpoint`).
    distill: the distillation teacher (empty ``teacher_workdir``: none).
    logging: the metric writers and trackers and their options.
    init_from: weights a fresh run starts from (another run or a file).
  """
  seed: int
  model: _Section
  loss: _Section
  data: _Section
  optimizer: _Section
  train: Train
  mesh: Mesh
  sharding: _Section
  precision: Precision
  checkpoint: Checkpoint
  distill: _Section
  logging: _Section
  init_from: _Section

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Settings":
    """Freezes a config that `config.validate` has checked (use that instead)."""
    fields = {}
    for f in dataclasses.fields(cls):
      value = config[f.name]
      if f.name in _TYPED:
        fields[f.name] = _typed(_TYPED[f.name], value.to_dict())
      elif isinstance(value, ml_collections.ConfigDict):
        fields[f.name] = frozen = ml_collections.FrozenConfigDict(value)
        validated.mark(frozen)  # get_source & co. read it without checking again
      else:
        fields[f.name] = value
    return cls(**fields)

  def to_dict(self) -> dict[str, Any]:
    """Plain values, as `ConfigDict.to_dict` gives them (checkpoints, trackers)."""
    out = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
      elif isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
      out[f.name] = value
    return out

  def with_section(self, name: str, **changes: Any) -> "Settings":
    """A copy with fields of a key-value section changed (e.g. ``"data",
    eval_split="test"``). The changed section is not marked as validated, so the
    layer that reads it checks it again (`jaxtrain.validated`)."""
    section = getattr(self, name)
    if not isinstance(section, ml_collections.ConfigDict):
      raise TypeError(f"Settings.{name} is not a key-value section")
    edited = section.as_configdict()
    edited.update(changes)
    return dataclasses.replace(
        self, **{name: ml_collections.FrozenConfigDict(edited)})

  def to_config(self) -> ml_collections.ConfigDict:
    """A mutable copy, to derive another experiment from (validate it again)."""
    return ml_collections.ConfigDict(self.to_dict())


def _typed(cls, values: Mapping[str, Any]):
  kwargs = {k: _frozen(v) for k, v in values.items()}
  if cls is Train:
    kwargs["early_stopping"] = EarlyStopping(**kwargs["early_stopping"])
  return cls(**kwargs)


def _frozen(value: Any) -> Any:
  """Lists (a ConfigDict may hold them) as tuples: nothing in Settings changes."""
  if isinstance(value, list):
    return tuple(_frozen(v) for v in value)
  return value
