"""Encoding by thresholds: one scale, and each code counted instead of computed.

For one positive normal float32 scale s, the code of x / s (the quotient
rounded to float32's 24 bits, then onto the target's grid, as
`kernel.convert` defines it) is a non-decreasing function of the bit pattern
A = |x| of a 16-bit input. So each code is a count of thresholds at or below
A, and the thresholds need finding once per scale, by binary searches with
the kernel itself (about 225 of its codes for a bfloat16 input):

- below the target's smallest normal value the grid is uniform: the codes
  0..2^m (m the target's mantissa bits) are the count of T_1..T_2^m, the
  first patterns that reach each code;
- from T_(2^m + 1) on, doubling x doubles the quotient and moves the code up
  one binade, 2^m codes, exactly (the kernel's quotient has an unbounded
  exponent), so the code is a base, plus 2^m per exponent step of x, plus
  the count of 2^m thresholds on x's fraction bits, taken from one
  reference binade. Past the target's range that code overflows, and the
  kernel's overflow policy applies as usual.

Per element that is a few dozen 16-bit integer operations and no division:
on XLA:CPU a memory-bound pass, against a float32 division per element in
32-bit lanes (benchmarks/phrasings.py). The regular count needs normal
inputs from T_(2^m + 1) on; where a subnormal input reaches it (scales below
about 2^-120) or the scale is not a positive normal float, `encode_divided`
takes the kernel's division instead.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

from fp8jax.core import codec, fusion, kernel, layout
from fp8jax.core.layout import BitLayout

_u16 = jnp.uint16
_u32 = jnp.uint32
# The bits of float32's smallest normal value (2^-126) and of its infinity.
_F32_TINY_BITS = 1 << layout.FLOAT32.mantissa_bits
_F32_INF_BITS = layout.FLOAT32.inf_magnitude


def supported(src: BitLayout, dst: BitLayout, rounding: str) -> bool:
  """Whether `encode_divided` can count thresholds for these layouts and rounding."""
  return (src.bits == 16 and src.convention == layout.IEEE and dst.has_subnormals
          and dst.bits <= 8 and rounding in (kernel.NEAREST, kernel.TOWARD_ZERO))


def _wide(dst: BitLayout) -> BitLayout:
  """`dst`'s mantissa with an exponent range past any float32 quotient's: its
  codes are the target's grid extended without bounds."""
  return BitLayout(9, dst.mantissa_bits, 255, layout.IEEE)


def _first(ok, hi: int, shape) -> jax.Array:
  """The smallest integer a in [0, hi] with ok(a) (hi if none), for each element
  of an array of `shape` that ok returns, ok non-decreasing in a: a binary
  search, vectorized."""
  def step(_, bounds):
    lo, top = bounds
    mid = (lo + top) >> 1
    good = ok(mid)
    return jnp.where(good, lo, mid + 1), jnp.where(good, mid, top)

  # A loop rather than unrolled: each step is a whole kernel, and compiling
  # dozens of them would cost seconds.
  bounds = (jnp.zeros(shape, jnp.int32), jnp.full(shape, hi, jnp.int32))
  return lax.fori_loop(0, hi.bit_length(), step, bounds)[0]


def _plan(s: jax.Array, src: BitLayout, dst: BitLayout, rounding: str, overflow: str):
  """The thresholds for the scalar scale `s`, found by the kernel itself.

  Each threshold is a binary search over the input patterns: about
  16 (2^m + 2) + 8 (2^m) + 1 codes for bfloat16, against every element's
  division.
  """
  m, big = dst.mantissa_bits, src.mantissa_bits
  steps = 1 << m
  wide = _wide(dst)

  def codes(a: jax.Array, to: BitLayout, policy: str) -> jax.Array:
    return kernel.convert(a.astype(_u32), src, to, rounding=rounding, overflow=policy,
                          scale=s, divide=True).astype(jnp.int32)

  patterns = src.inf_magnitude + 1  # zero up to infinity; this many means "never"
  ks = jnp.arange(1, steps + 2, dtype=jnp.int32)
  low = _first(lambda a: codes(a, dst, overflow) >= ks, patterns, (steps + 1,))
  first_inf = _first(lambda a: codes(a, wide, kernel.IEEE) >= wide.inf_magnitude, patterns,
                     ())
  # The reference binade: the one of x whose quotient by s lies in [1/2, 2).
  s_bits = lax.bitcast_convert_type(s, _u32)
  s_exp = (s_bits >> layout.FLOAT32.mantissa_bits).astype(jnp.int32)
  top_field = (src.inf_magnitude >> big) - 1
  start = jnp.clip(s_exp - layout.FLOAT32.bias + src.bias, 1, top_field) << big
  row0 = codes(start, wide, kernel.IEEE)
  fraction = _first(lambda f: codes(start + f, wide, kernel.IEEE) >= row0 + ks[:steps],
                    1 << big, (steps,))
  base = row0 - (((start >> big) + wide.bias - dst.bias) << m)
  # A positive normal scale: its bits (sign clear) from 2^-126's up to infinity's.
  normal = (s_bits >= _u32(_F32_TINY_BITS)) & (s_bits < _u32(_F32_INF_BITS))
  usable = normal & (low[steps] >= (1 << big))
  return (low.astype(_u16), fraction.astype(_u16), base.astype(_u16),
          first_inf.astype(_u16), usable)


