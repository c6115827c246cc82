"""Quantization error (SQNR, dB) of each granularity on 4096x4096 bf16 tensors.

Usage: python benchmarks/sqnr.py [--size 4096]

Prints a Markdown table (the one in the README) and writes it, with the raw
numbers, to benchmarks/results/sqnr.json (or --out), atomically.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp
import numpy as np

from benchmarks import common
import fp8jax
from fp8jax.quant.stats import sqnr_db

LAYOUTS = {
    "tensor": {"scaling": "tensor"},
    "axis (per row)": {"scaling": "axis", "axis": -1},
    "block 1x128": {"scaling": "block", "block_size": 128},
    "tile 128x128": {"scaling": "block", "block_size": (128, 128)},
    "mx (32, e8m0)": {"scaling": "mx"},
}
FORMATS = ["e4m3fn", "e5m2"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=4096)
  parser.add_argument("--out", default=common.results_path("sqnr.json"))
  args = parser.parse_args()
  n = args.size
  rng = np.random.default_rng(0)
  data = {
      "gaussian": rng.standard_normal((n, n)),
      "student-t (3 dof)": rng.standard_t(3, (n, n)),
  }
  results = {}
  for dname, arr in data.items():
    x = jnp.asarray(arr, jnp.bfloat16)
    for fmt in FORMATS:
      for lname, kwargs in LAYOUTS.items():
        y = fp8jax.dequantize(fp8jax.quantize(x, fmt, **kwargs), jnp.float32)
        results[f"{dname} | {fmt} | {lname}"] = sqnr_db(x, y)
  head = "| data | format | " + " | ".join(LAYOUTS) + " |"
  rows = [head, "|" + " --- |" * (len(LAYOUTS) + 2)]
  for dname in data:
    for fmt in FORMATS:
      vals = [f"{results[f'{dname} | {fmt} | {name}']:.1f}" for name in LAYOUTS]
      rows.append(f"| {dname} | {fmt} | " + " | ".join(vals) + " |")
  table = "\n".join(rows)
  print(table)
  common.write_json(args.out, {"size": n, "sqnr_db": results, "table": table,
                               **common.versions("jax")})


if __name__ == "__main__":
  main()
