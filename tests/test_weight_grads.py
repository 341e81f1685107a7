"""How bfloat16 layers form their weight gradients (`precision.weight_grad_dtype`).

``float32`` (default): the weight gradient's contraction accumulates in float32 and
its result is float32 (the TPU reference's float32 variables; Micikevicius et al.
2017, arXiv 1710.03740). ``compute``: PyTorch autocast's formulation, the gradient
computed in bfloat16 and then cast to float32, so each element is a bfloat16
number. References are numpy float64 contractions of the same bfloat16 inputs.
"""
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxtrain import config as config_lib
from jaxtrain import precision
from jaxtrain.errors import ConfigError

_RNG = np.random.default_rng(0)
X = _RNG.standard_normal((64, 48)).astype(ml_dtypes.bfloat16)   # batch x in
G = _RNG.standard_normal((64, 32)).astype(ml_dtypes.bfloat16)   # batch x out


def _dense_kernel_grad(mode: str) -> np.ndarray:
  """d/dkernel of sum(Dense(x) * G) for a bfloat16 Dense, traced under `mode`."""
  layer = precision.Dense(32, use_bias=False, dtype=jnp.bfloat16)
  x = jnp.asarray(X)
  params = layer.init(jax.random.key(0), x)

  def objective(p):
    with precision.weight_grads(mode):
      y = layer.apply(p, x)
    return jnp.sum(y.astype(jnp.float32) * jnp.asarray(G, jnp.float32))

  grad = jax.jit(jax.grad(objective))(params)["params"]["kernel"]
  assert grad.dtype == jnp.float32  # parameters and their gradients stay float32
  return np.asarray(grad)


def _reference() -> np.ndarray:
  return X.astype(np.float64).T @ G.astype(np.float64)


def _bfloat16_representable(a: np.ndarray) -> np.ndarray:
  return a.astype(ml_dtypes.bfloat16).astype(np.float32) == a


def test_float32_weight_grads_accumulate_and_stay_float32():
  grad = _dense_kernel_grad("float32")
  np.testing.assert_allclose(grad, _reference(), rtol=1e-5, atol=1e-5)
  # A float32 sum of 64 products is not, in general, a bfloat16 number.
  assert _bfloat16_representable(grad).mean() < 0.2


def test_compute_weight_grads_are_bfloat16_then_cast():
  grad = _dense_kernel_grad("compute")
  assert _bfloat16_representable(grad).all()
  ref = _reference()
  # bfloat16 has an 8-bit significand: one rounding of the result, relative 2^-8.
  np.testing.assert_allclose(grad, ref, rtol=2 ** -7, atol=2 ** -7 * np.abs(ref).max())
  assert np.abs(grad - ref).max() > np.abs(_dense_kernel_grad("float32") - ref).max()


def test_unknown_weight_grad_dtype_names_the_field():
  with pytest.raises(ConfigError, match=r"precision\.weight_grad_dtype"):
    with precision.weight_grads("bfloat16"):
      pass
  c = config_lib.base_config()
  c.precision.weight_grad_dtype = "half"
  with pytest.raises(ConfigError, match=r"precision\.weight_grad_dtype='half'"):
    config_lib.validate(c)


def _lowered_kernel_grad(platform: str, monkeypatch) -> str:
  monkeypatch.setattr(precision, "active_platform", lambda: platform)
  layer = precision.Dense(32, use_bias=False, dtype=jnp.bfloat16)
  x = jnp.asarray(X)
  params = layer.init(jax.random.key(0), x)
  objective = lambda p: jnp.sum(layer.apply(p, x).astype(jnp.float32))  # noqa: E731
  return jax.jit(jax.grad(objective)).lower(params).as_text()


def _dots(text: str) -> list[str]:
  """(operand, operand) -> result element types of every dot in StableHLO text."""
  return [", ".join(m) for m in re.findall(
      r"stablehlo\.dot_general.*\(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\) -> "
      r"tensor<[^>]*x(\w+)>", text)]


def test_accelerators_get_the_weight_grad_dot_from_bfloat16_operands(monkeypatch):
  # Off the CPU the float32 result comes from bf16 operands (XLA:GPU ran the
  # widened dot in float32: ViT-B/16 step 1.26x slower on one H200); the CPU keeps
  # widened operands, since XLA:CPU cannot run a bf16 x bf16 -> f32 dot.
  assert "bf16, bf16, f32" in _dots(_lowered_kernel_grad("gpu", monkeypatch))
  assert "f32, f32, f32" not in _dots(_lowered_kernel_grad("gpu", monkeypatch))
  cpu = _dots(_lowered_kernel_grad("cpu", monkeypatch))
  assert "f32, f32, f32" in cpu and "bf16, bf16, f32" not in cpu
