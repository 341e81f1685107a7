"""Optimizer and schedule fields the chosen optimizer/schedule does not read.

The tables in `jaxtrain.optim.unread_fields` are checked against the code they
describe: with the check switched off, changing a field the table calls unread must
leave the updates (and the state's dtypes) or the LR schedule bit-identical, and
changing a field it calls read must change them. Then the check itself: such a
field off its default is a ConfigError naming it and what turns it off.
"""
import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtrain import optim
from jaxtrain.errors import ConfigError
from jaxtrain.optim import schedule_config
from jaxtrain.optim import unread_fields

build_lib = importlib.import_module("jaxtrain.optim.build")  # optim.build: a function

# A value other than the default for every optimizer field in the table.
OTHER = {"momentum": 0.5, "nesterov": True, "b1": 0.5, "b2": 0.9, "eps": 0.1,
         "rmsprop_decay": 0.5, "centered": True, "adagrad_initial_accumulator": 1.0,
         "trust_coefficient": 0.01, "alpha": 2.0, "base": 2.0,
         "sign_decay": "linear", "mu_dtype": "bfloat16"}
SCHEDULE_OTHER = {
    "end_value": {"end_value": 0.5}, "power": {"power": 2.0},
    "decay_rate": {"decay_rate": 0.5}, "decay_steps": {"decay_steps": 7},
    "staircase": {"staircase": True},
    "boundaries": {"boundaries": (30,), "scales": (0.5,)},
    "scales": {"boundaries": (30,), "scales": (0.5,)},
    "pct_start": {"pct_start": 0.5}, "div_factor": {"div_factor": 10.0},
    "final_div_factor": {"final_div_factor": 100.0}, "cycle_mult": {"cycle_mult": 2.0},
    "num_periods": {"num_periods": 1.5}, "alpha": {"alpha": 0.2},
    "beta": {"beta": 0.01}, "initial_variance": {"initial_variance": 2.0},
    "variance_decay": {"variance_decay": 0.3}, "seed": {"seed": 1}}


def _params():
  return {"w": jnp.asarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)),
          "b": jnp.asarray(np.linspace(0.5, 1, 4, dtype=np.float32))}


def _two_updates(fields, monkeypatch):
  """Updates and state after two steps, the unread-field check switched off."""
  monkeypatch.setattr(build_lib.unread_fields, "check", lambda *a, **k: None)
  c = ml_collections.ConfigDict(dict(learning_rate=0.1, schedule={"name": "constant"},
                                     **fields))
  tx, _ = optim.build(c, 10)
  params = _params()
  state = tx.init(params)
  out = []
  for k in range(2):
    grads = jax.tree.map(lambda p, k=k: jnp.cos(p * (k + 1)) + 0.3, params)
    updates, state = tx.update(grads, state, params)
    out.append(updates)
  leaves = jax.tree.leaves((out, state))
  return [np.asarray(x.astype(jnp.float32)) for x in leaves], [x.dtype for x in leaves]


@pytest.mark.parametrize("field", sorted(OTHER))
def test_optimizer_table_matches_what_each_optimizer_reads(field, monkeypatch):
  for name in optim.OPTIMIZERS:
    base = {"name": name}
    if name == "rmsprop":
      base["momentum"] = 0.9  # its nesterov and mu_dtype need a momentum stage
    before = _two_updates(base, monkeypatch)
    after = _two_updates({**base, field: OTHER[field]}, monkeypatch)
    same = (before[1] == after[1]
            and all(np.array_equal(x, y) for x, y in zip(before[0], after[0])))
    reads = name in unread_fields.READ_BY[field]
    assert same != reads, (name, field, "table says read" if reads else "unread")


