"""First timing: fp8jax.encode (bf16 -> e4m3fn) against XLA's astype, in one process.

Usage: python benchmarks/encode_vs_astype.py [--elements 67108864] [--repeats 15]

Reports the median wall time of each, with a fresh output per call and with
the output buffer donated back (`out=`), plus the first call's time (compile
and one run). Writes the numbers to benchmarks/results/encode_vs_astype.json
as well (through a temporary file, so a partial file never appears).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import fp8jax


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--elements", type=int, default=1 << 26)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "encode_vs_astype.json"))
  args = parser.parse_args()
  n = args.elements
  x = jax.random.normal(jax.random.key(0), (n,), jnp.float32).astype(jnp.bfloat16) * 100
  x = jax.block_until_ready(x)

  native = jax.jit(lambda a: a.astype(jnp.float8_e4m3fn))
  native_into = jax.jit(lambda a, o: a.astype(jnp.float8_e4m3fn), donate_argnums=1,
                        keep_unused=True)
  results = {}

  t0 = time.perf_counter()
  jax.block_until_ready(fp8jax.encode(x, "e4m3fn", overflow="ieee"))
  results["first_call_s_fp8jax"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(native(x))
  results["first_call_s_astype"] = time.perf_counter() - t0

  # The two agree bit for bit (ieee policy is XLA's convert).
  same = np.array_equal(np.asarray(fp8jax.encode(x, "e4m3fn", overflow="ieee")),
                        np.asarray(native(x)).view(np.uint8))
  results["bit_identical"] = bool(same)

  for _ in range(3):  # warm-up
    jax.block_until_ready(fp8jax.encode(x, "e4m3fn"))
    jax.block_until_ready(native(x))
  results["fresh_s_fp8jax_saturate"] = _median_seconds(lambda: fp8jax.encode(x, "e4m3fn"),
                                                       args.repeats)
  results["fresh_s_fp8jax_ieee"] = _median_seconds(
      lambda: fp8jax.encode(x, "e4m3fn", overflow="ieee"), args.repeats)
  results["fresh_s_astype"] = _median_seconds(lambda: native(x), args.repeats)

  holder = {"o": jnp.zeros((n,), jnp.uint8)}

  def ours_into():
    holder["o"] = fp8jax.round_to_fp8_represented_as_int8(x, 3, out=holder["o"])
    return holder["o"]

  native_holder = {"o": jnp.zeros((n,), jnp.float8_e4m3fn)}

  def native_donated():
    native_holder["o"] = native_into(x, native_holder["o"])
    return native_holder["o"]

  for _ in range(3):
    ours_into()
    native_donated()
  results["donated_s_fp8jax"] = _median_seconds(ours_into, args.repeats)
  results["donated_s_astype"] = _median_seconds(native_donated, args.repeats)

  results["speedup_fresh"] = results["fresh_s_astype"] / results["fresh_s_fp8jax_saturate"]
  results["speedup_donated"] = results["donated_s_astype"] / results["donated_s_fp8jax"]
  results.update(elements=n, repeats=args.repeats, jax=jax.__version__,
                 device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                 machine=platform.machine())
  for k, v in results.items():
    if "_s_" in k:
      print(f"{k:28s} {v * 1e3:9.2f} ms")
    elif k.startswith("speedup"):
      print(f"{k:28s} {v:9.2f} x")
    else:
      print(f"{k:28s} {v}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(args.out), suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, args.out)


if __name__ == "__main__":
  main()
