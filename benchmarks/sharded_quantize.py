"""Per-tensor quantize of a 64M-element bf16 array on N host devices.

Usage: python benchmarks/sharded_quantize.py --devices 8

Sets XLA's host device count before JAX starts, shards the rows over a
(N,) mesh, and reports the median time and the collectives XLA emitted.
Appends the result to benchmarks/results/sharded_quantize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--elements", type=int, default=1 << 26)
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import fp8jax

  rows = args.elements // 4096
  mesh = jax.make_mesh((args.devices,), ("x",))
  x = jax.random.normal(jax.random.key(0), (rows, 4096), jnp.float32).astype(jnp.bfloat16)
  x = jax.device_put(x, NamedSharding(mesh, P("x", None)))
  f = jax.jit(lambda a: fp8jax.quantize(a, "e4m3fn"))
  text = f.lower(x).compile().as_text()
  collectives = {k: len(re.findall(rf"= \S+ {k}(?:-start)?\(", text))
                 for k in ("all-reduce", "all-gather", "all-to-all", "collective-permute")}
  for _ in range(3):
    jax.block_until_ready(f(x))
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    times.append(time.perf_counter() - t0)
  result = {"devices": args.devices, "elements": rows * 4096,
            "median_ms": statistics.median(times) * 1e3, "collectives": collectives,
            "cpu_count": os.cpu_count(), "jax": jax.__version__}
  print(json.dumps(result))
  out = os.path.join(os.path.dirname(__file__), "results", "sharded_quantize.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  previous = json.load(open(out)) if os.path.exists(out) else []
  previous = [r for r in previous if r["devices"] != args.devices] + [result]
  tmp = out + ".tmp"
  with open(tmp, "w") as fh:
    json.dump(previous, fh, indent=2)
  os.replace(tmp, out)


if __name__ == "__main__":
  main()