@pytest.mark.parametrize("field", sorted(SCHEDULE_OTHER))
def test_schedule_table_matches_what_each_schedule_reads(field):
  steps = np.arange(0, 151, 3)  # past the end: 'step' decays at 100
  for name in optim.SCHEDULES:
    base = schedule_config.schedule_defaults()
    base.name = name
    if name == "piecewise" and field not in ("boundaries", "scales"):
      base.boundaries, base.scales = (50,), (0.1,)
    if name == "sgdr":
      base.decay_steps = 30 if field != "decay_steps" else 0
    other = schedule_config.schedule_defaults()
    other.update(base)
    other.update(SCHEDULE_OTHER[field])
    values = [np.asarray([float(schedule_config.schedule_from_config(s, 1.0, 100)(t))
                          for t in steps]) for s in (base, other)]
    reads = name in unread_fields.SCHEDULE_READ_BY[field]
    assert np.array_equal(*values) != reads, (name, field)


def _config(**fields):
  schedule = fields.pop("schedule", {"name": "constant"})
  return ml_collections.ConfigDict(dict(fields, schedule=schedule))


@pytest.mark.parametrize("fields,field,cause", [
    (dict(name="momentum", sign_decay="linear"), "optimizer.sign_decay",
     "optimizer.name='momentum'"),
    (dict(name="adam", momentum=0.5), "optimizer.momentum", "optimizer.name='adam'"),
    (dict(name="sgd", nesterov=True), "optimizer.nesterov", "optimizer.name='sgd'"),
    (dict(name="momentum", b1=0.8), "optimizer.b1", "optimizer.name='momentum'"),
    (dict(name="lamb", mu_dtype="bfloat16"), "optimizer.mu_dtype",
     "optimizer.name='lamb'"),
    (dict(name="rmsprop", momentum=0.0, nesterov=True), "optimizer.nesterov",
     "momentum=0.0"),
    (dict(name="addsign", sign_decay_steps=5), "optimizer.sign_decay_steps",
     "sign_decay='none'"),
    (dict(name="addsign", sign_decay="linear", sign_decay_num_periods=2.0),
     "optimizer.sign_decay_num_periods", "sign_decay='linear'"),
    (dict(name="momentum", base_batch_size=64), "optimizer.base_batch_size",
     "lr_scaling='none'"),
    (dict(name="momentum", weight_decay_mask="kernel"), "optimizer.weight_decay_mask",
     "weight_decay, l1 and l2 are 0"),
    (dict(name="momentum", grad_noise_gamma=0.3), "optimizer.grad_noise_gamma",
     "grad_noise_eta=0"),
    (dict(name="momentum", schedule={"name": "warmup_cosine", "div_factor": 10.0}),
     "optimizer.schedule.div_factor", "schedule.name='warmup_cosine'"),
    (dict(name="momentum", schedule={"name": "constant", "end_value": 0.01}),
     "optimizer.schedule.end_value", "schedule.name='constant'"),
    (dict(name="momentum", schedule={"name": "one_cycle",
                                     "warmup_init_fraction": 0.1}),
     "optimizer.schedule.warmup_init_fraction", "schedule.name='one_cycle'"),
])
def test_unread_optimizer_field_is_refused_naming_both_fields(fields, field, cause):
  with pytest.raises(ConfigError) as e:
    optim.build(_config(learning_rate=0.1, **fields), 10)
  assert e.value.field == field
  assert "not used" in str(e.value) and cause in str(e.value), str(e.value)


def test_read_fields_and_fields_at_their_defaults_pass():
  optim.build(_config(name="addsign", sign_decay="cosine", sign_decay_steps=5,
                      sign_decay_num_periods=2.0, momentum=0.8), 10)
  optim.build(_config(name="adam", momentum=0.9, nesterov=False), 10)  # defaults
  optim.build(_config(name="lars", weight_decay_mask="kernel"), 10)  # LARS masks
  optim.build(_config(name="momentum", lr_scaling="linear", base_batch_size=64), 10,
              batch_size=128)


def test_reset_puts_unread_fields_back_keeping_the_named_ones():
  section = build_lib.merged_section(dict(name="adam", momentum=0.5, nesterov=True,
                                          b1=0.8, schedule={"power": 3.0}))
  changed = unread_fields.reset(section, optim.default_config(), keep={"nesterov"})
  assert sorted(changed) == ["momentum", "schedule.power"]
  assert (section.momentum, section.nesterov, section.b1) == (0.9, True, 0.8)
  assert section.schedule.power == 1.0
