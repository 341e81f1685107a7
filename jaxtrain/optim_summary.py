"""What the optimizer config does to each parameter (`jaxtrain optim-summary`).

Prints one row per parameter path: shape, whether weight decay (and L1/L2) applies,
whether a trust ratio (LARS/LAMB) applies, the learning-rate multiplier and whether
it is frozen, so BN and bias exclusions can be checked before a pod is paid for.
Shapes come from `jax.eval_shape`: nothing is initialized or compiled.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxtrain import models, optim, precision
from jaxtrain.data import sources


def abstract_params(config) -> Any:
  """Parameter shapes of the configured model on the configured data."""
  source = sources.get_source(config.data, config.data.train_split)
  policy = precision.make_policy(config.precision.compute_dtype)
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  model = models.get_model(config.model.name, num_classes=source.num_classes,
                           dtype=policy.compute_dtype, **kwargs)
  dummy = jax.ShapeDtypeStruct((1, *source.image_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x,
                                                  train=False), dummy)
  return nn.meta.unbox(variables["params"])


def _describe(section) -> str:
  """The optimizer's name; for a plug-in, also its factory and keyword arguments."""
  from jaxtrain.optim import plugins  # pylint: disable=g-import-not-at-top
  name = section.name
  if not plugins.is_plugin(name):
    return name
  kwargs = dict(section.get("kwargs", {}))
  return f"{name} (plug-in {plugins.describe(name)}, kwargs {kwargs})"


def print_summary(config, stream: TextIO | None = None) -> None:
  # sys.stdout looked up per call, not bound at import (it may be replaced since).
  stream = stream or sys.stdout
  rows = optim.mask_summary(config.optimizer, abstract_params(config))
  width = max(len(r[0]) for r in rows)
  stream.write(f"optimizer: {_describe(config.optimizer)}\n")
  stream.write(f"{'parameter':<{width}}  {'shape':<20} {'decay':>5} {'trust':>5} "
               f"{'lr x':>6} {'frozen':>6}\n")
  yes = lambda b: "yes" if b else "-"  # noqa: E731
  for path, shape, decay, trust, mult, frozen in rows:
    stream.write(f"{path:<{width}}  {str(shape):<20} {yes(decay):>5} "
                 f"{yes(trust):>5} {mult:>6.3g} {yes(frozen):>6}\n")
  count = sum(int(jnp.prod(jnp.asarray(r[1]))) if r[1] else 1 for r in rows)
  decayed = sum(r[2] for r in rows)
  stream.write(f"{len(rows)} tensors, {count:,} parameters; weight decay on "
               f"{decayed}, excluded from it: {len(rows) - decayed}\n")
