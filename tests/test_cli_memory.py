"""Memory is bounded by the largest tensor, not the file: the command streams tensor by tensor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

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
assert main(sys.argv[1:] + ["-q"]) == 0
print(hwm())
"""
_TENSOR = (512, 1024)  # float32: 2 MiB
_MANY = 64  # a 128 MiB file


def _write(path, n: int) -> None:
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  save_file({f"layers.{i}.weight": rng.standard_normal(_TENSOR, np.float32) for i in range(n)},
            str(path))


def _peak_rss(*argv: str) -> int:
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
  # Measured: about 11 tensors' worth (the read tensor, its JAX copy, the codes, the
  # float32 round trip for the SQNR, allocator slack). Generous bound: half the file, 32
  # tensors; holding the whole input (or reading it through one mmap) would break it.
  assert growth < min(file_bytes / 2, 32 * tensor_bytes), growth
  back = _peak_rss("dequantize", str(tmp_path / "many-q.safetensors"),
                   str(tmp_path / "many-back.safetensors"))
  print(f"dequantize peak RSS: {back / 2**20:.0f} MiB")
  assert back - base < file_bytes / 2
