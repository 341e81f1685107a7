"""Collectives of compiled train steps, read from the HLO text.

Parser tests use hand-written HLO lines with bytes computed by hand. The step tests
compile the runner's real train step (`runner.build`, `program.compile_program`,
its `train_fn.lower(...).compile().as_text()` under the rules) on the
8 simulated CPU devices and compare the traffic with sizes computed independently
from the parameter shapes of `model.init`.

What XLA:CPU emits (jax 0.10.2), measured here and relied on by these tests:
  - Data parallelism: one combined all-reduce carries every gradient exactly once
    (the ViT here: 408,360 bytes of gradients -> 408,376 all-reduced; the extra 16
    bytes are the 4 float32 metric sums), and nothing is gathered: the metrics'
    top-1/top-5 count ranks with sums over classes (`step.top_k_correct`) instead
    of `lax.top_k`, which would need the (batch, classes) logits whole. Batch norm
    adds per-channel all-reduces of its batch moments.
  - FSDP: parameters are all-gathered before use (ZeRO-3). XLA's SPMD partitioner
    sums the gradient of a gathered parameter with a full all-reduce followed by a
    dynamic-slice of the local shard; XLA's GPU pipeline (not run here) rewrites
    that pair into a reduce-scatter (ReduceScatterCreator), XLA:CPU's does not (an
    explicit `lax.psum_scatter` in a `shard_map` does compile to a reduce-scatter
    on CPU), and libtpu 0.0.52, compiling for v4, v5e and v5p topologies here,
    lowers even an explicit `psum_scatter` to a standalone all-reduce of the whole
    array (a RotatedPincer ring) followed by a slicing fusion. So here the FSDP
    gradient traffic is the same all-reduce as data parallelism, and what FSDP
    saves is memory, which the last test checks through
    `compiled.memory_analysis()`: the per-device arguments (parameters and
    momentum) are ~1/8 of the data-parallel ones. The traffic check counts a
    reduce-scatter's output times the shard count, so it holds on either lowering.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxtrain import runner
from jaxtrain.config import base_config
from jaxtrain.parallel import collectives as coll
from jaxtrain.parallel import sharding
from jaxtrain.program import compile_program

# --- the parser -------------------------------------------------------------------

HLO = """
HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%region_0.1 (a: f32[], b: f32[]) -> f32[] {
  ROOT %add = f32[] add(f32[] %a, f32[] %b)
}

