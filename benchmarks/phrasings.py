"""The phrasings fp8jax chose for XLA:CPU, each timed against the plain one it replaces.

Usage: python benchmarks/phrasings.py [--elements 67108864] [--repeats 10] [--out FILE]

XLA:CPU (JAX 0.10) picks loop layouts by how a computation is written, some
several times slower than others for the same result. The library writes
these computations the fast way; this script times both ways on the same
bfloat16 data (N(0, 1) * 100, rows of 1024) and checks that they agree:

- block maxima along the last axis (16, 32, 128 and 1024 elements) and over
  128x128 tiles: `scales.abs_max_bits(..., blocks=True)` against `jnp.max`
  of the masked magnitudes;
- the NaN count of a format without NaN, blocks of 32 along the last axis:
  `scales.nan_count` (chunks of 32 in 16-bit lanes) against a sum of int32
  flags;
- MX encode and dequantize: the exponent route of the kernel (`pow2`, 16-bit
  lanes) against the float32 division or product by the power of two;
- the normalization of subnormal inputs in 16-bit lanes (`kernel._normalized`,
  by the exponent of a float32 conversion) against a count of leading zeros,
  in the MX encode;
- a per-tensor encode by counting thresholds (`quant.thresholds`) against the
  kernel's float32 division per element;
- the per-block NVFP4 arithmetic kept apart from the per-element encode
  (`fusion.apart`) against the same code fused;
- dequantize to bfloat16 by one float32 multiplication per element
  (`kernel._scaled_decode`) against the kernel's integer product, per-row
  scales.

A pair whose result is as large as its input writes into a donated buffer
(the suite's reused mode), so that page faults do not hide the difference;
the others return small results. Medians of `--repeats` calls. Writes
benchmarks/results/phrasings.json (or --out), atomically.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
from jax import lax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from benchmarks import common
from fp8jax.core import codec, fusion, kernel, layout
from fp8jax.core.formats import FORMATS
from fp8jax.quant import nvfp4, scales, thresholds

_ROW = 1024
_BF16 = layout.FLOAT_LAYOUTS[np.dtype(ml_dtypes.bfloat16)]


def _magnitudes(v):
  u = lax.bitcast_convert_type(v, jnp.uint16) & jnp.uint16(0x7FFF)
  return jnp.where(u < jnp.uint16(0x7F80), u, jnp.uint16(0))


def _plain_max(inner):
  def f(v):
    amax = jnp.max(_magnitudes(v), axis=inner).astype(jnp.uint32)
    wide = kernel.convert(amax, _BF16, layout.FLOAT32, rounding="nearest", overflow="ieee")
    return lax.bitcast_convert_type(wide, jnp.float32)
  return f


def _fast_max(inner):
  return lambda v: scales.abs_max_bits(v, inner, blocks=True)


def _plain_nan_count(x):
  u = lax.bitcast_convert_type(x, jnp.uint16) & jnp.uint16(0x7FFF)
  return jnp.sum((u > jnp.uint16(0x7F80)).astype(jnp.int32))


def _mx_encode(pow2_route: bool, rows: int):
  dst = FORMATS["e4m3fn"].bit_layout
  e = (jnp.arange(rows * _ROW // 32, dtype=jnp.int32) % 16 - 8).reshape(rows, _ROW // 32, 1)

  def f(x):
    v = x.reshape(rows, _ROW // 32, 32)
    if pow2_route:
      return codec.encode_array(v, dst, rounding="nearest", overflow="saturate", pow2=e)
    divisor = lax.bitcast_convert_type(((127 - e) << 23).astype(jnp.uint32), jnp.float32)
    return codec.encode_array(v, dst, rounding="nearest", overflow="saturate", scale=divisor,
                              divide=True)
  return f


def _mx_decode(pow2_route: bool, rows: int):
  src = FORMATS["e4m3fn"].bit_layout

  def f(codes):
    v = codes.reshape(rows, _ROW // 32, 32)
    # Exponents from the data, so that XLA cannot fold them as constants.
    e = (v[..., :1] & jnp.uint8(15)).astype(jnp.int32) - 8
    bf16 = np.dtype(ml_dtypes.bfloat16)
    if pow2_route:
      return codec.decode_array(v, src, bf16, pow2=e)
    multiplier = lax.bitcast_convert_type(((127 + e) << 23).astype(jnp.uint32), jnp.float32)
    return codec.decode_array(v, src, bf16, scale=multiplier)
  return f


def _clz_normalized(frac, m):
  """The plain phrasing of `kernel._normalized`: a count of leading zeros in the lanes."""
  word = jnp.dtype(frac.dtype)
  shift = lax.clz(frac).astype(jnp.int32) + (m - (word.itemsize * 8 - 1))
  return frac << shift.astype(word), shift.astype(jnp.dtype(f"int{word.itemsize * 8}"))


def _mx_normalize(float_exponent: bool, rows: int):
  route = _mx_encode(True, rows)

  def f(x):
    if float_exponent:
      return route(x)
    fast, kernel._normalized = kernel._normalized, _clz_normalized  # while tracing
    try:
      return route(x)
    finally:
      kernel._normalized = fast
  return f


def _per_tensor(count: bool):
  dst = FORMATS["e4m3fn"].bit_layout
  s = jnp.float32(0.37)

  def f(x):
    if count:
      return thresholds.encode_divided(x, dst, s, rounding="nearest", overflow="saturate")
    return codec.encode_array(x, dst, rounding="nearest", overflow="saturate", scale=s,
                              divide=True)
  return f


def _nvfp4(apart: bool, rows: int):
  dst = FORMATS["e2m1fn"].bit_layout

  def f(x):
    v = x.reshape(rows, _ROW // 16, 16)
    b = scales.abs_max_bits(v, (2,), finite=False, blocks=True)
    a = jnp.max(b).reshape(1, 1, 1)
    rule = lambda ba: nvfp4._RULES["torchao"](*ba, np.dtype(x.dtype))
    res = fusion.apart(rule, (b, a)) if apart else rule((b, a))
    return codec.encode_array(v, dst, rounding="nearest", overflow="saturate",
                              scale=res.element_scale)
  return f


def _dequantize(product: bool, rows: int):
  src = FORMATS["e4m3fn"].bit_layout

  def f(codes):
    # Scales from the data, so that XLA cannot fold them as constants.
    s = (codes[:, :1] & jnp.uint8(15)).astype(jnp.float32) / 16 + 0.5
    if product:
      return codec.decode_array(codes, src, np.dtype(ml_dtypes.bfloat16), scale=s)
    # The kernel's integer route: normalized significands multiplied as integers,
    # rounded to float32, then to bfloat16.
    parts = kernel._unpack(codes.astype(jnp.uint32), src, True)
    parts, m = kernel._scale(parts, src, s, False)
    wide = kernel._round_pack(parts, src.bias, m, layout.FLOAT32, "nearest", "ieee", None, True)
    return lax.bitcast_convert_type(kernel._float32_to_bfloat16(wide).astype(jnp.uint16),
                                    jnp.bfloat16)
  return f


def _time(f, arg, result: np.ndarray, repeats: int) -> float:
  """Median seconds per call of jitted f(arg); into a donated buffer for large results."""
  if result.size * result.itemsize < arg.size:
    call = jax.jit(f)
    return common.median_time(lambda: jax.block_until_ready(call(arg)), repeats)
  call = jax.jit(lambda a, out: f(a), donate_argnums=1, keep_unused=True)
  box = [jnp.zeros(result.shape, result.dtype)]

  def step():
    box[0] = jax.block_until_ready(call(arg, box[0]))
  return common.median_time(step, repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--elements", type=int, default=1 << 26)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", default=common.results_path("phrasings.json"))
  args = parser.parse_args()
  if args.elements % (128 * _ROW):
    parser.error(f"--elements must be a multiple of {128 * _ROW}")
  rows = args.elements // _ROW
  rng = np.random.default_rng(0)
  x = jax.device_put((rng.standard_normal((rows, _ROW), dtype=np.float32) * 100)
                     .astype(ml_dtypes.bfloat16))
  codes = jax.jit(lambda a: codec.encode_array(a, FORMATS["e4m3fn"].bit_layout,
                                               rounding="nearest", overflow="saturate"))(x)

  pairs = {}
  for b in (16, 32, 128, 1024):
    v = x.reshape(rows, _ROW // b, b)
    pairs[f"block max, {b} along the last axis"] = (_plain_max((2,)), _fast_max((2,)), v)
  tiles = x.reshape(rows // 128, 128, _ROW // 128, 128)
  pairs["block max, 128x128 tiles"] = (_plain_max((1, 3)), _fast_max((1, 3)), tiles)
  pairs["NaN count, blocks of 32"] = (_plain_nan_count, lambda a: scales.nan_count(a, 32), x)
  pairs["MX encode (exponent route)"] = (_mx_encode(False, rows), _mx_encode(True, rows), x)
  pairs["MX dequantize (exponent route)"] = (_mx_decode(False, rows), _mx_decode(True, rows),
                                             codes)
  pairs["MX encode, subnormals normalized by float32 exponent"] = (
      _mx_normalize(False, rows), _mx_normalize(True, rows), x)
  pairs["per-tensor encode by thresholds"] = (_per_tensor(False), _per_tensor(True), x)
  pairs["NVFP4 block arithmetic apart"] = (_nvfp4(False, rows), _nvfp4(True, rows), x)
  pairs["dequantize per row (float32 product)"] = (
      _dequantize(False, rows), _dequantize(True, rows), codes)

  report = {"elements": args.elements, **common.versions("jax"),
            "device": common.device()["device"], "command": common.command(sys.argv),
            "date": common.now(), "pairs": {}}
  for name, (plain, fast, arg) in pairs.items():
    a, b = np.asarray(jax.jit(plain)(arg)), np.asarray(jax.jit(fast)(arg))
    same = a.size == b.size and bool(np.array_equal(a.ravel().view(np.uint8),
                                                    b.ravel().view(np.uint8)))
    t_plain, t_fast = (_time(f, arg, a, args.repeats) for f in (plain, fast))
    report["pairs"][name] = {"plain_s": t_plain, "fp8jax_s": t_fast, "speedup": t_plain / t_fast,
                             "same_result": same}
    print(f"{name:44s} plain {common.fmt_time(t_plain):>10s}  fp8jax {common.fmt_time(t_fast):>10s}"
          f"  {t_plain / t_fast:5.2f}x  {'same' if same else 'DIFFERENT'}", flush=True)
  common.write_json(args.out, report)
  print(f"wrote {args.out}", file=sys.stderr)
  if not all(p["same_result"] for p in report["pairs"].values()):
    sys.exit(1)


if __name__ == "__main__":
  main()
