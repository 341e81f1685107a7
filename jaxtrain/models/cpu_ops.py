"""CPU-friendly forms of two ResNet ops: 1x1 convolution and max-pooling.

Same values and variables as `nn.Conv` and `nn.max_pool`; only how XLA:CPU is asked
to compute them differs (`jaxtrain.precision`, ``impl="fused"``).

1x1 convolution as a matmul over channels.

A 1x1 convolution is a fully connected layer applied at every pixel (Lin et al. 2013,
"Network in Network", arXiv:1312.4400, Sec. 3.2): ``y[n,h,w] = x[n,h,w] @ K[0,0]``.
With no padding, stride ``s`` only reads every ``s``-th pixel, so a strided 1x1
convolution is a strided slice followed by the same matmul.

Why it exists: XLA:CPU (jax 0.10) computes the kernel gradient of a convolution as
a "backward-filter" convolution whose contraction runs over batch x height x width;
for 1x1 kernels it first transposes the activations to (C, H, W, N) and then runs at a
fraction of the matmul rate. On ResNet-50 (224 px, batch 16) those kernel gradients
and transposes were over half of the train step. As a `dot_general`, the forward, the
input gradient and the kernel gradient are three plain matmuls over (pixels,
channels) matrices. See ``benchmarks/cpu_step.py --profile``.

`PointwiseConv` declares exactly the parameter of ``nn.Conv(features, (1, 1),
use_bias=False)`` (``kernel``, shape ``(1, 1, in, out)``, same initializer call), so
parameters, checkpoints, optimizer masks and logical sharding names are unchanged.

Max-pooling gradient. JAX differentiates `nn.max_pool` into a select-and-scatter,
which XLA:CPU expands into four int32 index arrays the size of the input, a
five-operand reduce-window and a scatter (~3% of the ResNet-50 step). `max_pool`
keeps the forward and gives each window's gradient to its first maximal element in
row-major window order, exactly as select-and-scatter with ``>=`` does, as one
elementwise pass: a compare per window offset and a strided pad per offset.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from flax import linen as nn

from jaxtrain import precision as precision_lib

Initializer = Any


class PointwiseConv(nn.Module):
  """Bias-free 1x1 convolution (NHWC, no padding) as a channel matmul.

  Equals ``nn.Conv(features, (1, 1), (stride, stride), padding=0, use_bias=False)``
  up to float32 summation order.

  Attributes:
    features: output channels.
    stride: spatial stride (the same along height and width).
    dtype: compute dtype (None: inferred from input and kernel, as `nn.Conv`).
    param_dtype: kernel dtype.
    kernel_init: initializer of the (1, 1, in, out) kernel.
    precision: `jax.lax.Precision` of the matmul, as `nn.Conv`'s.
  """
  features: int
  stride: int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps (N, H, W, C) to (N, ceil(H / stride), ceil(W / stride), features)."""
    kernel = self.param("kernel", self.kernel_init,
                        (1, 1, x.shape[-1], self.features), self.param_dtype)
    # The kernel stays float32: its gradient leaves the matmul in float32.
    (x, *_) = precision_lib.promote_inputs(x, kernel, dtype=self.dtype)
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    # As a 2-D (pixels, channels) matmul, the kernel gradient is dot(x2d, dy2d)
    # contracting axis 0 of both, which XLA:CPU runs in place; contracting the
    # three leading axes of 4-D operands makes it copy a transpose of dy first.
    y = precision_lib.dot_general(x.reshape(-1, x.shape[-1]), kernel[0, 0],
                                 (((1,), (0,)), ((), ())), precision=self.precision)
    return y.reshape(x.shape[:-1] + (self.features,))


def _window_views(xp: jax.Array, window: int, stride: int,
                  out_hw: tuple[int, int]) -> list[jax.Array]:
  """Strided (N, OH, OW, C) views of padded `xp`, one per window offset (row-major)."""
  oh, ow = out_hw
  return [lax.slice(xp, (0, i, j, 0),
                    (xp.shape[0], i + stride * (oh - 1) + 1,
                     j + stride * (ow - 1) + 1, xp.shape[3]), (1, stride, stride, 1))
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  """``nn.max_pool(x, (window,) * 2, (stride,) * 2, ((padding,) * 2,) * 2)``, NHWC."""
  return nn.max_pool(x, (window, window), (stride, stride),
                     ((padding, padding), (padding, padding)))


def _max_pool_forward(x, window, stride, padding):
  y = max_pool(x, window, stride, padding)
  return y, (x, y)


def _max_pool_backward(window, stride, padding, residuals, g):
  x, y = residuals
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  xp = jnp.pad(x, pad, constant_values=-jnp.inf)  # never selected, as in XLA
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, g.dtype)
  zero = jnp.zeros((), g.dtype)
  for k, view in enumerate(_window_views(xp, window, stride, y.shape[1:3])):
    i, j = divmod(k, window)
    hit = (view == y) & ~taken
    taken = taken | hit
    # The transpose of the strided slice at offset (i, j): an interior pad.
    dxp = dxp + lax.pad(jnp.where(hit, g, zero), zero, (
        (0, 0, 0), (i, xp.shape[1] - i - stride * (y.shape[1] - 1) - 1, stride - 1),
        (j, xp.shape[2] - j - stride * (y.shape[2] - 1) - 1, stride - 1), (0, 0, 0)))
  return (dxp[:, padding:xp.shape[1] - padding, padding:xp.shape[2] - padding],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
