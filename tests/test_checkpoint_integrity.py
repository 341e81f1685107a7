"""Checksummed checkpoints: damage that Orbax would restore silently is found.

The reference hashes are XXH3-64 (the `xxhash` package) of numpy slices of the
global arrays, computed here independently of how `jaxtrain.checksums` walks the
shards. The
faults are injected the way storage damages a checkpoint: random bytes written into
the middle of the largest stored chunk (found in the OCDBT b-tree), and, for one
array of every dtype the train state holds, bytes changed in the middle of its
stored chunk through TensorStore (a chunk that still decodes, so only the
checksums can tell).
"""
import json
import os
import subprocess
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
import xxhash
from jax.sharding import NamedSharding, PartitionSpec as P

import processes

from jaxtrain import checksums, cli, runner
from jaxtrain.metrics import TIMING_KEYS

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPERIMENT = os.path.join(ROOT, "experiments", "digits_cnn.py")
OVERRIDES = ["train.num_steps=30", "train.num_epochs=0", "train.batch_size=32",
             "train.log_every=5", "train.eval_every=0", "checkpoint.every=10",
             "checkpoint.keep=5", "model.name=mlp", "optimizer.schedule.warmup_steps=2"]


def _values():
  rng = np.random.default_rng(0)
  return {"f32": rng.standard_normal((16, 12)).astype(np.float32),
          "bf16": rng.standard_normal((8, 6)).astype(jnp.bfloat16),
          "i32": rng.integers(-9, 9, (8, 4)).astype(np.int32),
          "u32": rng.integers(0, 2**32, (2,), dtype=np.uint32),
          "flag": rng.integers(0, 2, (8,)).astype(bool),
          "step": np.int32(7)}


def _place(values, mesh, specs):
  return {k: jax.device_put(v, NamedSharding(mesh, specs.get(k, P())))
          for k, v in values.items()}


def _reference(values, record, hash_fn=xxhash.xxh3_64_intdigest):
  """The hash of each recorded slice of the global numpy array."""
  out = {}
  for name, entries in record["arrays"].items():
    whole = np.asarray(values[name])
    for e in entries:
      part = whole[tuple(slice(a, b) for a, b in e["slice"])]
      out[(name, tuple(map(tuple, e["slice"])))] = hash_fn(
          np.ascontiguousarray(part).tobytes())
  return out


@pytest.mark.parametrize("piece_bytes", [checksums.PIECE_BYTES, 30])
def test_record_holds_the_hash_of_every_saved_slice_once(piece_bytes, monkeypatch):
  monkeypatch.setattr(checksums, "PIECE_BYTES", piece_bytes)  # 30: a row a piece
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  values = _values()
  tree = _place(values, mesh, {"f32": P("a", "b"), "bf16": P("b"), "i32": P("a")})
  record = checksums.record(tree, {"iterator": {"pos": 3}})
  assert record["algorithm"] == "xxh3_64"
  got = {(n, tuple(map(tuple, e["slice"]))): e["hash"]
         for n, es in record["arrays"].items() for e in es}
  assert got == _reference(values, record)
  # Each element is covered exactly once (replica 0 of each slice).
  for name, entries in record["arrays"].items():
    count = np.zeros(np.shape(values[name]), np.int32)
    for e in entries:
      count[tuple(slice(a, b) for a, b in e["slice"])] += 1
    assert (count == 1).all(), name
  assert record["data"] == xxhash.xxh3_64_intdigest(b'{"iterator":{"pos":3}}')


def test_a_crc32_record_is_checked_with_crc32():
  values = _values()
  tree = _place(values, jax.make_mesh((8,), ("a",)), {"f32": P("a")})
  record = checksums.record(tree)
  crc = _reference(values, record, zlib.crc32)
  record = {"algorithm": "crc32", "arrays": {
      n: [{"slice": e["slice"], "hash": crc[(n, tuple(map(tuple, e["slice"])))]}
          for e in es] for n, es in record["arrays"].items()}}
  assert checksums.verify(tree, None, [record]).ok
  record["arrays"]["i32"][0]["hash"] ^= 1
  assert checksums.verify(tree, None, [record]).mismatched == ["i32[0:8, 0:4]"]


