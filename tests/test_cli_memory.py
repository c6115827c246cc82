"""Memory is bounded by the largest tensor, not the file: the command streams tensor by tensor."""

from __future__ import annotations

import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

# Peak RSS of the command alone: the imports' peak is reset away where Linux allows it
# (writing 5 to /proc/self/clear_refs resets VmHWM); else the process's lifetime peak.
_MEASURE = """
import resource, sys
from fp8jax.cli import main
def hwm():
  try:
    with open("/proc/self/status") as f:
      return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
except OSError:
  pass
assert main(sys.argv[1:]) == 0
print(hwm())
"""
_TENSOR = (512, 1024)  # float32: 2 MiB
_MANY = 64  # a 128 MiB file


def _write(path, n: int) -> None:
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  save_file({f"layers.{i}.weight": rng.standard_normal(_TENSOR, np.float32) for i in range(n)},
            str(path))


def _peak_rss(*argv: str, quiet: bool = True) -> int:
  argv = (*argv, "-q") if quiet else argv  # inspect has no -q
  r = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True,
                     timeout=300, check=False)
  assert r.returncode == 0, r.stderr
  return int(r.stdout.split()[-1])


def test_peak_memory_stays_near_the_largest_tensor(tmp_path):
  one, many = tmp_path / "one.safetensors", tmp_path / "many.safetensors"
  _write(one, 1)
  _write(many, _MANY)
  tensor_bytes = 4 * np.prod(_TENSOR)
  file_bytes = many.stat().st_size
  base = _peak_rss("quantize", str(one), str(tmp_path / "one-q.safetensors"),
                   "--scaling", "block:128x128")
  peak = _peak_rss("quantize", str(many), str(tmp_path / "many-q.safetensors"),
                   "--scaling", "block:128x128")
  growth = peak - base
  print(f"peak RSS: 1 tensor {base / 2**20:.0f} MiB, {_MANY} tensors "
        f"({file_bytes / 2**20:.0f} MiB file) {peak / 2**20:.0f} MiB")
  # Measured: a few tensors' worth (the read tensor, its JAX copy, the codes, allocator
  # slack). Generous bound: half the file, 32 tensors; holding the whole input (or
  # reading it through one mmap) would break it.
  assert growth < min(file_bytes / 2, 32 * tensor_bytes), growth
  back = _peak_rss("dequantize", str(tmp_path / "many-q.safetensors"),
                   str(tmp_path / "many-back.safetensors"))
  print(f"dequantize peak RSS: {back / 2**20:.0f} MiB")
  assert back - base < file_bytes / 2


_BIG = 32768  # a 32768 x 32768 BF16 weight: 2 GiB


def _write_big(path, n: int = _BIG) -> int:
  """A one-weight BF16 safetensors file written in slices (never held whole); its tensor bytes."""
  import json
  import struct
  header = json.dumps({"model.w.weight": {"dtype": "BF16", "shape": [n, n],
                                          "data_offsets": [0, 2 * n * n]}}).encode()
  header += b" " * (-len(header) % 8)
  rows = 1024
  base = np.random.default_rng(0).standard_normal((rows, n), np.float32)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
    for i in range(0, n, rows):
      f.write((base * np.float32(1 + i / n)).astype(ml_dtypes.bfloat16).tobytes())
  return 2 * n * n


@pytest.mark.slow
def test_a_2_gib_weight_quantizes_and_inspects_in_bounded_memory(tmp_path):
  # The bound: 2.5 times the largest tensor plus about 600 MB. Before pieces,
  # quantize peaked at 7.7 times the tensor (16 GB) and inspect past 20 GB.
  free = shutil.disk_usage(tmp_path).free
  assert free > 4 * 2**30, f"needs 4 GiB of disk in {tmp_path} ({free} free)"
  src, out = tmp_path / "big.safetensors", tmp_path / "big-q.safetensors"
  tensor_bytes = _write_big(src)
  bound = 2.5 * tensor_bytes + 600e6
  peak = _peak_rss("quantize", str(src), str(out), "--scaling", "block:128x128")
  print(f"quantize peak RSS {peak / 2**20:.0f} MiB")
  assert peak <= bound, peak
  assert out.stat().st_size > tensor_bytes // 2
  inspect = _peak_rss("inspect", str(src), "--format", "e4m3fn", "--scaling", "block:128x128",
                      quiet=False)
  print(f"inspect peak RSS {inspect / 2**20:.0f} MiB")
  assert inspect <= bound, inspect
