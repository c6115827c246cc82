"""Section a: the accelerator's bits against the CPU backend's, in the same process.

Each check runs one jitted function twice, with its inputs put on the device under test
and on the CPU, and compares every output bit for bit (float outputs through their bit
patterns, so NaN payloads and signs count). Several variants share one jitted function
(stacked outputs) to keep the number of compilations, the slow part, small.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.gpu import bounds
from benchmarks.gpu.common import Budget, Context, bits, first_mismatches, run_check, summarize
import fp8jax

ROUNDINGS = ("nearest", "toward_zero", "stochastic")
OVERFLOWS = ("saturate", "satfinite", "ieee")
VARIANTS = [(r, o) for r in ROUNDINGS for o in OVERFLOWS]
SEED = 1234  # the stochastic key, the same on both backends
DECODE_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def run_on_both(fn: Any, args: tuple, ctx: Context) -> tuple[list, list, list[str], bool]:
  """fn(*args) on the device and on the CPU: both outputs' leaves, their paths, and whether
  the device's stayed on the device."""
  got = fn(*jax.device_put(args, ctx.device))
  want = fn(*jax.device_put(args, ctx.cpu))
  got_leaves, _ = jax.tree_util.tree_flatten_with_path(got)
  want_leaves = jax.tree.leaves(want)
  placed = all(leaf.devices() == {ctx.device} for _, leaf in got_leaves)
  paths = [jax.tree_util.keystr(path) for path, _ in got_leaves]
  return ([np.asarray(g) for _, g in got_leaves], [np.asarray(w) for w in want_leaves], paths,
          placed)


def compare_bits(fn: Any, args: tuple, ctx: Context, rows: list[str] | None = None
                 ) -> dict[str, Any]:
  """Bit equality of every output leaf; `rows` names the rows of stacked variant outputs."""
  got, want, paths, placed = run_on_both(fn, args, ctx)
  compared, mismatched, where = 0, 0, []
  for path, g, w in zip(paths, got, want, strict=True):
    if g.shape != w.shape or g.dtype != w.dtype:
      where.append(f"{path}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}")
      mismatched += max(g.size, w.size)
      continue
    compared += g.size
    diff = bits(g) != bits(w)
    n = int(diff.sum())
    if n:
      mismatched += n
      bad = []
      if rows and g.ndim == 2 and len(g) == len(rows):
        bad = [rows[r] for r in range(len(rows)) if diff[r].any()]
      where.append(f"{path}: {n} differ {bad} {first_mismatches(g, w)}")
  return {"ok": mismatched == 0 and placed and len(got) == len(want), "compared": compared,
          "mismatches": mismatched, "outputs": len(got), "on_device": placed,
          "where": where[:16]}


def encode_all(x):
  """Every format x rounding x overflow of x: {format: [9, n] uint8}, one compilation."""
  key = jax.random.key(SEED)
  return {fmt: jnp.stack([
      fp8jax.encode(x, fmt, rounding=r, overflow=o, key=key if r == "stochastic" else None)
      for r, o in VARIANTS]) for fmt in fp8jax.FORMATS}


def decode_all(codes):
  """Every code of every format decoded to bfloat16, float16 and float32."""
  return {fmt: tuple(fp8jax.decode(codes, fmt, d) for d in DECODE_DTYPES)
          for fmt in fp8jax.FORMATS}


def every_pattern(dtype: Any) -> np.ndarray:
  """All 65,536 values of a 16-bit float type, in bit-pattern order."""
  return np.arange(1 << 16, dtype=np.uint16).view(dtype)


def float32_sample(n: int, seed: int = 7) -> np.ndarray:
  """n random float32 bit patterns (every exponent equally likely) plus the special values."""
  rng = np.random.default_rng(seed)
  patterns = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
  special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 2.0**-149, -(2.0**-149),
                      2.0**-126, 448.0, 464.0, 465.0, 57344.0, 61440.0, 2.0**127, 3.4e38],
                     np.float32).view(np.uint32)
  patterns[:special.size] = special
  return patterns.view(np.float32)