ENTRY %main (p: f32[64,10]) -> f32[64,10] {
  %all-reduce.43 = (f32[4,16]{1,0}, f32[], /*index=2*/bf16[64,256]{1,0}) all-reduce(%x, %y, %z), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%region_0.1, metadata={op_name="all-reduce"}
  %get-tuple-element.9 = f32[4,16]{1,0} get-tuple-element(%all-reduce.43), index=0
  %all-gather = f32[32,10]{1,0} all-gather(%f), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}
  %ags = ((f32[8,10]{1,0}), (f32[64,10]{1,0})) all-gather-start(%p), channel_id=3, dimensions={0}
  %agd = f32[64,10]{1,0} all-gather-done(%ags)
  %rs = bf16[8,256]{1,0} reduce-scatter(bf16[64,256]{1,0} %g), dimensions={0}, to_apply=%region_0.1
  %ars = f32[1024]{0} all-reduce-start(%q), to_apply=%region_0.1
  %ard = f32[1024]{0} all-reduce-done(%ars)
  %cps = (s8[3,5]{1,0}, s8[3,5]{1,0}, u32[], u32[]) collective-permute-start(%c), source_target_pairs={{0,1}}
  %a2a = pred[16]{0} all-to-all(%m), dimensions={0}
  ROOT %fusion = f32[64,10]{1,0} fusion(%agd), kind=kLoop, calls=%fused
}
"""


def test_parser_finds_every_array_moved_with_its_bytes():
  found = coll.collectives(HLO)
  assert found == [
      ("all-reduce", "f32", (4, 16), 4 * 16 * 4),
      ("all-reduce", "f32", (), 4),
      ("all-reduce", "bf16", (64, 256), 64 * 256 * 2),
      ("all-gather", "f32", (32, 10), 32 * 10 * 4),
      ("all-gather", "f32", (64, 10), 64 * 10 * 4),       # start: outputs only
      ("reduce-scatter", "bf16", (8, 256), 8 * 256 * 2),  # the scattered shard
      ("all-reduce", "f32", (1024,), 4096),               # counted at -start
      ("collective-permute", "s8", (3, 5), 15),           # outputs, not the u32 flags
      ("all-to-all", "pred", (16,), 16),
  ]
  assert found[0].bytes == 256 and found[0].op == "all-reduce"


def test_summary_totals_per_op_and_table():
  totals = coll.summary(HLO)
  assert totals == {
      "all-gather": (2, 1280 + 2560), "all-reduce": (4, 256 + 4 + 32768 + 4096),
      "all-to-all": (1, 16), "collective-permute": (1, 15),
      "reduce-scatter": (1, 4096)}
  table = coll.format_summary(totals)
  assert table.splitlines()[1].split()[:3] == ["all-reduce", "4", "arrays"]
  assert coll.format_summary({}) == "no collectives"


@pytest.mark.parametrize("dtype,bits", [("f32", 32), ("bf16", 16), ("pred", 8),
                                        ("s4", 4), ("f8e4m3fn", 8), ("c64", 64),
                                        ("u32", 32)])
def test_dtype_bits(dtype, bits):
  assert coll.dtype_bits(dtype) == bits


def test_text_without_collectives():
  assert coll.collectives("ENTRY %m { ROOT %a = f32[2] add(%x, %y) }") == []


# --- compiled train steps ---------------------------------------------------------

VIT = dict(name="vit", width=32, depth=1, num_heads=4, mlp_dim=64)
CNN_BN = dict(name="cnn", features=(8, 16), hidden=32, use_bn=True,
              dropout_rate=0.0)
BATCH, IMAGE, CLASSES = 32, (8, 8, 1), 10


def _compile(model_kwargs, mesh_shape, rules, devices=None):
  c = base_config()
  for k, v in model_kwargs.items():
    c.model[k] = v
  c.optimizer.name = "momentum"
  c.precision.compute_dtype = "float32"
  c.train.batch_size = BATCH
  c.mesh.data, c.mesh.fsdp, c.mesh.model = mesh_shape
  c.sharding.rules = rules
  exp = runner.build(c, devices)
  assert exp.train_source.image_shape == IMAGE
  program = compile_program(exp)  # its example batch: BATCH images and labels
  state = program.state
  with sharding.activate(exp.mesh, rules):
    sums = program.init_sums()
    compiled = program.train_fn.lower(state, sums, program.example_batch).compile()
  return exp, compiled, state, sums


def _variables(exp):
  """Unboxed variables of `model.init` and their logical names (shapes only)."""
  boxed = jax.eval_shape(lambda: exp.model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE)), train=False))
  names = jax.tree.map(lambda b: b.names, boxed["params"],
                       is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return nn.meta.unbox(boxed), names


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def _reduced_bytes(totals, shards: int) -> int:
  """Full-array bytes reduced: all-reduce, plus reduce-scatter shards x `shards`."""
  return (totals.get("all-reduce", coll.OpTotal(0, 0)).bytes
          + shards * totals.get("reduce-scatter", coll.OpTotal(0, 0)).bytes)


@pytest.fixture(scope="module")
def vit_dp():
  return _compile(VIT, (8, 1, 1), sharding.RULES_DP)


def test_data_parallel_reduces_each_gradient_once(vit_dp):
  exp, compiled, _, _ = vit_dp
  variables, _ = _variables(exp)
  grad_bytes = _nbytes(variables["params"])
  totals = coll.summary(compiled.as_text())
  reduced = _reduced_bytes(totals, 8)
  assert grad_bytes <= reduced <= 1.05 * grad_bytes, (reduced, grad_bytes)
  # Parameters are replicated and the metrics need no whole logits: no gather.
  assert "all-gather" not in totals
  assert "reduce-scatter" not in totals


def test_data_parallel_batch_norm_adds_only_its_moments():
  """Gradients, plus per BN layer the float32 batch mean and mean of squares.

  The backward pass's per-channel sums (of dy and dy * x_hat) are the BN scale and
  bias gradients, already counted in the gradients.
  """
  exp, compiled, _, _ = _compile(CNN_BN, (8, 1, 1), sharding.RULES_DP)
  variables, _ = _variables(exp)
  grad_bytes = _nbytes(variables["params"])
  bn_channels = sum(x.size for x in jax.tree.leaves(
      {k: v["mean"] for k, v in variables["batch_stats"].items()}))
  assert bn_channels == 8 + 16
  moment_bytes = 2 * 4 * bn_channels
  reduced = _reduced_bytes(coll.summary(compiled.as_text()), 8)
  assert grad_bytes + moment_bytes <= reduced <= 1.05 * (grad_bytes + moment_bytes)


@pytest.fixture(scope="module")
def vit_fsdp():
  return _compile(VIT, (1, 8, 1), sharding.RULES_FSDP)


def _sharded_param_bytes(exp) -> tuple[int, int]:
  """(bytes of params with an `embed` axis, i.e. split over fsdp, bytes of the rest)."""
  variables, names = _variables(exp)
  sharded = rest = 0
  for leaf, leaf_names in zip(jax.tree.leaves(variables["params"]),
                              jax.tree.leaves(names, is_leaf=lambda x: isinstance(
                                  x, tuple))):
    size = leaf.size * 4
    if "embed" in leaf_names:
      sharded += size
    else:
      rest += size
  return sharded, rest


def test_fsdp_gathers_params_and_reduces_gradients_once(vit_fsdp):
  exp, compiled, _, _ = vit_fsdp
  sharded, rest = _sharded_param_bytes(exp)
  assert sharded > 10 * rest  # nearly every parameter is split
  totals = coll.summary(compiled.as_text())
  # ZeRO-3: every split parameter is gathered whole for the forward pass (and
  # possibly again for the backward), and nothing else.
  gathered = totals["all-gather"].bytes
  assert sharded <= gathered <= 2 * sharded
  # Each gradient is reduced once: by a reduce-scatter (GPU) or, on XLA:CPU, by a
  # full all-reduce before the local shard is sliced out (module docstring).
  reduced = _reduced_bytes(totals, 8)
  assert sharded + rest <= reduced <= 1.05 * (sharded + rest)


def test_tensor_parallel_all_reduces_four_activations_per_block():
  """Megatron-LM (Shoeybi et al. 2019, arXiv 1909.08053, section 3): per block one
  all-reduce of the (batch, length, embed) activations after attention and one after
  the MLP in the forward pass, and one each for their input gradients backward.

  On 4 devices all over `model` there is no data parallelism, so nothing else of
  size is reduced (the remaining all-reduces are per-leaf float32 scalars: the step's
  finiteness check sums squares of sharded gradients). Weights stay in place: no
  all-gather.
  """
  depth, width, length = 2, VIT["width"], (IMAGE[0] // 2) * (IMAGE[1] // 2)
  _, compiled, _, _ = _compile(dict(VIT, depth=depth), (1, 1, 4), sharding.RULES_TP,
                               jax.devices()[:4])
  found = coll.collectives(compiled.as_text())
  assert {c.op for c in found} == {"all-reduce"}
  big = [c for c in found if c.shape]
  assert len(big) == 4 * depth
  assert {c.shape for c in big} == {(BATCH, length, width)}
  assert sum(c.bytes for c in big) == 4 * depth * BATCH * length * width * 4


def test_fsdp_keeps_one_eighth_of_params_and_momentum_per_device(vit_dp, vit_fsdp):
  """Per-device argument bytes from `memory_analysis()` against the expected split."""
  exp, dp_compiled, state, sums = vit_dp
  _, fsdp_compiled, _, _ = vit_fsdp
  sharded, rest = _sharded_param_bytes(exp)
  # Arguments: params and their momentum; the step (int32) and rng (uint32[2]); the
  # optimizer's scalar step counts; the replicated metric sums; this device's rows
  # of the batch (float32 images, int32 labels).
  counts = [x for x in jax.tree.leaves(state.opt_state) if x.ndim == 0]
  fixed = (4 + 8 + _nbytes(counts) + _nbytes(sums)
           + (BATCH // 8) * (math.prod(IMAGE) * 4 + 4))
  dp_args = dp_compiled.memory_analysis().argument_size_in_bytes
  fsdp_args = fsdp_compiled.memory_analysis().argument_size_in_bytes
  assert dp_args == 2 * (sharded + rest) + fixed
  assert fsdp_args == 2 * (sharded // 8 + rest) + fixed
  assert fsdp_args < dp_args / 5
