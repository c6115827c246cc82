"""Per-call cost of the torch-facing encode against torch's native cast.

Usage: python benchmarks/torch_overhead.py [--max-elements 67108864] [--out FILE]

For bf16 -> e4m3fn at sizes 2^10 .. 2^26: the code-table route, the JAX
route (DLPack in and out of the jitted kernel) and `.to(torch.float8_e4m3fn)`,
medians in microseconds. Writes benchmarks/results/torch_overhead.json (or
--out), atomically.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from benchmarks import common
import interop
from interop import convert as iconvert


def _median_us(fn, calls: int) -> float:
  """Median microseconds per call over 7 runs of `calls` calls, after 3 warm-up calls."""
  return common.median_time(fn, 7, warmup=3, calls=calls) * 1e6


def _row(n: int, threshold: int) -> dict:
  """One size's times: table route (up to 2^22), JAX route, the default, torch's own."""
  x = torch.randn(n).to(torch.bfloat16)
  calls = max(1, min(1000, (1 << 22) // n))

  def encode():
    return interop.encode(x, "e4m3fn")

  row: dict = {"elements": n}
  try:
    iconvert.TABLE_MAX_ELEMENTS = 1 << 40
    if n <= 1 << 22:
      row["table_us"] = _median_us(encode, calls)
    iconvert.TABLE_MAX_ELEMENTS = -1
    row["jax_us"] = _median_us(encode, calls)
  finally:
    iconvert.TABLE_MAX_ELEMENTS = threshold
  row["auto_us"] = _median_us(encode, calls)
  row["torch_native_us"] = _median_us(lambda: x.to(torch.float8_e4m3fn), calls)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--max-elements", type=int, default=1 << 26,
                      help="the largest size (powers of 4 from 2^10 up to it)")
  parser.add_argument("--out", default=common.results_path("torch_overhead.json"))
  args = parser.parse_args()
  threshold = iconvert.TABLE_MAX_ELEMENTS
  rows = []
  for p in range(10, 27, 2):
    n = 1 << p
    if n > args.max_elements:
      break
    row = _row(n, threshold)
    rows.append(row)
    print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in row.items()))
  common.write_json(args.out, {"threshold": threshold, **common.versions("torch"),
                               "rows": rows})


if __name__ == "__main__":
  main()