def _tree_count(v: jax.Array, limits: list[jax.Array]) -> jax.Array:
  """How many of the non-decreasing `limits` (2^j of them) are at most `v`.

  A binary search written out: each level compares `v` with one limit,
  picked per element by the comparisons above it, so 2^j limits cost j + 1
  comparisons (and 2^j - j - 1 selections) instead of 2^j.
  """
  count = (v >= limits[-1]).astype(_u16)
  tree = limits[:-1]  # a complete binary search tree, 2^j - 1 limits in order
  while tree:
    mid = len(tree) // 2
    above = v >= tree[mid]
    count = count + above.astype(_u16) * _u16(mid + 1)
    tree = [jnp.where(above, hi, lo) for lo, hi in zip(tree[:mid], tree[mid + 1:], strict=True)]
  return count


def _count(x: jax.Array, plan, src: BitLayout, dst: BitLayout, rounding: str,
           overflow: str) -> jax.Array:
  """The codes of x by the thresholds of `plan`, whose regular count no
  subnormal input reaches (`usable`)."""
  low, fraction, base, first_inf, _ = plan
  m, big = dst.mantissa_bits, src.mantissa_bits
  steps = 1 << m
  bits = lax.bitcast_convert_type(x, _u16)
  mag = bits & _u16(src.magnitude_mask)
  exp, frac = mag >> big, mag & _u16((1 << big) - 1)
  # One search: on the whole pattern below T_(2^m + 1), else on the fraction.
  regular = mag >= low[steps]
  v = jnp.where(regular, frac, mag)
  limits = [jnp.where(regular, fraction[k], low[k]) for k in range(steps)]
  start = jnp.where(regular, base + (exp << m), _u16(0))
  code = start + _tree_count(v, limits)
  is_nan = mag > _u16(src.inf_magnitude)
  parts = (bits >> _u16(15), None, None, is_nan, ~is_nan & (mag >= first_inf), mag == 0)
  return kernel.pack(code, parts, dst, rounding, overflow).astype(jnp.uint8)


def encode_divided(x: jax.Array, dst: BitLayout, scale: jax.Array, *, rounding: str,
                   overflow: str, normal: bool = False) -> jax.Array:
  """`codec.encode_array(x, dst, scale=scale, divide=True)` for one scale, by thresholds.

  Args:
    x: a bfloat16 or float16 array (`supported`).
    dst: the target layout.
    scale: one float32 scale (any shape of size 1).
    rounding: "nearest" or "toward_zero".
    overflow: the overflow policy.
    normal: the promise `codec.encode_array` takes as `normal_scale`.

  Returns:
    uint8 codes, bit for bit those of the kernel's per-element division.
  """
  src = layout.FLOAT_LAYOUTS[jnp.dtype(x.dtype)]
  s = jnp.asarray(scale, jnp.float32).reshape(())
  # Apart, or XLA redoes the thresholds' arithmetic for every element.
  plan = fusion.apart(lambda v: _plan(v, src, dst, rounding, overflow), s)

  def counted(x, plan, s):
    return _count(x, plan, src, dst, rounding, overflow)

  def divided(x, plan, s):
    return codec.encode_array(x, dst, rounding=rounding, overflow=overflow, scale=s,
                              divide=True, normal_scale=normal)

  return lax.cond(plan[-1], counted, divided, x, plan, s)

