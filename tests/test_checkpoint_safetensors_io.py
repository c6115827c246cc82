"""The hand-written safetensors reader and writer, and why they are not the library's."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

from fp8jax.checkpoint import safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.core.layout import FLOATS


def _f8_file(path) -> str:
  path = str(path)
  with st.Writer(path, [st.Entry("w", "F8_E4M3", (4,))], {}) as w:
    w.write("w", np.array([0x00, 0x38, 0x40, 0x7E], np.uint8))  # 0, 1, 2, 448
  return path


def test_the_numpy_frontend_cannot_read_float8_yet(tmp_path):
  # When this fails, `safe_open(framework="np")` reads F8 tensors, and the reader in
  # safetensors_io.py could be replaced by the library's (see its docstring).
  safetensors = pytest.importorskip("safetensors")
  path = _f8_file(tmp_path / "f8.safetensors")
  with pytest.raises(Exception):  # noqa: B017 - any failure: NumPy has no float8 dtype
    with safetensors.safe_open(path, framework="np") as f:
      f.get_tensor("w")


def test_float8_tensors_read_as_their_codes(tmp_path):
  path = _f8_file(tmp_path / "f8.safetensors")
  (info,) = st.read_header(path).tensors
  with open(path, "rb") as f:
    codes = st.read_tensor(f, info)
  assert codes.dtype == np.uint8
  np.testing.assert_array_equal(codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32),
                                [0, 1, 2, 448])


def test_the_float_tags_come_from_the_one_table():
  assert st.FLOAT_TAGS == ("BF16", "F16", "F32")
  for f in FLOATS:
    assert st.DTYPES[f.safetensors] == f.dtype
    assert st.tag_of(f.dtype) == f.safetensors
  for tag in ("F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"):
    assert st.DTYPES[tag] == np.uint8


def test_write_file_is_read_back_by_the_library(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  tensors = {"a": np.arange(6, dtype=np.float16).reshape(2, 3),
             "b": np.linspace(0, 1, 5, dtype=np.float32)}
  path = str(tmp_path / "x.safetensors")
  st.write_file(path, tensors, {"format": "pt"})
  got = safetensors_numpy.load_file(path)
  for name, a in tensors.items():
    np.testing.assert_array_equal(got[name], a)
  # Laid out by decreasing item size, each tensor aligned to it.
  header = st.read_header(path)
  assert [t.name for t in header.tensors] == ["b", "a"]
  assert all(t.start % st.DTYPES[t.dtype].itemsize == 0 for t in header.tensors)


def test_a_failed_write_leaves_no_file(tmp_path):
  path = tmp_path / "x.safetensors"
  with pytest.raises(RuntimeError, match="stop"):
    with st.Writer(str(path), [st.Entry("w", "F32", (2,)), st.Entry("v", "F32", (2,))], {}) as w:
      w.write("w", np.ones(2, np.float32))
      raise RuntimeError("stop")
  assert os.listdir(tmp_path) == []
  with pytest.raises(CheckpointError, match="1 tensors not written"):
    with st.Writer(str(path), [st.Entry("w", "F32", (2,)), st.Entry("v", "F32", (2,))], {}) as w:
      w.write("w", np.ones(2, np.float32))
  assert os.listdir(tmp_path) == []
