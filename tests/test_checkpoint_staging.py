"""Staging: reads into reused buffers, writes one piece behind, never refills a buffer early."""

import numpy as np
import pytest

from fp8jax.checkpoint import chunks, safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.staging import Staging, aligned_empty


@pytest.fixture
def source(tmp_path):
  values = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
  path = str(tmp_path / "a.safetensors")
  st.write_file(path, {"w": values})
  return path, st.read_header(path).tensors[0], values


def test_each_write_sees_its_own_piece(source):
  # Each deferred write checks that its input buffer still holds what was read into it,
  # and the computation on it (on the aliased JAX array) gives the right sum.
  path, t, values = source
  staging, seen = Staging(), []

  def write(i, x, total):
    np.testing.assert_array_equal(x, values[4 * i:4 * i + 4])
    assert float(total) == values[4 * i:4 * i + 4].sum()
    seen.append(i)

  with open(path, "rb") as f:
    for i in range(16):
      x = staging.read(f, t, 4 * i * 32, (4, 32))
      total = staging.device(x).sum()
      staging.later(lambda i=i, x=x, total=total: write(i, x, total))
      assert seen == list(range(i))  # one piece behind
    staging.flush()
  assert seen == list(range(16))


def test_two_reads_per_piece_and_reads_without_writes(source):
  path, t, values = source
  staging, seen = Staging(), []
  with open(path, "rb") as f:
    for i in range(8):
      a = staging.read(f, t, 8 * i * 32, (4, 32))
      b = staging.read(f, t, (8 * i + 4) * 32, (4, 32))
      staging.later(lambda i=i, a=a, b=b: seen.append(
          (i, np.array_equal(a, values[8 * i:8 * i + 4]),
           np.array_equal(b, values[8 * i + 4:8 * i + 8]))))
      c = staging.read(f, t, 0, (1, 32))  # read and used at once
      assert np.array_equal(c, values[:1])
      staging.later(None)
    staging.flush()
  assert seen == [(i, True, True) for i in range(8)]


def test_large_reads_get_their_own_buffer(source, monkeypatch):
  path, t, values = source
  monkeypatch.setattr(chunks, "CHUNK_BYTES", 1024)
  staging = Staging()
  with open(path, "rb") as f:
    x = staging.read(f, t)
    y = staging.read(f, t)
  assert x.ctypes.data != y.ctypes.data and x.ctypes.data % 64 == 0
  np.testing.assert_array_equal(x, values)


def test_reads_past_the_end_and_truncated_files_fail(source, tmp_path):
  path, t, _ = source
  with open(path, "rb") as f, pytest.raises(CheckpointError, match="past its end"):
    Staging().read(f, t, 63 * 32, (2, 32))
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(open(path, "rb").read()[:-8])
  with open(cut, "rb") as f, pytest.raises(CheckpointError, match="truncated read"):
    Staging().read(f, t)


def test_aligned_empty():
  for n in (0, 1, 63, 1000):
    a = aligned_empty(n)
    assert a.nbytes == n and (n == 0 or a.ctypes.data % 64 == 0)
