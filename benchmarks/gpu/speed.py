"""Section e: throughput of the casts and quantizers against the copy floor and the peers.

Bytes counted per element are those that must move: a cast reads 2 (bf16) and writes 1
(codes), 3 in all, and decode the reverse; per-tensor quantize reads the input twice (the
amax must be known before the first code), 5; per-axis, block and MX quantize 3 plus
their scales (FP4 codes are unpacked, one byte each); NVFP4 5 (its float32 tensor scale
needs the tensor's amax first) plus its e4m3fn block scales and the tensor scale.

The floor is the device's copy bandwidth, measured two ways on a buffer of 1.5 bytes per
element (so that a copy moves the same 3 bytes per element as a cast): a jitted `jnp.copy`
(XLA emits a device-to-device memcpy) and a jitted `u + 1` over uint32 words (a streaming
kernel). The faster of the two is the floor; both are recorded.
"""

from __future__ import annotations

import gc
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.gpu.common import OK, SKIPPED, Budget, Context, run_check, summarize
from benchmarks.gpu.timing import time_jax, time_torch
import fp8jax

COLS = 1024  # inputs are [n / 1024, 1024]: rows of 8 1x128 blocks, 128x128 tiles fit

# Operation names: the JSON, the plot and the test use these.
OURS = ["encode e4m3fn", "encode e5m2", "encode e4m3fn stochastic", "decode e4m3fn->bf16",
        "decode e5m2->bf16", "quantize tensor", "quantize axis", "quantize block 1x128",
        "quantize block 128x128", "quantize mx", "quantize mx rceil", "quantize mxfp4",
        "quantize nvfp4"]
XLA_PEERS = ["xla astype e4m3fn", "xla astype e5m2", "xla astype e4m3fn->bf16",
             "xla astype e5m2->bf16"]
TORCH_PEERS = ["torch .to(e4m3fn)", "torch .to(e5m2)", "torch e4m3fn .to(bf16)",
               "torch e5m2 .to(bf16)"]
FLOORS = ["copy floor (jnp.copy)", "copy floor (u32 + 1)"]
FLOOR = "copy floor"

# Goals: (operation, minimum fraction of the copy floor's bandwidth).
BANDWIDTH_GOALS = [("encode e4m3fn", 0.85), ("encode e5m2", 0.85), ("decode e4m3fn->bf16", 0.85),
                   ("decode e5m2->bf16", 0.85), ("quantize tensor", 0.85),
                   ("quantize block 1x128", 0.80), ("quantize block 128x128", 0.80),
                   ("quantize mx", 0.80)]
# Goals: ours must be faster than each peer doing the same cast.
PEER_GOALS = [("encode e4m3fn", ["xla astype e4m3fn", "torch .to(e4m3fn)"]),
              ("encode e5m2", ["xla astype e5m2", "torch .to(e5m2)"]),
              ("decode e4m3fn->bf16", ["xla astype e4m3fn->bf16", "torch e4m3fn .to(bf16)"]),
              ("decode e5m2->bf16", ["xla astype e5m2->bf16", "torch e5m2 .to(bf16)"])]
STOCHASTIC_MAX_RATIO = 1.3
GEMM_MIN_RATIO = 1.6


def sizes(ctx: Context) -> list[int]:
  """Element counts: 2^24, 2^26, 2^28 on the accelerator; 2^20 on CPU (and 2^22 unquick)."""
  if ctx.cpu_mode:
    return [1 << 20] if ctx.quick else [1 << 20, 1 << 22]
  return [1 << 24] if ctx.quick else [1 << 24, 1 << 26, 1 << 28]


