"""Weights files: .npz and .safetensors (written by the safetensors package itself)."""
import numpy as np
import pytest

from jaxtrain.errors import ConfigError
from jaxtrain.pretrained import files

ARRAYS = {"conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
          "bn1.num_batches_tracked": np.array(5, np.int64),
          "fc.bias": np.array([1.5, -2.0], np.float16)}


def _same(got, want):
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape
    np.testing.assert_array_equal(got[k], v)


def test_npz_round_trip(tmp_path):
  np.savez(tmp_path / "w.npz", **ARRAYS)
  _same(files.read_arrays(str(tmp_path / "w.npz")), ARRAYS)


def test_safetensors_written_by_the_library_read_back(tmp_path):
  st_numpy = pytest.importorskip("safetensors.numpy")
  st_numpy.save_file(ARRAYS, str(tmp_path / "w.safetensors"))
  _same(files.read_arrays(str(tmp_path / "w.safetensors")), ARRAYS)


@pytest.mark.parametrize("name,content,words", [
    ("w.pt", b"", "give a .npz or .safetensors file"),
    ("absent.npz", None, "no such file"),
    ("w.npz", b"PK\x03\x04 not really a zip", "cannot read it as .npz"),
    ("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", "cannot read it"),
])
def test_bad_files_name_the_field(tmp_path, name, content, words):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(ConfigError) as e:
    files.read_arrays(str(path))
  assert str(e.value).startswith(f"config.init_from.file={str(path)!r}: ")
  assert words in str(e.value)


def test_npz_with_pickled_objects_is_refused(tmp_path):
  np.savez(tmp_path / "w.npz", evil=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ConfigError, match="cannot read it as .npz"):
    files.read_arrays(str(tmp_path / "w.npz"))
