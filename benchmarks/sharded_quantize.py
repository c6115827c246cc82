"""Per-tensor quantize of a 64M-element bf16 array on N host devices.

Usage: python benchmarks/sharded_quantize.py --devices 8

Sets XLA's host device count before JAX starts, shards the rows over a
(N,) mesh, and reports the median time and the collectives XLA emitted.
Adds the result to benchmarks/results/sharded_quantize.json (or --out),
replacing an earlier one for the same device count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # imports no JAX, so XLA_FLAGS can still be set below


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--elements", type=int, default=1 << 26)
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--out", default=common.results_path("sharded_quantize.json"))
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  import fp8jax

  rows = args.elements // 4096
  mesh = jax.make_mesh((args.devices,), ("x",))
  x = jax.random.normal(jax.random.key(0), (rows, 4096), jnp.float32).astype(jnp.bfloat16)
  x = jax.device_put(x, NamedSharding(mesh, P("x", None)))
  f = jax.jit(lambda a: fp8jax.quantize(a, "e4m3fn"))
  text = f.lower(x).compile().as_text()
  collectives = {k: len(re.findall(rf"= \S+ {k}(?:-start)?\(", text))
                 for k in ("all-reduce", "all-gather", "all-to-all", "collective-permute")}
  seconds = common.median_time(lambda: jax.block_until_ready(f(x)), args.repeats, warmup=3)
  result = {"devices": args.devices, "elements": rows * 4096, "median_ms": seconds * 1e3,
            "collectives": collectives, "cpu_count": common.machine()["cpu_count"],
            **common.versions("jax")}
  print(json.dumps(result))
  previous = common.read_json(args.out, default=[])
  previous = [r for r in previous if r["devices"] != args.devices] + [result]
  common.write_json(args.out, previous)


if __name__ == "__main__":
  main()
