"""Vectorized trials equal the same trials run one by one (`runner.train`)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import optim, runner
from jaxtrain.config import base_config
from jaxtrain.data import pipeline
from jaxtrain.study import vectorized

STEPS, EVERY = 8, 4


def _config(lr, warmup, momentum, wd, seed, name="momentum"):
  c = base_config()
  c.data.source = "arrays"
  c.model.name = "cnn"
  c.model.features = (8,)
  c.model.hidden = 16
  c.optimizer.name = name
  c.optimizer.learning_rate = lr
  # The momentum coefficient: b1 for Adam-style optimizers (each reads only its own).
  c.optimizer["b1" if name in ("adam", "adamw", "lamb") else "momentum"] = momentum
  c.optimizer.weight_decay = wd
  c.optimizer.schedule.name = "warmup_cosine"
  c.optimizer.schedule.warmup_steps = warmup
  c.seed = seed
  c.train.batch_size = 32
  c.train.eval_batch_size = 360
  c.train.num_steps = STEPS
  c.train.log_every = c.train.eval_every = EVERY
  c.checkpoint.every = 0
  return c


def _vectorized_log(configs):
  group = vectorized.build_group(configs)
  assert group.size == len(configs)
  its = [pipeline.train_iterator(group.exp.train_source, 32, s) for s in group.seeds]
  logs = [[] for _ in configs]
  for step in range(1, STEPS + 1):
    group.step([next(it) for it in its])
    if step % EVERY == 0:
      for log, tr, ev in zip(logs, group.train_metrics(), group.evaluate()):
        log.append({"step": step, **tr, **ev})
  for it in its:
    it.close()
  return logs


@pytest.mark.parametrize("name", ["momentum", "lars", "momentum+focal"])
def test_vectorized_trials_match_one_by_one_runs(tmp_path, name):
  # Learning rate, warmup, momentum (b1), weight decay and seed all differ.
  name, _, loss = name.partition("+")
  configs = [_config(0.05, 0, 0.9, 0.0, 0, name),
             _config(0.02, 3, 0.8, 1e-3, 1, name)]
  for c in configs:  # the experiment's loss, not a default cross-entropy
    c.loss.name = loss or c.loss.name
  if name == "lars":
    for c in configs:
      c.optimizer.learning_rate *= 20
  vec = _vectorized_log(configs)
  # LARS, focal: the second trial (warmup, weight decay, seed 1) only, to save a
  # compile.
  for i, c in enumerate(configs):
    if (name == "lars" or loss) and i == 0:
      continue
    runner.train(c, str(tmp_path / str(i)))
    with open(os.path.join(tmp_path, str(i), "metrics.jsonl")) as f:
      ref = [json.loads(line) for line in f]
    assert [r["step"] for r in ref] == [r["step"] for r in vec[i]]
    for got, want in zip(vec[i], ref):
      for key in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5,
                                   err_msg=f"trial {i} step {got['step']} {key}")


@pytest.mark.parametrize("name", ["constant", "warmup_cosine", "linear",
                                  "warmup_polynomial"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_traced_schedule_equals_the_optimizer_schedule(name, warmup):
  c = optim.default_config()
  c.learning_rate = 0.3
  c.schedule.name = name
  c.schedule.warmup_steps = warmup
  if "polynomial" in name:
    c.schedule.power = 2.0
  total = 40
  _, schedule = optim.build(c, total)
  steps = jnp.arange(total + 3)
  traced = jax.jit(jax.vmap(lambda s: vectorized.traced_schedule(
      c.schedule, s, jnp.float32(0.3), jnp.int32(warmup), total)))(steps)
  want = np.asarray([schedule(int(s)) for s in steps])
  np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-6, atol=1e-7)
