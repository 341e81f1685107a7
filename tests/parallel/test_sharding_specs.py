"""Parameter and optimizer-state layouts are what the rule tables say.

The expected PartitionSpec of every leaf is derived here from two inputs only: the
logical names the model declares (`nn.LogicallyPartitioned.names` from `model.init`)
and the rule preset, read as MaxText/flax define it: rules apply in order, a dimension
takes the mesh axes of the first rule naming it whose axes this array does not use
yet, and a name without a rule is not sharded. The layouts checked are those of the
arrays `create_train_state` built (`.sharding.spec` and the shard shapes on device),
for the ViT under FSDP + tensor parallelism and a batch-norm CNN under FSDP.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from jaxtrain import config as config_lib
from jaxtrain import models, optim, runner
from jaxtrain.errors import ConfigError
from jaxtrain.parallel import sharding
from jaxtrain.state import abstract_train_state, create_train_state

AXES = ("data", "fsdp", "model")
IMAGE = (8, 8, 1)


def expected_spec(names, rules):
  """The spec a leaf with logical `names` gets under `rules` (module docstring)."""
  table = [(name, axes if isinstance(axes, tuple) else (axes,)) for name, axes in rules]
  spec, used = [], set()
  for name in names:
    for rule_name, axes in table:
      if rule_name == name and axes != (None,) and not used & set(axes):
        spec.append(axes[0] if len(axes) == 1 else axes)
        used |= set(axes)
        break
    else:
      spec.append(None)
  return tuple(spec)


def _normalized(spec, ndim):
  """A NamedSharding spec padded with None to the array's rank."""
  return tuple(spec) + (None,) * (ndim - len(spec))


