"""What XLA emits for each cast: kernels, bytes they move, and the bounds they imply.

Usage: python benchmarks/passes.py [--elements 67108864] [--repeats 15] [--dump DIR]

For fp8jax's encode, decode, stochastic encode and per-tensor quantize, and
for XLA's own astype, it compiles the jitted function, lists the kernels
(fusions, custom calls) of the optimized HLO's entry computation with the
bytes each reads and writes, and counts the passes over the large arrays.
It then times two lower bounds at the same size: a trivial kernel that
reads the bfloat16 input and writes one byte per element (`x >> 8`), with a
fresh output and with a reused (donated) one. No cast can beat the trivial
kernel in the same mode, so its time bounds every speedup over a peer:
peer time / trivial time. With `--dump DIR`, XLA also writes its HLO, LLVM
IR and object files there (XLA_FLAGS=--xla_dump_to), for reading the loops.

Writes benchmarks/results/passes.json (or --out), atomically.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # imports no JAX, so XLA_FLAGS can still be set below


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--elements", type=int, default=1 << 26)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--dump", default=None, help="folder for XLA's HLO / LLVM IR dumps")
  parser.add_argument("--out", default=common.results_path("passes.json"))
  return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.dump:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={ARGS.dump}")

import jax  # noqa: E402  (after XLA_FLAGS)
from jax import lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fp8jax  # noqa: E402

_KERNEL = re.compile(r"^\s*(?:ROOT )?%\S+ = \(?(\S+?)\[([\d,]*)\]\S* (fusion|custom-call|copy|"
                     r"reduce|reduce-window|sort|all-reduce|conditional)\((.*?)\)")
_BYTES = {"u8": 1, "s8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "u16": 2, "s16": 2, "bf16": 2,
          "f16": 2, "u32": 4, "s32": 4, "f32": 4, "pred": 1}


def kernels(fn, *args) -> list[dict]:
  """The entry computation's kernels with the bytes of their large results."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  entry = text[text.index("ENTRY"):]
  out = []
  for line in entry.splitlines():
    m = _KERNEL.match(line)
    if not m:
      continue
    dtype, dims, kind, _ = m.groups()
    n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    fused = "ynn" if "__ynn" in line else kind
    out.append({"kind": fused, "result": f"{dtype}[{dims}]",
                "result_bytes": n * _BYTES.get(dtype, 4)})
  return out


def _time(fn, repeats: int) -> float:
  """Median seconds per call of fn, waited for, after 3 warm-up calls."""
  return common.median_time(lambda: jax.block_until_ready(fn()), repeats, warmup=3)


def main() -> None:
  args = ARGS
  n = args.elements
  x = jax.block_until_ready(
      (jax.random.normal(jax.random.key(0), (n,), jnp.float32) * 100).astype(jnp.bfloat16))
  codes = jax.block_until_ready(fp8jax.encode(x, "e4m3fn"))
  f8 = fp8jax.as_float8(codes, "e4m3fn")
  key = jax.random.key(0)
  ops = {
      "fp8jax encode e4m3fn": (lambda a: fp8jax.encode(a, "e4m3fn"), x),
      "fp8jax encode stochastic": (
          lambda a: fp8jax.encode(a, "e4m3fn", rounding="stochastic", key=key), x),
      "fp8jax decode": (lambda b: fp8jax.decode(b, "e4m3fn"), codes),
      "fp8jax quantize tensor": (lambda a: fp8jax.quantize(a, "e4m3fn").bits, x),
      "xla astype e4m3fn": (lambda a: a.astype(jnp.float8_e4m3fn), x),
      "xla astype f8->bf16": (lambda b: b.astype(jnp.bfloat16), f8),
  }
  report: dict = {"elements": n, **common.versions("jax"), "device": common.device()["device"],
                  "cpu_count": common.machine()["cpu_count"], "ops": {}}
  large = n // 64  # kernels producing fewer bytes than this are bookkeeping
  for name, (fn, arg) in ops.items():
    ks = kernels(fn, arg)
    big = [k for k in ks if k["result_bytes"] >= large]
    report["ops"][name] = {"kernels": ks, "passes": len(big)}
    print(f"{name:26s} {len(big)} pass(es) over the data: "
          + ", ".join(f"{k['kind']} -> {k['result']}" for k in big))

  trivial = jax.jit(lambda a: (lax.bitcast_convert_type(a, jnp.uint16) >> 8).astype(jnp.uint8))
  trivial_into = jax.jit(
      lambda a, o: (lax.bitcast_convert_type(a, jnp.uint16) >> 8).astype(jnp.uint8),
      donate_argnums=1, keep_unused=True)
  holder = {"o": jnp.zeros((n,), jnp.uint8)}

  def reused():
    holder["o"] = trivial_into(x, holder["o"])
    return holder["o"]

  fresh_s = _time(lambda: trivial(x), args.repeats)
  reused_s = _time(reused, args.repeats)
  report["trivial_kernel_s"] = {"fresh": fresh_s, "reused": reused_s}
  print(f"trivial 3-byte/element kernel: fresh {fresh_s * 1e3:.2f} ms, "
        f"reused {reused_s * 1e3:.2f} ms ({3 * n / reused_s / 1e9:.1f} GB/s); a fresh "
        f"output costs {(fresh_s - reused_s) * 1e3:.2f} ms of page faults")

  common.write_json(args.out, report)
  print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