def quantize_data(shape: tuple[int, int], dtype: Any, seed: int) -> np.ndarray:
  """Gaussian data whose columns span 2^-8..2^8, with NaN, infinities, huge and tiny values."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * np.exp2(rng.integers(-8, 9, shape[-1:]))
  flat = x.reshape(-1)
  flat[[3, 50, 777]] = [np.nan, np.inf, -np.inf]
  flat[[1000, 1001]] = [1e30, -1e-30]
  with np.errstate(over="ignore"):  # 1e30 is meant to overflow float16 and bfloat16
    return x.astype(dtype)


def quantize_cases(full: bool) -> list[tuple[str, str, dict[str, Any]]]:
  """(name, format, quantize options): every granularity `quantize` documents."""
  per_fmt = {
      "tensor": {"scaling": "tensor"},
      "tensor pow2 margin1": {"scaling": "tensor", "pow2": True, "margin": 1},
      "axis": {"scaling": "axis"},
      "axis0": {"scaling": "axis", "axis": 0},
      "block 1x128": {"scaling": "block", "block_size": 128},
      "block 128x128": {"scaling": "block", "block_size": (128, 128)},
      "mx": {"scaling": "mx"},
      "static 3.0": {"scaling": 3.0},
      "static per row": {"scaling": "static_rows"},  # quantize_all passes an array
      "tensor stochastic": {"scaling": "tensor", "rounding": "stochastic"},
      "block 1x128 ieee": {"scaling": "block", "block_size": 128, "overflow": "ieee"},
  }
  # Quick: every granularity once (e4m3fn), e5m2 for its own max and MX emax.
  e5m2 = per_fmt if full else {k: per_fmt[k] for k in ("tensor", "mx")}
  cases = [(f"e4m3fn {name}", "e4m3fn", opts) for name, opts in per_fmt.items()]
  cases += [(f"e5m2 {name}", "e5m2", opts) for name, opts in e5m2.items()]
  cases += [("e2m3fn mx", "e2m3fn", {"scaling": "mx"}),
            ("e3m2fn mx", "e3m2fn", {"scaling": "mx"}),
            ("e2m1fn mx packed", "e2m1fn", {"scaling": "mx", "pack": True})]
  if full:  # the other 8-bit formats' max, NaN and zero conventions
    cases += [(f"{f} tensor", f, {"scaling": "tensor"})
              for f in ("e4m3fnuz", "e5m2fnuz", "e3m4", "e4m3", "e4m3b11fnuz")]
  return cases


def row_scales(shape: tuple[int, ...]) -> np.ndarray:
  """A static float32 scale per row: powers of two from 2^-3 to 2^3."""
  return np.exp2(np.arange(shape[0]) % 7 - 3.0).astype(np.float32)[:, None]


def quantize_all(cases: list[tuple[str, str, dict[str, Any]]]):
  """Every case's quantize, then dequantize to bfloat16 and float32: one jitted function of
  (x, row_scales), the scales an argument so that they live on the same backend as x."""

  def one(x, rows, fmt, opts):
    opts = dict(opts)
    if opts.get("scaling") == "static_rows":
      opts["scaling"] = rows
    key = jax.random.key(SEED) if opts.get("rounding") == "stochastic" else None
    q = fp8jax.quantize(x, fmt, key=key, **opts)
    return q, fp8jax.dequantize(q, jnp.bfloat16), fp8jax.dequantize(q, jnp.float32)

  return jax.jit(lambda x, rows: {name: one(x, rows, fmt, opts) for name, fmt, opts in cases})


DOT_LAYOUTS = {  # a [M, K] and b [K, N] quantize options
    "tensor x tensor": ({"scaling": "tensor"}, {"scaling": "tensor"}),
    "row x column": ({"scaling": "axis"}, {"scaling": "axis", "axis": 0}),
    "1x128 x 128x128": ({"scaling": "block", "block_size": 128},
                        {"scaling": "block", "block_size": (128, 128)}),
    "mx x mx": ({"scaling": "mx"}, {"scaling": "mx", "axis": 0}),
}


def dot_check(name: str, ctx: Context, m: int, k: int, n: int) -> dict[str, Any]:
  """Quantized operands bit for bit; the dot within the bound of the CPU's (bounds.py)."""
  a_opts, b_opts = DOT_LAYOUTS[name]
  rng = np.random.default_rng(11)
  xa = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-4, 5, (1, k)))).astype(np.float32)
  xb = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-4, 5, (1, n)))).astype(np.float32)

  @jax.jit
  def f(xa, xb):
    qa = fp8jax.quantize(xa, "e4m3fn", **a_opts)
    qb = fp8jax.quantize(xb, "e4m3fn", **b_opts)
    return qa, qb, fp8jax.dot(qa, qb)

  got, want, _, placed = run_on_both(f, (xa, xb), ctx)
  operands_equal = all(np.array_equal(bits(g), bits(w)) for g, w in zip(got[:-1], want[:-1], strict=True))
  qa_cpu, qb_cpu, _ = f(*jax.device_put((xa, xb), ctx.cpu))
  va = np.asarray(fp8jax.dequantize(qa_cpu, jnp.float32))
  vb = np.asarray(fp8jax.dequantize(qb_cpu, jnp.float32))
  result = bounds.compare(got[-1], want[-1], va, vb, on_accelerator=not ctx.cpu_mode)
  result["ok"] = result["ok"] and operands_equal and placed
  result.update(operands_bit_equal=operands_equal, on_device=placed, shape=[m, k, n],
                compared=result["compared"] + sum(g.size for g in got[:-1]))
  return result


