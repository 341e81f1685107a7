"""Sharding changes where the numbers live, not what they are.

A ViT (tensor-parallel names) and a small ResNet-18 (batch norm over all replicas)
train for a few steps on the digits, built exactly as `runner.train` builds a run, on
several (data, fsdp, model) meshes of the 8 simulated CPU devices, with the rule
presets that make each axis do its job: data parallelism (`RULES_DP`), FSDP
(`RULES_FSDP`: parameters and optimizer state split over `fsdp`) and FSDP + Megatron
tensor parallelism (`RULES_FSDP_TP`: heads and MLP units over `model`). The reference
is the same run on ONE device, where no collective exists; every step's train loss
must match it within 1e-4 (float32). Each sharded run also reports how one parameter
was laid out, checked against a hand-written spec, so the test cannot pass on
replicated parameters. (At a learning rate on the edge of stability, 0.05 for the
ResNet, float32 rounding differences between 8 and 1 replicas grew from 2e-5 to 3e-3
within three steps; at 0.02 all meshes agree to 5e-7.)

Cost: the 10 runs are dominated by XLA:CPU compilation (init and train step, 10-40 s
of CPU per run at the default LLVM optimisation level, init mostly LLVM on unrolled
threefry initialisers), so the runs skip evaluation and checkpoints, and run in one
subprocess per model with `--xla_backend_optimization_level=0`. That only changes
LLVM's code generation for the host CPU: the HLO, its SPMD partitioning and its
collectives are the same (checked: identical collective lists), and init compiles
~7x faster.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxtrain import models

NUM_STEPS = 8
ATOL = 1e-4

MODELS = {
    # Dropout on: the masks must not depend on the sharding either.
    "vit": dict(name="vit", width=32, depth=2, num_heads=4, mlp_dim=64,
                dropout_rate=0.1),
    "resnet18": dict(name="resnet18", small_inputs=True, width=8),
}
# High enough that the loss moves well away from ln(10) within NUM_STEPS.
LEARNING_RATES = {"vit": 0.1, "resnet18": 0.02}
# (data, fsdp, model) and the rule preset (names in jaxtrain.parallel.sharding).
MESHES = {
    "one_device": ((1, 1, 1), "RULES_DP"),
    "dp8": ((8, 1, 1), "RULES_DP"),
    "dp4_fsdp2": ((4, 2, 1), "RULES_FSDP"),
    "dp2_fsdp2_tp2": ((2, 2, 2), "RULES_FSDP_TP"),
    "fsdp8": ((1, 8, 1), "RULES_FSDP"),
}
# One parameter per model and its layout per mesh, written out by hand: the ViT MLP
# kernel ("embed", "mlp"), a ResNet conv kernel (h, w, in, out = "conv_out").
PROBES = {
    "vit": (("block0", "mlp", "fc1", "kernel"), {
        "one_device": [None, None], "dp8": [None, None],
        "dp4_fsdp2": ["fsdp", None], "dp2_fsdp2_tp2": ["fsdp", "model"],
        "fsdp8": ["fsdp", None]}),
    "resnet18": (("stage1_block0", "conv1", "kernel"), {
        "one_device": [None] * 4, "dp8": [None] * 4,
        "dp4_fsdp2": [None, None, None, "fsdp"],
        "dp2_fsdp2_tp2": [None, None, None, "fsdp"],
        "fsdp8": [None, None, None, "fsdp"]}),
}


def _config(model: str, mesh: str):
  from jaxtrain.config import base_config  # pylint: disable=g-import-not-at-top
  from jaxtrain.parallel import sharding  # pylint: disable=g-import-not-at-top
  c = base_config()
  for k, v in MODELS[model].items():
    c.model[k] = v
  c.optimizer.name = "momentum"
  c.optimizer.learning_rate = LEARNING_RATES[model]
  c.precision.compute_dtype = "float32"
  c.train.batch_size = 32
  c.train.num_steps = NUM_STEPS
  shape, rules = MESHES[mesh]
  c.mesh.data, c.mesh.fsdp, c.mesh.model = shape
  c.sharding.rules = getattr(sharding, rules)
  return c


def _train_losses(model: str, mesh: str) -> dict:
  """Child process: the run's per-step train losses and one parameter's layout.

  The same sequence as `runner.train` (build, sharded state, jitted step, Grain
  batches made global) without its evaluation and checkpoint, which would double
  the compile time of each run; tests/test_runner.py covers those end to end.
  """
  # pylint: disable=g-import-not-at-top
  from jaxtrain import runner
  from jaxtrain.data import pipeline
  from jaxtrain.parallel import mesh as mesh_lib, sharding
  from jaxtrain.program import compile_program
  config = _config(model, mesh)
  rules = config.sharding.rules
  one = MESHES[mesh][0] == (1, 1, 1)
  exp = runner.build(config, jax.devices()[:1] if one else jax.devices())
  program = compile_program(exp)
  state = program.state
  batches = pipeline.train_iterator(exp.train_source, config.train.batch_size,
                                    config.seed)
  batch_sharding = mesh_lib.batch_sharding(exp.mesh)
  losses = []
  with sharding.activate(exp.mesh, rules):
    train_fn, init_sums = program.train_fn, program.init_sums
    for _ in range(NUM_STEPS):
      batch = pipeline.to_global(next(batches), batch_sharding)
      state, sums = train_fn(state, init_sums(), batch)
      sums = jax.device_get(sums)
      losses.append(float(sums["loss"] / sums["count"]))
  leaf = state.params
  for key in PROBES[model][0]:
    leaf = leaf[key]
  spec = list(leaf.sharding.spec) + [None] * (leaf.ndim - len(leaf.sharding.spec))
  return {"losses": losses, "spec": spec, "devices": len(leaf.sharding.device_set)}


def _train_on_every_mesh(model: str, outdir: str) -> dict:
  """Runs the child process for `model`; returns {mesh: losses, layout}."""
  import processes  # pylint: disable=g-import-not-at-top  (tests/, parent only)
  proc = subprocess.run([sys.executable, __file__, model, outdir],
                        env=processes.cpu_env(8),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(outdir, "result.json")) as f:
    return json.load(f)


# One test per model: its cost is one child process (~45 s of CPU for the ViT,
# ~90 s for the ResNet, nearly all compilation); every mesh is checked before failing.
@pytest.mark.parametrize("model", ["vit", pytest.param("resnet18",
                                                       marks=pytest.mark.slow)])
def test_loss_trajectories_match_one_device_on_every_mesh(model, tmp_path):
  runs = _train_on_every_mesh(model, str(tmp_path))
  reference = runs.pop("one_device")["losses"]
  assert len(reference) == NUM_STEPS
  # The reference learns, so matching trajectories are not matching constants.
  assert reference[-1] < reference[0] - 0.02
  problems = []
  for mesh, run in runs.items():
    if run["devices"] != 8 or run["spec"] != PROBES[model][1][mesh]:
      problems.append(f"{mesh}: layout {run['spec']} on {run['devices']} devices, "
                      f"expected {PROBES[model][1][mesh]} on 8")
    gap = np.max(np.abs(np.asarray(run["losses"]) - np.asarray(reference)))
    if not gap <= ATOL:
      problems.append(f"{mesh}: losses {run['losses']} differ from the one-device "
                      f"{reference} by up to {gap:.2e}")
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("fields,field", [
    (dict(data=4, fsdp=4), "mesh"),                            # 16 != 8 devices
    (dict(data=-1, fsdp=-1), "mesh.fsdp"),                     # two fills
    (dict(data=-1, fsdp=3), "mesh.data"),                      # 3 does not divide 8
    (dict(data=2, fsdp=2, model=2, batch_size=6), "train.batch_size"),  # 6 % 4
    (dict(data=8, eval_batch_size=12), "train.eval_batch_size"),
])
def test_mesh_errors_name_the_field_before_compiling(fields, field):
  """runner.build refuses impossible meshes and batches with a ConfigError."""
  from jaxtrain import runner  # pylint: disable=g-import-not-at-top
  from jaxtrain.errors import ConfigError  # pylint: disable=g-import-not-at-top
  c = _config("vit", "dp8")
  for key, value in fields.items():
    section = c.train if "batch" in key else c.mesh
    section[key] = value
  with pytest.raises(ConfigError) as error:
    runner.build(c)
  assert error.value.field == field
  assert f"config.{field}=" in str(error.value)


def test_remat_gives_the_same_loss_and_gradients():
  """`remat=True` recomputes block activations in the backward pass: same numbers."""
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))
  labels = jnp.arange(8) % 10
  plain = models.get_model("vit", num_classes=10, width=16, depth=1, num_heads=2,
                           mlp_dim=32, dropout_rate=0.1)
  remat = plain.clone(remat=True)
  params = nn.meta.unbox(plain.init(jax.random.PRNGKey(1), images))["params"]
  # The zero-initialised head would give every other parameter a zero gradient.
  params["head"]["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(3),
                                                     params["head"]["kernel"].shape)

  def loss_and_grads(model):
    def loss(p):
      logits = model.apply({"params": p}, images, train=True,
                           rngs={"dropout": jax.random.PRNGKey(2)})
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])
    lowered = jax.jit(jax.value_and_grad(loss)).lower(params)
    # A rematerialised block is recomputed behind an optimization barrier.
    return "optimization_barrier" in lowered.as_text(), lowered.compile()(params)

  (barrier0, (l0, g0)), (barrier1, (l1, g1)) = (loss_and_grads(plain),
                                                loss_and_grads(remat))
  assert (barrier0, barrier1) == (False, True)
  # Same parameter tree: checkpoints are interchangeable between the two.
  assert jax.tree.structure(g0) == jax.tree.structure(g1)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(g0["block0"]["mlp"]["fc1"]["kernel"]).max()) > 0


if __name__ == "__main__":
  # Child of `_train_on_every_mesh`: python test_mesh_equivalence.py MODEL OUTDIR.
  _model, _outdir = sys.argv[1], sys.argv[2]
  _result = {m: _train_losses(_model, m) for m in MESHES}
  with open(os.path.join(_outdir, "result.json"), "w") as _f:
    json.dump(_result, _f)
