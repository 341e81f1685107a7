"""Checks of a run against its data, its model and this host, before anything compiles.

`config.validate` checks each field alone; these need what `runner.build` has built
(the sources, the model, the batch plan, the run length). Each failure is a
`ConfigError` naming the field:

- every train batch (and stage) fits in the train split, and an explicit
  `train.eval_batch_size` is not larger than the eval split (rounded up to the
  data-parallel devices): beyond that every eval batch is mostly padding;
- a batch of the model's input, as float32, with the prefetched ones, fits in this
  host's memory;
- the run is at most 2^31 - 1 steps (the step counter is int32), and the events
  set by step (`train.profile_steps`, `train.stages`) happen within it;
- the model can be built with its options for the data's images, and accepts every
  other image size the run feeds it (stages, FixRes eval): traced with
  `jax.eval_shape`, not compiled.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.data import sources
from jaxtrain.errors import ConfigError
from jaxtrain.settings import Settings

MAX_STEPS = 2**31 - 1  # TrainState.step is int32


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def check_batches(config: Settings, plan: Any, train_size: int,
                  eval_size: int, replicas: int) -> None:
  """Batches against the splits (see the module docstring)."""
  repeats = config.data.aug_repeats
  for i, stage in enumerate(plan.stages):
    if stage.batch_size // repeats > train_size:
      field = "train.stages" if config.train.stages else "train.batch_size"
      value = tuple(config.train.stages) if config.train.stages else stage.batch_size
      raise ConfigError(field, value, f"a batch of {stage.batch_size} (stage {i}) "
                        f"is larger than the train split ({train_size} examples); "
                        f"use at most {train_size * repeats}")
  eval_batch = config.train.eval_batch_size
  most = _round_up(eval_size, replicas)
  if eval_batch > most:
    raise ConfigError("train.eval_batch_size", eval_batch, f"larger than the eval "
                      f"split ({eval_size} examples): every eval batch would be "
                      f"mostly padding; use at most {most} (the split rounded up to "
                      f"a multiple of the {replicas} data-parallel devices)")


def check_host_memory(config: Settings, plan: Any,
                      image_shape: tuple[int, ...]) -> None:
  """This process's largest batch, float32, times the batches in flight."""
  memory = sources.host_memory_bytes()
  local = max(s.batch_size for s in plan.stages) // jax.process_count()
  in_flight = config.data.prefetch + 2  # prefetched, being copied, in use
  need = local * math.prod(image_shape) * 4 * in_flight
  if memory and need > memory:
    raise ConfigError("train.batch_size", config.train.batch_size, f"{in_flight} "
                      f"batches of {local} images of shape {tuple(image_shape)} "
                      f"as float32 need {need / 2**30:.1f} GiB, more than this "
                      f"host's {memory / 2**30:.1f} GiB; use a smaller batch or "
                      "image size")


def check_run_length(config: Settings, total: int) -> None:
  """At most MAX_STEPS steps, and step-set events inside the run."""
  if total > MAX_STEPS:
    field = "train.num_epochs" if config.train.num_epochs else "train.num_steps"
    raise ConfigError(field, getattr(config.train, field.split(".")[1]), f"gives {total} "
                      f"steps; a run has at most {MAX_STEPS} (an int32 step counter)")
  start, stop = config.train.profile_steps
  if stop > start and start >= total:
    raise ConfigError("train.profile_steps", tuple(config.train.profile_steps),
                      f"starts after the run's last step ({total}), so nothing "
                      f"would be profiled; use a start below {total}")
  late = [s for s in config.train.stages if s[0] >= total]
  if late:
    raise ConfigError("train.stages", tuple(config.train.stages), f"stage(s) "
                      f"from step {late[0][0]} start after the run's last step "
                      f"({total}) and would never run; drop them or lengthen the run")


def check_model(config: Settings, model: nn.Module,
                train_source: Any, eval_source: Any, plan: Any) -> None:
  """The model builds for the train images and accepts every other input size."""
  train_shape = tuple(train_source.image_shape)
  init = lambda: model.init(jax.random.key(0),  # noqa: E731
                            jnp.zeros((1, *train_shape)), train=False)
  try:
    variables = jax.eval_shape(init)
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    options = {k: v for k, v in config.model.items()}
    message = (str(e).strip().splitlines() or [""])[0][:200]
    raise ConfigError("model", options, f"model '{config.model.name}' cannot be "
                      f"built with these options for {train_shape} images "
                      f"({type(e).__name__}: {message}); check its options "
                      "(jaxtrain/models)") from None
  for shape, (field, value) in _other_input_shapes(config, train_source,
                                                   eval_source, plan).items():
    try:
      jax.eval_shape(lambda v, s=shape: model.apply(v, jnp.zeros((1, *s)),
                                                     train=False), variables)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(field, value, f"model '{config.model.name}' built for "
                        f"{train_shape} images does not accept {shape} images "
                        f"({type(e).__name__}); other resolutions need a model "
                        "with global pooling (e.g. resnet18)") from None


def _other_input_shapes(config, train_source, eval_source, plan) -> dict:
  """Image shapes besides the train one: stages' sizes and the eval (FixRes) one."""
  train_shape = tuple(train_source.image_shape)
  others = {}
  for i, stage in enumerate(plan.stages):
    if stage.image_size:
      try:
        chain = train_source.train_transforms.resized(stage.image_size)
        shape = chain.example(train_source.records[0]["image"]).shape
      except (ValueError, TypeError) as e:
        raise ConfigError("train.stages", tuple(config.train.stages),
                          f"stage {i} cannot resize data.train_transforms: {e}"
                          ) from None
      others.setdefault(tuple(shape), ("train.stages", tuple(config.train.stages)))
  eval_shape = tuple(eval_source.eval_image_shape)
  others.setdefault(eval_shape, ("data.eval_transforms", config.data.eval_transforms))
  others.pop(train_shape, None)
  return others