def test_restore_onto_another_layout_checks_every_slice():
  values = _values()
  saved = _place(values, jax.make_mesh((4, 2), ("a", "b")),
                 {"f32": P("a", "b"), "bf16": P("b"), "i32": P("a")})
  record = checksums.record(saved)
  other = _place(values, jax.make_mesh((2, 4), ("a", "b")),
                 {"f32": P("b", "a"), "i32": P(None, "b")})
  verdict = checksums.verify(other, None, [record])
  assert verdict.ok and not verdict.unchecked
  assert verdict.checked == sum(len(e) for e in record["arrays"].values())


@pytest.mark.parametrize("name", ["f32", "bf16", "i32", "u32", "flag", "step"])
def test_one_changed_element_of_any_dtype_is_named(name):
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  values = _values()
  record = checksums.record(_place(values, mesh, {"f32": P("a", "b")}),
                            {"iterator": 1})
  changed = dict(values)
  flat = np.array(values[name]).reshape(-1)
  flat[flat.size // 2] = ~flat[flat.size // 2] if name == "flag" else flat[0] + 1
  changed[name] = flat.reshape(np.shape(values[name]))
  if np.array_equal(changed[name], values[name]):
    changed[name] = changed[name] + 1
  verdict = checksums.verify(_place(changed, mesh, {}), {"iterator": 1}, [record])
  assert len(verdict.mismatched) == 1 and verdict.mismatched[0].startswith(name)


def test_changed_data_position_is_named():
  record = checksums.record({"x": jnp.zeros(3)}, {"iterator": {"pos": 3}})
  verdict = checksums.verify({"x": jnp.zeros(3)}, {"iterator": {"pos": 4}}, [record])
  assert verdict.mismatched == ["the data-iterator state"]


# --- faults injected into a real run's checkpoint ----------------------------------

def _config():
  return cli.load_config(EXPERIMENT, OVERRIDES)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run every recovered one must equal."""
  workdir = tmp_path_factory.mktemp("straight")
  return runner.train(_config(), str(workdir)), workdir


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def _kvstore(step_dir):
  return {"driver": "file", "path": str(step_dir / "state") + "/"}


def _stored_values(step_dir):
  """[(key, file, offset, length)] of the values stored outside the b-tree."""
  kv = ts.KvStore.open(_kvstore(step_dir)).result()
  manifest = ts.ocdbt.dump(kv).result()
  nodes = [manifest["versions"][-1]["root"]["location"]]
  out = []
  while nodes:
    node = ts.ocdbt.dump(kv, nodes.pop()).result()
    for e in node["entries"]:
      if "node" in e:
        nodes.append(e["node"]["location"])
      elif "indirect_value" in e:
        # value:<prefix>:<file>:<offset>:<length>
        _, prefix, name, offset, length = e["indirect_value"].split(":")
        out.append((e["key"], os.path.join(step_dir, "state", prefix, name),
                    int(offset), int(length)))
  return out


def _write_random_bytes(step_dir, position, size, seed):
  key, path, offset, length = max(_stored_values(step_dir), key=lambda v: v[3])
  size = min(size, length)
  at = offset + int((length - size) * position)
  with open(path, "r+b") as f:
    f.seek(at)
    f.write(np.random.default_rng(seed).bytes(size))
  return key


def _change_stored_chunk(step_dir, array_key, at=None, kvstore=None):
  """Changes byte `at` (default: the middle one) of an array's stored bytes, via
  TensorStore: the chunk still decodes, only its contents differ."""
  store = ts.open({"driver": "zarr", "kvstore": {
      "driver": "ocdbt", "base": kvstore or _kvstore(step_dir),
      "path": array_key + "/"}}).result()
  value = store.read().result()
  raw = value.reshape(-1).view(np.uint8).copy()
  raw[raw.size // 2 if at is None else at] ^= 0xA5
  store.write(raw.view(value.dtype).reshape(value.shape)).result()
  return value.dtype


def _resume_after(corrupt, tmp_path, capsys):
  workdir = tmp_path / "run"
  runner.train(_config(), str(workdir), stop_at=20)
  corrupt(workdir / "checkpoints" / "20")
  capsys.readouterr()
  resumed = runner.train(_config(), str(workdir))
  out = capsys.readouterr().out
  assert "Checkpoint at step 20 is incomplete or corrupt" in out, out
  assert "Resumed from the checkpoint at step 10" in out
  # 20 set aside (kept), 20 and 30 saved again by the resumed run: none deleted.
  assert set(os.listdir(workdir / "checkpoints")) == {"10", "20", "20.corrupt", "30"}
  return resumed, out


@pytest.mark.parametrize("position,size", [(0.5, 4096), (0.25, 1), (0.75, 64)])
def test_random_bytes_in_the_largest_chunk_are_found(position, size, straight,
                                                     tmp_path, capsys):
  resumed, out = _resume_after(
      lambda d: _write_random_bytes(d, position, size, seed=int(position * 100)),
      tmp_path, capsys)
  for x, y in zip(_leaves(straight[0].state), _leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("array_key,dtype", [
    ("train.opt_state.0.0.trace.hidden1.kernel", np.float32),  # momentum
    ("train.params.hidden0.bias", np.float32),
    ("train.step", np.int32),
    ("train.rng", np.uint32),
    ("metrics.nonfinite_step", np.int32)])
def test_changed_chunk_of_every_state_dtype_is_found_by_its_checksum(
    array_key, dtype, straight, tmp_path, capsys):
  seen = []
  resumed, out = _resume_after(
      lambda d: seen.append(_change_stored_chunk(d, array_key)), tmp_path, capsys)
  assert seen == [np.dtype(dtype)]
  assert "CheckpointCorruptError: contents differ from the checksums" in out
  assert array_key.replace(".", "/") in out
  for x, y in zip(_leaves(straight[0].state), _leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)


# --- the other checkpoints a run reads: the best state, a distillation teacher ------

def test_a_damaged_best_checkpoint_is_not_returned_as_the_result(tmp_path):
  from jaxtrain.checkpoint import CheckpointCorruptError  # pylint: disable=g-import-not-at-top
  config = _config().to_config()  # a copy to change (validated again by train)
  config.train.eval_every = 10
  config.train.early_stopping.metric = "eval/loss"
  config.train.early_stopping.mode = "min"
  runner.train(config, str(tmp_path))
  (best,) = os.listdir(tmp_path / "best")  # a re-run of a finished run restores it
  _change_stored_chunk(tmp_path / "best" / best, "train.params.hidden0.kernel")
  with pytest.raises(CheckpointCorruptError,
                     match=rf"the best checkpoint \(step {best}\) in .* is damaged: "
                     "contents differ .* train/params/hidden0/kernel"):
    runner.train(config, str(tmp_path))


def test_a_damaged_teacher_checkpoint_is_refused(straight, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from jaxtrain.errors import ConfigError  # pylint: disable=g-import-not-at-top
  teacher = tmp_path / "teacher"
  shutil.copytree(straight[1], teacher)
  _change_stored_chunk(teacher / "checkpoints" / "30", "train.params.head.kernel")
  student = _config().to_config()
  student.loss.name = "distillation"
  student.distill.teacher_workdir = str(teacher)
  with pytest.raises(ConfigError, match=r"distill.teacher_workdir=.*its checkpoint "
                     r"at step 30 in .* is damaged \(contents differ .* "
                     "train/params/head/kernel"):
    runner.train(student, str(tmp_path / "student"))


# --- two processes x 4 devices write and check one checkpoint ----------------------

MULTIHOST = ["train.num_steps=12", "train.num_epochs=0", "train.batch_size=32",
             "train.log_every=3", "train.eval_every=0", "checkpoint.every=6",
             "model.name=mlp", "optimizer.schedule.warmup_steps=2", "mesh.data=1",
             "mesh.fsdp=8", "sharding.rules=[('batch', ('data', 'fsdp')), "
             "('embed', 'fsdp')]"]


def _two_processes(workdir):
  port = processes.free_port()
  return processes.run_together(
      [processes.jaxtrain_cmd("train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
                              *(f"--config.{o}" for o in MULTIHOST),
                              *processes.multihost_flags(port, 2, i))
       for i in range(2)], processes.cpu_env(4), timeout=300)


def _rows(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in f]


def test_two_processes_each_record_their_shards_and_find_damage_in_either(tmp_path):
  workdir = tmp_path / "run"
  _two_processes(workdir)
  first_log = _rows(workdir)
  step_dir = workdir / "checkpoints" / "12"
  records = [json.loads((step_dir / "checksums" / f"process_{i}.json").read_text())
             for i in range(2)]
  # FSDP: hidden1/kernel (256, 256) is split by columns over the 8 devices, so
  # process 1 records columns 128..256 and process 0 the rest, each exactly once.
  cols = [sorted(tuple(e["slice"][1]) for e in r["arrays"]["train/params/hidden1/kernel"])
          for r in records]
  assert cols == [[(32 * i, 32 * i + 32) for i in range(4)],
                  [(32 * i, 32 * i + 32) for i in range(4, 8)]]
  # One changed byte in process 1's part (the last column of row 0) of the momentum.
  _change_stored_chunk(step_dir, "train.opt_state.0.0.trace.hidden1.kernel",
                       at=255 * 4 + 1)
  outs = _two_processes(workdir)
  assert ("Checkpoint at step 12 is incomplete or corrupt (CheckpointCorruptError: "
          "contents differ from the checksums recorded at the save: "
          "train/opt_state/0/0/trace/hidden1/kernel[0:256, 224:256])") in outs[0]
  assert "Resumed from the checkpoint at step 6" in outs[0]
  assert set(os.listdir(workdir / "checkpoints")) == {"6", "12", "12.corrupt"}
  assert _rows(workdir) == first_log  # steps 7..12 again, the same numbers


# --- gs:// --------------------------------------------------------------------------

def test_checkpoints_in_a_bucket_are_checked_too(gcs):
  from gcs_emulator import BUCKET  # pylint: disable=g-import-not-at-top
  workdir = f"gs://{BUCKET}/integrity"
  cmd = processes.jaxtrain_cmd(
      "train", f"--config={EXPERIMENT}", f"--workdir={workdir}",
      *(f"--config.{o}" for o in MULTIHOST
        if not o.startswith(("mesh.", "sharding."))))

  def run():
    proc = subprocess.run(cmd, env={**processes.cpu_env(8), **gcs.env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout

  run()
  assert "integrity/checkpoints/12/checksums/process_0.json" in gcs.names("integrity/")
  _change_stored_chunk(None, "train.rng", kvstore={
      "driver": "gcs", "bucket": BUCKET, "path": "integrity/checkpoints/12/state/"})
  out = run()
  assert ("Checkpoint at step 12 is incomplete or corrupt (CheckpointCorruptError: "
          "contents differ from the checksums recorded at the save: train/rng") in out
  assert "Resumed from the checkpoint at step 6" in out
  names = gcs.names("integrity/checkpoints/")
  assert "integrity/checkpoints/12.corrupt/checksums/process_0.json" in names
  assert "integrity/checkpoints/12/commit_success.txt" in names  # saved again
