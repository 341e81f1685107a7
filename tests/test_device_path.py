"""What a GPU run's step and input path are made of, checked on CPU: bfloat16
compute for `compute_dtype=auto` on accelerators, no float64 anywhere in the step
or in the host batches, and no implicit host<->device transfer in the step loop
(each would cost a GPU run dearly and silently)."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import config as config_lib, precision, runner
from jaxtrain.program import compile_program
from jaxtrain.data import pipeline
from jaxtrain.parallel import mesh as mesh_lib, sharding

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.parametrize("platform,dtype,impl", [
    ("gpu", jnp.bfloat16, "reference"), ("tpu", jnp.bfloat16, "reference"),
    ("cpu", jnp.float32, "fused")])
def test_auto_policy_per_platform(platform, dtype, impl):
  policy = precision.make_policy("auto", platform)
  assert policy.compute_dtype == dtype and policy.impl == impl
  assert policy.param_dtype == jnp.float32 and policy.output_dtype == jnp.float32


@pytest.mark.parametrize("overrides", [
    [],  # the digits CNN as a GPU runs it: bfloat16 below
    ["model.name=resnet18", "model.width=8", "model.small_inputs=True",
     "model.impl=reference"],  # the formulation GPUs get from impl=auto
])
def test_step_has_no_float64_and_no_implicit_transfers(overrides):
  config = config_lib.load(os.path.join(ROOT, "experiments", "digits_cnn.py"))
  config_lib.apply_overrides(config, ["precision.compute_dtype=bfloat16",
                                      *overrides])
  exp = runner.build(config)
  program = compile_program(exp)
  state = program.state
  it = pipeline.train_iterator(exp.train_source, config.train.batch_size,
                               config.seed, plan=exp.plan)
  host = next(it)
  assert {k: v.dtype for k, v in host.items()} == {
      "image": np.float32, "label": np.int32, "index": np.int32}
  batch = pipeline.to_global(host, mesh_lib.batch_sharding(exp.mesh))
  with sharding.activate(exp.mesh, config.sharding.rules):
    train_fn, sums = program.train_fn, program.init_sums()
    hlo = train_fn.lower(state, sums, batch).as_text()
    assert not re.search(r"f64|complex", hlo)
    assert "bf16" in hlo  # the matmuls/convolutions really run in bfloat16
    # Arrays only, already on the devices: a host value in the step would raise.
    with jax.transfer_guard("disallow"):
      for _ in range(2):
        state, sums = train_fn(state, sums, batch)
      jax.block_until_ready(sums)
  assert int(state.step) == 2 and float(sums["count"]) == 2 * config.train.batch_size
