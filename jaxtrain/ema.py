"""Exponential moving average (EMA) of the weights, evaluated beside the raw weights.

Polyak averaging (Polyak & Juditsky 1992) in its exponential form, after every
train step t (t = 1 for the first):

    ema_t = d_t * ema_{t-1} + (1 - d_t) * w_t

over the params *and* the model state (batch-norm statistics), as timm's
`ModelEmaV2`/`ModelEmaV3` average the whole `state_dict` (parameters and buffers)
and the TF TPU EfficientNet reference averages the moving mean/variance too, so the
averaged weights are evaluated with statistics that match them. Non-float state
(counters) is copied, as timm does.

The decay d_t (`config.train.ema_*`):

- constant: d_t = `ema_decay`, the average starting at the initial weights
  (timm `ModelEmaV2`);
- with warmup (`ema_warmup_power` p > 0; timm `ModelEmaV3(use_warmup=True)`, after
  K. Crowson): d_t = min(1 - (1 + (t - 1) / gamma)^-p, `ema_decay`). d_1 = 0, so the
  average starts at the first updated weights and forgets its start ever more
  slowly; gamma = 1, p = 1 is the plain running mean, p = 2/3 (3/4) reaches 0.999
  after 31.6k (10k) steps.

The average lives in `TrainState.ema` ({"params", "model_state"}), so it is sharded
like the weights, donated with the state and checkpointed with it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxtrain.state import TrainState


@dataclasses.dataclass(frozen=True)
class EmaConfig:
  """`config.train.ema_decay`, `.ema_warmup_power`, `.ema_warmup_gamma`."""
  decay: float
  warmup_power: float = 0.0
  warmup_gamma: float = 1.0

  @classmethod
  def from_train(cls, train: ml_collections.ConfigDict) -> "EmaConfig | None":
    if not train.ema_decay:
      return None
    return cls(train.ema_decay, train.ema_warmup_power, train.ema_warmup_gamma)


def decay_at(t: jax.Array, c: EmaConfig) -> jax.Array:
  """d_t of update t (1-based), float32."""
  if not c.warmup_power:
    return jnp.asarray(c.decay, jnp.float32)
  t = jnp.asarray(t, jnp.float32)
  warm = 1.0 - (1.0 + (t - 1.0) / c.warmup_gamma) ** (-c.warmup_power)
  return jnp.minimum(warm, c.decay)


def _copy(tree: Any) -> Any:
  # A copy, not an alias: the state is donated, and one buffer may not be donated
  # twice.
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def init(state: TrainState) -> TrainState:
  """`state` with an EMA that starts at its weights."""
  return state.replace(ema={"params": _copy(state.params),
                            "model_state": _copy(state.model_state)})


def shardings(state_shardings: TrainState) -> TrainState:
  """The TrainState's shardings with the EMA sharded like the weights."""
  return state_shardings.replace(ema={"params": state_shardings.params,
                                      "model_state": state_shardings.model_state})


def update(state: TrainState, c: EmaConfig) -> TrainState:
  """One EMA step after the train step that produced `state` (t = state.step)."""
  d = decay_at(state.step, c)

  def mix(e, w):
    if not jnp.issubdtype(e.dtype, jnp.floating):
      return w
    return (d * e.astype(jnp.float32) + (1.0 - d) * w.astype(jnp.float32)
            ).astype(e.dtype)

  new = {"params": state.params, "model_state": state.model_state}
  return state.replace(ema=jax.tree.map(mix, state.ema, new))


def averaged(state: TrainState) -> TrainState:
  """`state` with its EMA weights in place of the raw ones (for evaluation)."""
  return state.replace(params=state.ema["params"],
                       model_state=state.ema["model_state"])
