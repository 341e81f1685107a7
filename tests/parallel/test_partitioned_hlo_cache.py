"""`collectives.partitioned_hlo` dumps the partitioner's HLO even when JAX's persistent
compilation cache (which `jaxtrain sweep` turns on) already holds the program: the
cache key ignores dump options, so a cache hit would skip the compile and the dump."""
import os
import subprocess
import sys

SCRIPT = r"""
import os, sys, tempfile
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
from jaxtrain.parallel import collectives
mesh = jax.make_mesh((8,), ("d",))
f = jax.jit(lambda x: jnp.sum(x ** 2), in_shardings=NamedSharding(mesh, P("d")))
lowered = f.lower(jax.ShapeDtypeStruct((64,), jnp.float32))
lowered.compile()  # now in the persistent cache
hlo = collectives.partitioned_hlo(lowered)
print("all-reduce" in hlo)
"""


def test_dump_survives_a_persistent_cache_hit():
  # A subprocess: the persistent cache is process-global and must not leak here.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().endswith("True")
