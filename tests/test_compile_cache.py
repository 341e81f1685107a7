"""The compilation cache is on inside `scoped` only, and counts hits and misses."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import compile_cache


def _program(scale):
  # A new function object each time: no in-memory jit cache hit; the same HLO
  # for the same `scale`, so the persistent cache can hit.
  return jax.jit(lambda x: jnp.tanh(x @ x.T * scale).sum())


def _entries(directory):
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_a_second_run_reads_what_the_first_compiled_and_nothing_leaks(tmp_path):
  cache = str(tmp_path / "cache")
  before = jax.config.jax_compilation_cache_dir
  x = np.ones((8, 8), np.float32)
  with compile_cache.scoped(cache) as first:
    _program(3.0)(x).block_until_ready()
  assert first.misses >= 1 and first.hits == 0
  written = _entries(cache)
  assert written
  with compile_cache.scoped(cache) as second:
    _program(3.0)(x).block_until_ready()
  assert second.hits >= 1 and second.misses == 0 and second.seconds_saved >= 0
  assert "1 of 1 programs read from it" in second.summary()
  assert jax.config.jax_compilation_cache_dir == before
  _program(5.0)(x).block_until_ready()  # outside: not cached, not counted
  assert _entries(cache) == written
  assert second.hits + second.misses == 1