def run(ctx: Context) -> dict[str, Any]:
  """Every check of section a, within its time budget."""
  budget = Budget(60 if ctx.cpu_mode else 150, ctx)
  labels = [f"{r}/{o}" for r, o in VARIANTS]
  fmts = len(fp8jax.FORMATS)
  checks = []
  for dtype in (jnp.bfloat16, jnp.float16):
    x = every_pattern(dtype)
    name = f"encode every {np.dtype(dtype).name} pattern: {fmts} formats x 3 roundings x 3 overflows"
    checks.append(run_check(name, lambda x=x: compare_bits(jax.jit(encode_all), (x,), ctx,
                                                           labels), budget))
  codes = np.arange(256, dtype=np.uint8)
  checks.append(run_check(f"decode every code: {fmts} formats -> bf16/f16/f32",
                          lambda: compare_bits(jax.jit(decode_all), (codes,), ctx), budget))
  # Breadth first: if the budget runs out, what is skipped is more of the same.
  inputs = [((300, 260), np.dtype(jnp.bfloat16))]
  if not ctx.quick:
    inputs += [((300, 260), np.dtype(np.float32)), ((300, 260), np.dtype(np.float16)),
               ((1024, 2176), np.dtype(jnp.bfloat16))]
  quantize_checks = []
  for i, (shape, dtype) in enumerate(inputs):
    x = quantize_data(shape, dtype, seed=i)
    cases = quantize_cases(full=not ctx.quick and dtype != np.float16 and shape == (300, 260))
    name = f"quantize+dequantize {dtype.name}{list(shape)}: {len(cases)} formats/granularities"
    quantize_checks.append((name, lambda c=cases, x=x: compare_bits(
        quantize_all(c), (x, row_scales(x.shape)), ctx)))
  name, fn = quantize_checks[0]
  checks.append(run_check(name, fn, budget))
  m, k, n = (64, 384, 48) if ctx.quick else (512, 2048, 384)
  for name in DOT_LAYOUTS:
    checks.append(run_check(f"dot e4m3fn {name} [{m}x{k}]@[{k}x{n}]",
                            lambda nm=name: dot_check(nm, ctx, m, k, n), budget))
  sample = float32_sample(1 << (16 if ctx.quick else 20))
  name = f"encode {sample.size} float32 patterns: {fmts} formats x 3 roundings x 3 overflows"
  checks.append(run_check(name, lambda: compare_bits(jax.jit(encode_all), (sample,), ctx, labels),
                          budget))
  for name, fn in quantize_checks[1:]:
    checks.append(run_check(name, fn, budget))
  return summarize(checks)
