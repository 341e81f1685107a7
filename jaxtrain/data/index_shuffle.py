"""Grain's `index_shuffle` for a whole epoch at once, in numpy.

Grain's `MapDataset.shuffle` maps position i of epoch e to
`index_shuffle(i, n - 1, seed + e, rounds=4)`: a cycle-walking (Black & Rogaway
2002, "Ciphers with arbitrary finite domains") Simon block cipher (Beaulieu et al.
2013, eprint 2013/404) on blocks of max(16, even ceil(log2(n - 1))) bits, its
round keys drawn from C++ `std::seed_seq{seed}` (grain/_src/python/experimental/
index_shuffle/index_shuffle.cc). Each call there costs tens of microseconds from
Python, i.e. milliseconds per batch of 64; here one epoch's permutation costs a
few dozen numpy operations. Tests compare it with Grain's own for many sizes.
"""
from __future__ import annotations

import math

import numpy as np

_M32 = 0xFFFFFFFF


def seed_seq_generate(seed: int, count: int) -> list[int]:
  """`std::seed_seq{seed}.generate` of `count` 32-bit words ([rand.util.seedseq])."""
  v, n, s = [seed & _M32], count, 1
  out = [0x8B8B8B8B] * n
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (
      (n - 1) // 2)
  p = (n - t) // 2
  q, m = p + t, max(s + 1, n)
  mix = lambda x: x ^ (x >> 27)  # noqa: E731
  for k in range(m):
    r1 = (1664525 * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n])) & _M32
    r2 = (r1 + (s if k == 0 else k % n + v[k - 1] if k <= s else k % n)) & _M32
    out[(k + p) % n] = (out[(k + p) % n] + r1) & _M32
    out[(k + q) % n] = (out[(k + q) % n] + r2) & _M32
    out[k % n] = r2
  for k in range(m, m + n):
    r3 = (1566083941 * mix((out[k % n] + out[(k + p) % n] + out[(k - 1) % n])
                           & _M32)) & _M32
    r4 = (r3 - k % n) & _M32
    out[(k + p) % n] ^= r3
    out[(k + q) % n] ^= r4
    out[k % n] = r4
  return out


def block_bits(max_index: int) -> int:
  bits = math.ceil(math.log2(max_index))
  return max(bits + bits % 2, 16)


def permutation(n: int, seed: int, rounds: int = 4) -> np.ndarray:
  """[index_shuffle(i, n - 1, seed, rounds) for i in range(n)] as int64.

  Walks take ~2^bits / n encryptions, so a tiny n (under 256 in a 16-bit block)
  is cheaper through Grain's own function.
  """
  if n == 1:
    return np.zeros(1, np.int64)
  w = block_bits(n - 1) // 2
  mask = np.uint64((1 << w) - 1)
  keys = [np.uint64(k) & mask for k in seed_seq_generate(seed, rounds)]

  def rotl(x, r):
    return ((x << np.uint64(r)) | (x >> np.uint64(w - r))) & mask

  def f(x):
    return (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

  def encrypt(value):
    left, right = value >> np.uint64(w), value & mask
    for i in range(0, rounds, 2):
      left = left ^ f(right) ^ keys[i]
      right = right ^ f(left) ^ keys[i + 1]
    return (left << np.uint64(w)) | right

  if (1 << 2 * w) <= 4 * n:  # walks are short: encrypt the walkers again
    step, out = encrypt, np.arange(n, dtype=np.uint64)
  else:  # a small n in the 16-bit minimum block: encrypt the block once, walk it
    table = encrypt(np.arange(1 << 2 * w, dtype=np.uint64))
    step, out = (lambda x: table[x]), np.arange(n, dtype=np.uint64)
  todo = np.arange(n)
  while todo.size:  # cycle walking: re-encrypt until inside [0, n)
    out[todo] = step(out[todo])
    todo = todo[out[todo] > np.uint64(n - 1)]
  return out.astype(np.int64)