def _logical_names(model):
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                            jnp.zeros((1, *IMAGE)), train=False))
  return jax.tree.map(lambda b: b.names, boxed["params"],
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _dict_path(path):
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _build(model, optimizer, mesh_shape, rules):
  mesh = jax.make_mesh(mesh_shape, AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  c = optim.default_config()
  c.name = optimizer
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4 if optimizer == "adamw" else 0.0
  c.schedule.warmup_steps = 5
  tx, _ = optim.build(c, total_steps=100)
  state, _ = create_train_state(model, tx, IMAGE, 0, mesh, rules)
  return mesh, state


def _check_params(state, names, rules, mesh):
  checked = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    leaf_names = names
    for key in _dict_path(path):
      leaf_names = leaf_names[key]
    want = expected_spec(leaf_names, rules)
    assert _normalized(leaf.sharding.spec, leaf.ndim) == want, (path, leaf_names)
    # The shard on each device really is that fraction of the array.
    split = [math.prod(mesh.shape[a] for a in ((w,) if isinstance(w, str) else w))
             if w else 1 for w in want]
    shard = leaf.addressable_shards[0].data.shape
    assert shard == tuple(d // s for d, s in zip(leaf.shape, split)), path
    checked += 1
  return checked


VIT = dict(width=32, depth=1, num_heads=4, mlp_dim=64)


@pytest.fixture(scope="module")
def vit_fsdp_tp():
  model = models.get_model("vit", num_classes=10, **VIT)
  mesh, state = _build(model, "adamw", (2, 2, 2), sharding.RULES_FSDP_TP)
  return model, mesh, state


def test_vit_megatron_and_fsdp_kernels_by_hand(vit_fsdp_tp):
  """The issue's examples, written out: column/row-parallel kernels, FSDP on embed."""
  _, _, state = vit_fsdp_tp
  block = state.params["block0"]
  want = {
      ("mlp", "fc1", "kernel"): P("fsdp", "model"),         # (embed, mlp)
      ("mlp", "fc1", "bias"): P("model"),                   # (mlp,)
      ("mlp", "fc2", "kernel"): P("model", "fsdp"),         # (mlp, embed)
      ("attn", "qkv", "kernel"): P("fsdp", None, "model", None),  # embed,3,heads,kv
      ("attn", "qkv", "bias"): P(None, "model", None),      # (3, heads, kv)
      ("attn", "out", "kernel"): P("model", None, "fsdp"),  # (heads, kv, embed)
      ("ln_attn", "scale"): P(None),                        # (norm,)
  }
  for path, spec in want.items():
    leaf = block
    for key in path:
      leaf = leaf[key]
    assert _normalized(leaf.sharding.spec, leaf.ndim) == _normalized(spec, leaf.ndim)
  fc1 = block["mlp"]["fc1"]["kernel"]
  assert fc1.shape == (32, 64)
  assert {s.data.shape for s in fc1.addressable_shards} == {(16, 32)}
  assert _normalized(state.params["head"]["kernel"].sharding.spec, 2) == ("fsdp", None)


def test_vit_every_param_follows_the_rules(vit_fsdp_tp):
  model, mesh, state = vit_fsdp_tp
  names = _logical_names(model)
  checked = _check_params(state, names, sharding.RULES_FSDP_TP, mesh)
  assert checked == len(jax.tree.leaves(state.params)) > 10


def test_adamw_moments_mirror_params_and_counts_are_replicated(vit_fsdp_tp):
  _, _, state = vit_fsdp_tp
  params = dict(
      (_dict_path(p), leaf)
      for p, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0])
  mirrored = scalars = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    if leaf.ndim == 0:  # step counts of Adam and of the schedule
      assert leaf.sharding.is_fully_replicated, jax.tree_util.keystr(path)
      scalars += 1
      continue
    param = params[_dict_path(path)]
    assert leaf.shape == param.shape
    assert leaf.sharding.spec == param.sharding.spec, jax.tree_util.keystr(path)
    assert leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim)
    mirrored += 1
  assert mirrored == 2 * len(params)  # mu and nu
  assert scalars >= 1


def test_bn_cnn_under_fsdp_shards_conv_out_and_keeps_stats_replicated():
  model = models.get_model("cnn", num_classes=10, features=(8, 16), hidden=32,
                           use_bn=True, dropout_rate=0.0)
  mesh, state = _build(model, "momentum", (1, 8, 1), sharding.RULES_FSDP)
  names = _logical_names(model)
  assert _check_params(state, names, sharding.RULES_FSDP, mesh) == len(
      jax.tree.leaves(state.params))
  assert _normalized(state.params["conv1"]["kernel"].sharding.spec, 4) == (
      None, None, None, "fsdp")
  assert _normalized(state.params["dense"]["kernel"].sharding.spec, 2) == (
      "fsdp", None)
  # Batch-norm running statistics carry no logical names: replicated.
  for leaf in jax.tree.leaves(state.model_state):
    assert leaf.sharding.is_fully_replicated
  # Momentum buffers (optax trace) take their parameter's layout.
  params = {_dict_path(p): x for p, x in
            jax.tree_util.tree_flatten_with_path(state.params)[0]}
  traces = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
            if x.ndim]
  assert len(traces) == len(params)
  for path, leaf in traces:
    assert leaf.sharding.spec == params[_dict_path(path)].sharding.spec


def test_data_parallel_rules_replicate_every_param():
  model = models.get_model("vit", num_classes=10, **VIT)
  _, state = _build(model, "momentum", (8, 1, 1), sharding.RULES_DP)
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.sharding.is_fully_replicated


@pytest.mark.parametrize("rules,names,want", [
    (sharding.RULES_FSDP_TP, ("embed", "mlp"), ("fsdp", "model")),
    (sharding.RULES_FSDP_TP, ("mlp", "embed"), ("model", "fsdp")),
    (sharding.RULES_TP, ("embed", None, "heads", "kv"), (None, None, "model", None)),
    (sharding.RULES_FSDP, ("embed", "mlp"), ("fsdp", None)),
    # The residual stream: batch takes (data, fsdp) first, so embed stays whole.
    (sharding.RULES_FSDP_TP, ("batch", "length", "embed"),
     (("data", "fsdp"), None, None)),
    (sharding.RULES_DP, ("embed", "classes"), (None, None)),
])
def test_rule_presets_against_flax(rules, names, want):
  """The reading of the rules above is flax's (so the checks above mean something)."""
  assert expected_spec(names, rules) == want
  assert _normalized(nn.logical_to_mesh_axes(names, rules), len(names)) == want


