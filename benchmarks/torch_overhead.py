"""Per-call cost of the torch-facing encode against torch's native cast.

Usage: python benchmarks/torch_overhead.py

For bf16 -> e4m3fn at sizes 2^10 .. 2^26: the code-table route, the JAX
route (DLPack in and out of the jitted kernel) and `.to(torch.float8_e4m3fn)`,
medians in microseconds. Writes benchmarks/results/torch_overhead.json.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import torch

import interop
from interop import convert as iconvert


def _median_us(fn, calls: int) -> float:
  for _ in range(3):
    fn()
  runs = []
  for _ in range(7):
    t0 = time.perf_counter()
    for _ in range(calls):
      fn()
    runs.append((time.perf_counter() - t0) / calls * 1e6)
  return statistics.median(runs)


def main() -> None:
  threshold = iconvert.TABLE_MAX_ELEMENTS
  rows = []
  for p in range(10, 27, 2):
    n = 1 << p
    x = torch.randn(n).to(torch.bfloat16)
    calls = max(1, min(1000, (1 << 22) // n))
    row = {"elements": n}
    try:
      iconvert.TABLE_MAX_ELEMENTS = 1 << 40
      if n <= 1 << 22:
        row["table_us"] = _median_us(lambda: interop.encode(x, "e4m3fn"), calls)
      iconvert.TABLE_MAX_ELEMENTS = -1
      row["jax_us"] = _median_us(lambda: interop.encode(x, "e4m3fn"), calls)
    finally:
      iconvert.TABLE_MAX_ELEMENTS = threshold
    row["auto_us"] = _median_us(lambda: interop.encode(x, "e4m3fn"), calls)
    row["torch_native_us"] = _median_us(lambda: x.to(torch.float8_e4m3fn), calls)
    rows.append(row)
    print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
  out = os.path.join(os.path.dirname(__file__), "results", "torch_overhead.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump({"threshold": threshold, "torch": torch.__version__, "rows": rows}, f, indent=2)
  os.replace(tmp, out)


if __name__ == "__main__":
  main()
