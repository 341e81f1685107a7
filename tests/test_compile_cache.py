"""The compilation cache is on inside `scoped` only, and counts hits and misses;
a run caches its programs as `train.compilation_cache_dir` says."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import compile_cache, runner
from jaxtrain import config as config_lib
from jaxtrain.config import base_config
from jaxtrain.errors import ConfigError


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


def _small_run(**train):
  c = base_config()
  c.model.name = "mlp"
  c.train.batch_size = 32
  c.train.num_steps = 6
  c.train.log_every = 3
  c.checkpoint.every = 3
  c.optimizer.schedule.warmup_steps = 1
  for k, v in train.items():
    c.train[k] = v
  return c


_LINE = re.compile(r"Compilation cache (\S+): (\d+) of (\d+) programs read from it, "
                   r"([0-9.]+) s of compilation saved")


def _cache_line(out):
  (found,) = _LINE.findall(out)
  return found[0], int(found[1]), int(found[2])


def test_a_restarted_run_reads_its_programs_from_the_workdirs_cache(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  before = jax.config.jax_compilation_cache_dir
  runner.train(_small_run(), workdir, stop_at=3)  # as if preempted after step 3
  directory, hits, total = _cache_line(capsys.readouterr().out)
  assert directory == os.path.join(workdir, "compile_cache")
  assert hits == 0 and total > 0  # all compiled: misses, written to the cache
  assert _entries(directory)
  runner.train(_small_run(), workdir)  # the restart: same programs
  _, hits, total = _cache_line(capsys.readouterr().out)
  assert hits > 0
  assert jax.config.jax_compilation_cache_dir == before  # the run's scope only


def test_off_compiles_without_a_cache_and_a_switch_like_path_is_refused(tmp_path,
                                                                       capsys):
  workdir = str(tmp_path / "run")
  runner.train(_small_run(num_steps=3, compilation_cache_dir="off"), workdir)
  assert "Compilation cache" not in capsys.readouterr().out
  assert not os.path.exists(os.path.join(workdir, "compile_cache"))
  for value in ("None", "false", "OFF", None):
    with pytest.raises(ConfigError, match=r"config\.train\.compilation_cache_dir="
                       r".*'off'"):
      config_lib.validate(_small_run(compilation_cache_dir=value))


def test_a_given_directory_is_used_and_an_uncreatable_one_refused(tmp_path, capsys):
  shared = str(tmp_path / "shared_cache")
  runner.train(_small_run(num_steps=3, compilation_cache_dir=shared),
               str(tmp_path / "run"))
  assert _cache_line(capsys.readouterr().out)[0] == shared and _entries(shared)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ConfigError, match="compilation_cache_dir.*cannot create"):
    runner.train(_small_run(num_steps=3,
                            compilation_cache_dir=str(blocker / "cache")),
                 str(tmp_path / "run2"))


def test_a_cache_that_cannot_be_used_costs_a_compilation_counted_not_a_warning(
    tmp_path, recwarn):
  cache = tmp_path / "cache"
  with compile_cache.scoped(str(cache)) as use:
    cache.write_text("a file where the cache's directory should be")
    assert float(_program(7.0)(np.ones((4, 4), np.float32))) > 0  # still compiles
  assert use.failures >= 1 and use.hits == 0
  assert "cache reads/writes failed" in use.summary()
  assert not [w for w in recwarn if "compilation cache" in str(w.message)]