def bytes_moved(op: str, n: int) -> int:
  """Bytes read plus written by one call of `op` on n bfloat16 elements (see the docstring)."""
  rows = n // COLS
  scales = {"quantize tensor": 4, "quantize axis": 4 * rows,
            "quantize block 1x128": 4 * (n // 128),
            "quantize block 128x128": 4 * (-(-rows // 128)) * (COLS // 128),
            "quantize mx": n // 32, "quantize mx rceil": n // 32, "quantize mxfp4": n // 32,
            "quantize nvfp4": n // 16 + 4}
  if op in ("quantize tensor", "quantize nvfp4"):
    return 5 * n + scales[op]
  return 3 * n + scales.get(op, 0)


def jax_ops(n: int, ctx: Context) -> dict[str, tuple[Any, tuple]]:
  """Every JAX operation and floor as (jitted function, arguments), inputs on the device."""
  # Made on the device from committed keys: no host copy of up to 512 MiB.
  key, key2 = jax.device_put((jax.random.key(0), jax.random.key(1)), ctx.device)
  x = jax.jit(lambda k: jax.random.normal(k, (n // COLS, COLS), jnp.bfloat16) * 100)(key)
  c4 = jax.jit(lambda v: fp8jax.encode(v, "e4m3fn"))(x)
  c5 = jax.jit(lambda v: fp8jax.encode(v, "e5m2"))(x)
  words = jax.jit(lambda v: jnp.zeros((3 * n // 8,), jnp.uint32) + v[0, 0].astype(jnp.uint32)
                  )(c4)  # 1.5 bytes per element, on the device like x
  f4, f5 = fp8jax.as_float8(c4, "e4m3fn"), fp8jax.as_float8(c5, "e5m2")
  q = fp8jax.quantize
  return {
      "encode e4m3fn": (jax.jit(lambda v: fp8jax.encode(v, "e4m3fn")), (x,)),
      "encode e5m2": (jax.jit(lambda v: fp8jax.encode(v, "e5m2")), (x,)),
      "encode e4m3fn stochastic": (jax.jit(lambda v, k: fp8jax.encode(
          v, "e4m3fn", rounding="stochastic", key=k)), (x, key2)),
      "decode e4m3fn->bf16": (jax.jit(lambda c: fp8jax.decode(c, "e4m3fn")), (c4,)),
      "decode e5m2->bf16": (jax.jit(lambda c: fp8jax.decode(c, "e5m2")), (c5,)),
      "quantize tensor": (jax.jit(lambda v: q(v, "e4m3fn")), (x,)),
      "quantize axis": (jax.jit(lambda v: q(v, "e4m3fn", scaling="axis")), (x,)),
      "quantize block 1x128": (jax.jit(lambda v: q(v, "e4m3fn", scaling="block",
                                                   block_size=128)), (x,)),
      "quantize block 128x128": (jax.jit(lambda v: q(v, "e4m3fn", scaling="block",
                                                     block_size=(128, 128))), (x,)),
      "quantize mx": (jax.jit(lambda v: q(v, "e4m3fn", scaling="mx")), (x,)),
      "quantize mx rceil": (jax.jit(lambda v: q(v, "e4m3fn", scaling="mx",
                                                scale_rounding="rceil")), (x,)),
      "quantize mxfp4": (jax.jit(lambda v: q(v, "e2m1fn", scaling="mx")), (x,)),
      "quantize nvfp4": (jax.jit(lambda v: q(v, "e2m1fn", scaling="nvfp4", nvfp4_rule="torchao",
                                             block_size=16)), (x,)),
      "xla astype e4m3fn": (jax.jit(lambda v: v.astype(jnp.float8_e4m3fn)), (x,)),
      "xla astype e5m2": (jax.jit(lambda v: v.astype(jnp.float8_e5m2)), (x,)),
      "xla astype e4m3fn->bf16": (jax.jit(lambda f: f.astype(jnp.bfloat16)), (f4,)),
      "xla astype e5m2->bf16": (jax.jit(lambda f: f.astype(jnp.bfloat16)), (f5,)),
      "copy floor (jnp.copy)": (jax.jit(jnp.copy), (words,)),
      "copy floor (u32 + 1)": (jax.jit(lambda u: u + jnp.uint32(1)), (words,)),
  }


def torch_ops(n: int, jax_inputs: dict[str, tuple[Any, tuple]], ctx: Context
              ) -> tuple[Any, dict[str, Any]]:
  """torch's casts on the same data (shared through DLPack), on CUDA (CPU in CPU mode)."""
  try:
    import torch

    import interop
  except Exception:  # no torch: the peers are recorded as skipped
    return None, {}
  if not ctx.cpu_mode and not torch.cuda.is_available():
    return torch, {}
  x = interop.to_torch(jax_inputs["encode e4m3fn"][1][0])
  c4 = interop.to_torch(jax_inputs["decode e4m3fn->bf16"][1][0])
  c5 = interop.to_torch(jax_inputs["decode e5m2->bf16"][1][0])
  f4, f5 = interop.as_torch_float8(c4, "e4m3fn"), interop.as_torch_float8(c5, "e5m2")
  return torch, {
      "torch .to(e4m3fn)": lambda: x.to(torch.float8_e4m3fn),
      "torch .to(e5m2)": lambda: x.to(torch.float8_e5m2),
      "torch e4m3fn .to(bf16)": lambda: f4.to(torch.bfloat16),
      "torch e5m2 .to(bf16)": lambda: f5.to(torch.bfloat16),
  }


def measure_size(n: int, prepared: dict[str, Any], repeats: int, budget: Budget
                 ) -> list[dict[str, Any]]:
  """Every operation at one size: floors first, so that a short budget still has them."""
  size = f"2^{n.bit_length() - 1}"
  ops, torch, tops = prepared["jax"], prepared["torch_module"], prepared["torch_ops"]
  checks = []
  for op in FLOORS + OURS + XLA_PEERS:
    fn, args = ops[op]
    checks.append(run_check(f"{op} {size}", lambda o=op, f=fn, a=args: entry(
        o, n, time_jax(f, a, repeats)), budget))
  for op in TORCH_PEERS:
    if op not in tops:
      checks.append({"name": f"{op} {size}", "status": SKIPPED, "ok": None, "op": op,
                     "elements": n, "seconds": 0.0,
                     "reason": "torch or torch.cuda is not available"})
      continue
    checks.append(run_check(f"{op} {size}", lambda o=op: entry(
        o, n, time_torch(torch, tops[o], repeats)), budget))
  return checks


def prepare(n: int, ctx: Context, into: dict[str, Any]) -> dict[str, Any]:
  """Makes one size's inputs and operations (kept in `into`), as a check."""
  into["jax"] = jax_ops(n, ctx)
  into["torch_module"], into["torch_ops"] = torch_ops(n, into["jax"], ctx)
  return {"ok": True, "torch_peers": sorted(into["torch_ops"])}


def entry(op: str, n: int, t: dict[str, Any]) -> dict[str, Any]:
  """One row of the table: time, bytes and GB/s."""
  moved = 3 * n if op in FLOORS else bytes_moved(op, n)
  return {"ok": True, "op": op, "elements": n, "bytes": moved, "ms": t["median_s"] * 1e3,
          "min_ms": t["min_s"] * 1e3, "first_call_ms": t["first_s"] * 1e3,
          "gbps": moved / t["median_s"] / 1e9, "repeats": t["repeats"], "batch": t["batch"]}


def free_device_memory(torch: Any) -> None:
  """Drops the last size's arrays before the next, larger one."""
  gc.collect()
  if torch is not None and torch.cuda.is_available():
    torch.cuda.empty_cache()


def run(ctx: Context) -> dict[str, Any]:
  """Section e: every operation at every size, as long as the budget lasts."""
  budget = Budget(30 if ctx.cpu_mode else 170, ctx)
  repeats = 5 if ctx.quick else 20
  checks: list[dict[str, Any]] = []
  for n in sizes(ctx):
    size = f"2^{n.bit_length() - 1}"
    if budget.over():
      checks.append(run_check(f"every operation at {size}", dict, budget))
      continue
    prepared: dict[str, Any] = {}
    made = run_check(f"inputs at {size}", lambda n=n, p=prepared: prepare(n, ctx, p))
    if made["status"] != OK:  # e.g. out of memory at the largest size: stop growing
      checks.append(made)
      break
    checks += measure_size(n, prepared, repeats, budget)
    torch = prepared["torch_module"]
    prepared.clear()  # drop this size's arrays before the next, larger one
    free_device_memory(torch)
  result = summarize(checks)
  result["table"] = table(checks)
  result["floor"] = ("the faster of a jitted jnp.copy and a jitted uint32 `u + 1` over 1.5 "
                     "bytes per element; both move 3 bytes per element, as a cast does")
  return result


def table(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The measured rows, with the floor per size and each row's fraction of it."""
  rows = [dict(c) for c in checks if c.get("status") == "ok" and "gbps" in c]
  for n in sorted({r["elements"] for r in rows}):
    floors = [r for r in rows if r["elements"] == n and r["op"] in FLOORS]
    if not floors:
      continue
    best = max(floors, key=lambda r: r["gbps"])
    rows.append({**best, "op": FLOOR, "name": f"{FLOOR} ({best['op']})"})
    for r in rows:
      if r["elements"] == n:
        r["fraction_of_copy"] = r["gbps"] / best["gbps"]
  keep = ("op", "elements", "bytes", "ms", "min_ms", "first_call_ms", "gbps",
          "fraction_of_copy", "repeats", "batch")
  return [{k: r.get(k) for k in keep} for r in rows]


def goals(speed: dict[str, Any], gemm: dict[str, Any], cpu_mode: bool) -> list[dict[str, Any]]:
  """The issue's goals, judged at the largest size measured for both sides of each."""
  rows = speed.get("table", [])

  def at_largest(*ops: str) -> dict[str, dict[str, Any]] | None:
    for n in sorted({r["elements"] for r in rows}, reverse=True):
      found = {r["op"]: r for r in rows if r["elements"] == n and r["op"] in ops}
      if len(found) == len(ops):
        return found
    return None

  def verdict(value: float | None, passed: bool) -> str:
    if value is None:
      return "not measured"
    if cpu_mode:
      return "not applicable on cpu"
    return "pass" if passed else "fail"

  def at(got: dict[str, dict[str, Any]] | None, op: str) -> str | None:
    return got and f"2^{got[op]['elements'].bit_length() - 1}"

  out = []
  for op, target in BANDWIDTH_GOALS:
    got = at_largest(op)
    value = got[op].get("fraction_of_copy") if got else None
    out.append({"goal": f"{op} >= {target} of copy bandwidth", "value": value, "target": target,
                "at": at(got, op), "verdict": verdict(value, value is not None and value >= target)})
  for op, peers in PEER_GOALS:
    for peer in peers:
      got = at_largest(op, peer)
      value = got[peer]["ms"] / got[op]["ms"] if got else None
      out.append({"goal": f"{op} faster than {peer} (their time / ours > 1)", "value": value,
                  "target": 1.0, "at": at(got, op),
                  "verdict": verdict(value, value is not None and value > 1.0)})
  got = at_largest("encode e4m3fn stochastic", "encode e4m3fn")
  value = got["encode e4m3fn stochastic"]["ms"] / got["encode e4m3fn"]["ms"] if got else None
  out.append({"goal": f"stochastic encode <= {STOCHASTIC_MAX_RATIO}x nearest", "value": value,
              "target": STOCHASTIC_MAX_RATIO, "at": at(got, "encode e4m3fn"),
              "verdict": verdict(value, value is not None and value <= STOCHASTIC_MAX_RATIO)})
  value, size = None, None
  for c in gemm.get("checks", []):
    if "ratio_fp8_bf16_out_vs_bf16" in c:
      value, size = c["ratio_fp8_bf16_out_vs_bf16"], c["size"]
  out.append({"goal": f"FP8 GEMM >= {GEMM_MIN_RATIO}x bf16 TFLOP/s (both bf16 out)",
              "value": value, "target": GEMM_MIN_RATIO, "at": size and f"{size}^3",
              "verdict": verdict(value, value is not None and value >= GEMM_MIN_RATIO)})
  return out