def test_presets_are_valid_config_rules():
  for rules in (sharding.RULES_DP, sharding.RULES_FSDP, sharding.RULES_TP,
                sharding.RULES_FSDP_TP):
    assert rules[0] == ("batch", ("data", "fsdp"))
    assert len({name for name, _ in rules}) == len(rules)
    assert all(np.all([a in AXES for a in (axes if isinstance(axes, tuple)
                                           else (axes,))]) for _, axes in rules)


def test_digits_vit_experiment_builds_on_one_device_and_as_tp():
  """experiments/digits_vit.py: plain on 1 device, `:tp` on all 8 (no compile)."""
  path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                      "digits_vit.py")
  plain = runner.build(config_lib.load(path), jax.devices()[:1])
  assert plain.model.__class__.__name__ == "ViT" and plain.mesh.size == 1
  tp_config = config_lib.load(path + ":tp")
  tp = runner.build(tp_config)
  assert dict(tp.mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
  assert tuple(map(tuple, tp_config.sharding.rules)) == sharding.RULES_FSDP_TP


def _tx():
  c = optim.default_config()
  c.name, c.learning_rate = "momentum", 0.1
  return optim.build(c, total_steps=10)[0]


def test_dimension_that_does_not_divide_its_mesh_axis_names_param_axis_and_fix():
  """MLP (64 inputs) -> 12 -> 12 -> 10: the head kernel is (12, 10) with logical
  names (embed, classes); FSDP over 8 devices would split 12 rows 8 ways."""
  model = models.get_model("mlp", num_classes=10, hidden_sizes=(12, 12))
  mesh = jax.make_mesh((1, 8, 1), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with pytest.raises(ConfigError) as info:
    abstract_train_state(model, _tx(), IMAGE, 0, mesh, sharding.RULES_FSDP)
  e = info.value
  assert e.field == "sharding.rules" and e.value == ("embed", "fsdp")
  msg = str(e)
  for part in ("parameter params/head/kernel", "shape (12, 10)", "'embed'",
               "size 12", "mesh axis 'fsdp' of size 8", "sharding.rules",
               "mesh.fsdp"):
    assert part in msg, (part, msg)


def test_dimension_over_two_mesh_axes_names_both():
  """The batch-norm CNN's conv_out of 12 channels over a rule ('conv_out', (data,
  fsdp)) on a 2 x 4 mesh: 8 parts."""
  model = models.get_model("cnn", num_classes=10, features=(8, 12), hidden=32,
                           use_bn=True, dropout_rate=0.0)
  mesh = jax.make_mesh((2, 4, 1), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = (("batch", ("data", "fsdp")), ("conv_out", ("data", "fsdp")))
  with pytest.raises(ConfigError, match=r"params/conv1/kernel of shape \(3, 3, 8, 12\)"
                     r".*'data' x 'fsdp' \(8 parts\).*mesh\.data, mesh\.fsdp"):
    abstract_train_state(model, _tx(), IMAGE, 0, mesh, rules)


def test_dimensions_that_divide_pass_the_check():
  model = models.get_model("mlp", num_classes=10, hidden_sizes=(16, 16))
  mesh = jax.make_mesh((1, 8, 1), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  state, _ = abstract_train_state(model, _tx(), IMAGE, 0, mesh, sharding.RULES_FSDP)
  assert state.params["head"]["kernel"].sharding.spec == P("fsdp", None)
