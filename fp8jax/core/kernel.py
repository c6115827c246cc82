"""The one integer kernel: round a float's bits onto another format's grid.

Every conversion in fp8jax, encoding (bfloat16/float16/float32 -> a small
format) and decoding (a small format -> bfloat16/float16/float32), is this
kernel with a different pair of layouts. It works on unsigned bit patterns
(16-bit lanes between formats of at most 16 bits, else 32-bit) and never
does float arithmetic on a value, so backends that flush subnormals
(XLA:CPU does) give the same bits as those that don't.

Outline, for one element:
  1. split the source bits into sign, exponent and mantissa (with the hidden
     bit), normalising source subnormals where the target needs it;
  2. optionally multiply or divide by a float32 scale: the exponents add as
     integers and only the mantissas meet in a float32 product of two normal
     numbers, rounded once to 24 bits (decoding into a wide float multiplies
     the decoded value by the scale in float32 instead, `_scaled_decode`);
  3. shift the mantissa onto the target grid (one more right shift per step
     below the target's smallest normal exponent) and round it;
  4. add the biased exponent, so that a rounding carry moves into the
     exponent by plain integer addition;
  5. apply the overflow policy and the special values of the target.
"""

from __future__ import annotations

import typing
from typing import Literal

import jax
from jax import lax
import jax.numpy as jnp

from fp8jax.core import layout
from fp8jax.core.layout import BitLayout

NEAREST = "nearest"
TOWARD_ZERO = "toward_zero"
STOCHASTIC = "stochastic"
Rounding = Literal["nearest", "toward_zero", "stochastic"]
ROUNDINGS = typing.get_args(Rounding)

SATURATE = "saturate"
SATFINITE = "satfinite"
IEEE = "ieee"
Overflow = Literal["saturate", "satfinite", "ieee"]
OVERFLOWS = typing.get_args(Overflow)

# Exponents of `convert`'s `pow2` at or below POW2_ZERO stand for a scale of 0
# (division by infinity), at or above POW2_NAN for a NaN scale.
POW2_ZERO = -(1 << 12)
POW2_NAN = 1 << 12

# Random bits added below the cut in stochastic rounding: 31, so that the
# sum with a mantissa of at most 25 bits fits in uint32.
RANDOM_BITS = 31

# Scales are float32: its fields, from the one float32 layout.
_F32_MANTISSA_BITS = layout.FLOAT32.mantissa_bits
_F32_BIAS = layout.FLOAT32.bias
# A float32 result at or above 2^128 is infinite.
_F32_OVERFLOW_EXPONENT = layout.FLOAT32.bias + 1

_u32 = jnp.uint32
_i32 = jnp.int32


def _word(a: jax.Array):
  """The unsigned and signed integer types of the width of `a`'s dtype."""
  width = jnp.dtype(a.dtype).itemsize * 8
  return jnp.dtype(f"uint{width}").type, jnp.dtype(f"int{width}").type


def word_for(src: BitLayout, dst: BitLayout, stochastic: bool, scaled: bool):
  """The integer width the kernel computes in.

  Conversions between formats of at most 16 bits fit in 16-bit lanes (the
  widest intermediate, a rounded mantissa plus a biased exponent, stays
  below 2^16), which doubles the elements per vector. Random bits and
  scales need 32.
  """
  if stochastic or scaled or max(src.bits, dst.bits) > 16:
    return jnp.uint32
  return jnp.uint16


def _unpack(bits: jax.Array, src: BitLayout, normalize: bool):
  """Splits unsigned codes into (sign, exponent, mantissa, is_nan, is_inf, is_zero).

  The value of a finite code is `mantissa * 2**(exponent - bias - M)` with
  M = src.mantissa_bits; `mantissa` carries the hidden bit at position M for
  normal values, and for subnormals too when `normalize` is set.
  """
  m = src.mantissa_bits
  U, S = _word(bits)
  bits = bits & U((1 << src.bits) - 1)
  if src.signed:
    sign = (bits >> (src.bits - 1)) & U(1)
  else:
    sign = jnp.zeros_like(bits)
  mag = bits & U(src.magnitude_mask)
  exp = (mag >> m).astype(S)
  frac = mag & U((1 << m) - 1)

  false = jnp.zeros(bits.shape, jnp.bool_)
  if src.convention == layout.IEEE:
    is_inf = mag == U(src.inf_magnitude)
    is_nan = mag > U(src.inf_magnitude)
  elif src.convention == layout.FN:
    is_inf, is_nan = false, mag == U(src.nan_code)
  elif src.convention in (layout.FNUZ, layout.E8M0):
    is_inf, is_nan = false, bits == U(src.nan_code)
  else:
    is_inf, is_nan = false, false

  if not src.has_subnormals:
    # E8M0: every code is 2^(code - bias); there is no zero.
    return sign, exp, jnp.full_like(bits, 1 << m), is_nan, is_inf, false

  sub = exp == 0
  mant = jnp.where(sub, frac, frac | U(1 << m))
  exp = jnp.maximum(exp, 1)
  if normalize:
    # Move a subnormal's leading one up to the hidden-bit position.
    norm, shift = _normalized(frac, m)
    mant = jnp.where(sub, norm, mant)
    exp = jnp.where(sub, 1 - shift, exp)
  return sign, exp, mant, is_nan, is_inf, mag == 0


def _normalized(frac: jax.Array, m: int):
  """(frac shifted so that its leading one is at bit m, the shift), for 0 < frac < 2^m.

  The leading one's position is the exponent of frac as a float32, exact for
  any integer below 2^24 on every backend. In 16-bit lanes XLA:CPU runs this
  conversion faster than a 16-bit count of leading zeros (x86 has none, and
  XLA counts one element at a time) or a branch-free binary search (see
  benchmarks/phrasings.py).
  """
  U, S = _word(frac)
  width = jnp.dtype(U).itemsize * 8
  if width >= 32:
    shift = lax.clz(frac).astype(S) + (m - (width - 1))
  else:
    f = lax.bitcast_convert_type(frac.astype(jnp.float32), _u32)
    shift = S(m + _F32_BIAS) - (f >> _F32_MANTISSA_BITS).astype(S)
  return frac << shift.astype(U), shift


def exact_product(src: BitLayout) -> bool:
  """Whether a product of `src` values and float32 scales fits in uint32.

  Codes of at most 7 significant bits times float32's 24 fit in 31 bits, so
  scaling small formats (decoding) is exact integer arithmetic.
  """
  return src.mantissa_bits + 1 + _F32_MANTISSA_BITS + 1 <= 31


def _scale(parts, src: BitLayout, scale: jax.Array, divide: bool, normal: bool = False):
  """Multiplies (or divides) unpacked values by float32 `scale`.

  Returns the `_unpack` tuple and the new mantissa width. Where
  `exact_product(src)` holds, a product is exact: the mantissas multiply as
  integers (the source must be normalized). Otherwise, and for every
  quotient, the result is the float32 one rounded to 24 significant bits,
  with an exponent that neither underflows nor flushes. At or above 2^128
  the result is infinite, as in float32. `normal` promises a positive normal
  scale (dynamic scales are), which spares the special cases per element.
  """
  sign, exp, mant, is_nan, is_inf, is_zero = parts
  s_bits = lax.bitcast_convert_type(scale.astype(jnp.float32), _u32)
  s_sign, s_exp, s_mant, s_nan, s_inf, s_zero = _unpack(
      s_bits, layout.FLOAT32, normalize=True)
  k = s_exp - _F32_BIAS

  if not divide and exact_product(src):
    width = src.mantissa_bits + _F32_MANTISSA_BITS + 1  # hidden bit of the product
    p = mant * s_mant  # in [2^(width - 1), 2^(width + 1)): one bit to normalize
    high = p >= _u32(1 << width)
    new_mant = jnp.where(high, p, p << 1)
    new_exp = exp + k + high.astype(_i32)
  else:
    width = _F32_MANTISSA_BITS
    unit_bits = (s_mant & _u32((1 << width) - 1)) | _u32(_F32_BIAS << width)
    if divide:
      # XLA rewrites x / broadcast(c) as x * (1 / c), which is not correctly
      # rounded. OR-ing in a per-element zero (mant < 2^24, so mant >> 31 is 0,
      # which XLA cannot prove) keeps the divisor elementwise and the division real.
      unit_bits = unit_bits | (mant >> 31)
    unit = lax.bitcast_convert_type(unit_bits, jnp.float32)  # the significand, in [1, 2)
    # Both operands are normal floats well inside float32's range, so this
    # one rounding is exact IEEE arithmetic on every backend.
    mf = mant.astype(jnp.float32)
    p = mf / unit if divide else mf * unit
    p_bits = lax.bitcast_convert_type(p, _u32)
    p_exp = (p_bits >> width).astype(_i32) - _F32_BIAS
    new_mant = (p_bits & _u32((1 << width) - 1)) | _u32(1 << width)
    new_exp = exp + p_exp - src.mantissa_bits + (-k if divide else k)

  too_big = new_exp - src.bias >= _F32_OVERFLOW_EXPONENT
  if normal:
    is_inf = is_inf | (~(is_nan | is_inf | is_zero) & too_big)
    return (sign, new_exp, new_mant, is_nan, is_inf, is_zero), width
  finite = ~(is_nan | is_inf | is_zero)
  zero_scale = s_zero if not divide else s_inf
  inf_scale = s_inf if not divide else s_zero
  is_nan = is_nan | s_nan | (is_inf & zero_scale) | (is_zero & inf_scale)
  is_inf = ~is_nan & (is_inf | (finite & (inf_scale | too_big)))
  is_zero = ~is_nan & ~is_inf & (is_zero | zero_scale)
  new_mant = jnp.where(is_zero, _u32(0), new_mant)
  # A NaN input keeps its sign, as float32 multiplication on CPUs does.
  sign = jnp.where(parts[3], sign, sign ^ s_sign)
  return (sign, new_exp, new_mant, is_nan, is_inf, is_zero), width


def _scale_pow2(parts, src: BitLayout, e: jax.Array, normal: bool = False):
  """Multiplies unpacked values by 2^e, exactly (`POW2_ZERO` for 0, `POW2_NAN` for NaN).

  The same as `_scale` by the float32 power of two, in the lanes of the
  input: only exponents move. At or above 2^128 the product is infinite, as
  in float32; 0 * inf is NaN.
  """
  sign, exp, mant, is_nan, is_inf, is_zero = parts
  U, S = _word(mant)
  finite = ~(is_nan | is_inf | is_zero)
  if not normal:  # the sentinels
    zero_scale, nan_scale = e <= POW2_ZERO, e >= POW2_NAN
    e = jnp.where(zero_scale | nan_scale, 0, e)
  new_exp = exp + jnp.asarray(e).astype(S)
  too_big = finite & (new_exp - S(src.bias) >= S(_F32_OVERFLOW_EXPONENT))
  if normal:
    return sign, new_exp, mant, is_nan, is_inf | too_big, is_zero
  is_nan = is_nan | nan_scale | (is_inf & zero_scale)
  is_inf = ~is_nan & (is_inf | (~zero_scale & too_big))
  is_zero = ~is_nan & ~is_inf & (is_zero | zero_scale)
  mant = jnp.where(is_zero, U(0), mant)
  return sign, new_exp, mant, is_nan, is_inf, is_zero


def _round_shift(mant, r, rounding: str, min_shift: int):
  """Computes mant / 2^r rounded to an integer; r >= min_shift >= 0."""
  U, _ = _word(mant)
  if rounding == TOWARD_ZERO:
    return mant >> r
  if rounding == NEAREST:
    if min_shift == 0:
      # One spare low bit makes the tie-breaking formula valid for r == 0.
      mant, r = mant << U(1), r + U(1)
    odd = (mant >> r) & U(1)
    return (mant + (U(1) << (r - U(1))) - U(1) + odd) >> r
  raise AssertionError(rounding)


def convert(bits: jax.Array, src: BitLayout, dst: BitLayout, *, rounding: str = NEAREST,
            overflow: str = SATURATE, rand: jax.Array | None = None,
            scale: jax.Array | None = None, divide: bool = False,
            pow2: jax.Array | None = None, normal_scale: bool = False) -> jax.Array:
  """Converts `src` codes to `dst` codes.

  Args:
    bits: unsigned integer array; the low `src.bits` bits of each element
      are a code.
    src: layout of the input codes.
    dst: layout of the output codes.
    rounding: one of ROUNDINGS.
    overflow: one of OVERFLOWS.
    rand: uint32 random bits, one per element, for stochastic rounding.
    scale: optional float32 array broadcastable to `bits`; the value is
      multiplied by it (divided, if `divide`) before rounding.
    divide: divide by `scale` instead of multiplying.
    pow2: instead of `scale`, an integer array broadcastable to `bits`: the
      value is multiplied by 2^pow2 (by 0 at or below `POW2_ZERO`, by NaN at or above `POW2_NAN`). The
      result is that of `scale=2.0**pow2`, computed in the input's lanes
      (the product of a power of two is exact); MX scales are powers of two.
    normal_scale: a promise that every `scale` is a positive normal float32
      (dynamic scales are), or that `pow2` holds no sentinel, which spares the
      special cases per element.

  Returns:
    An array of `dst` codes, the shape of `bits`: uint16 where `word_for`
    says 16-bit lanes suffice, else uint32.
  """
  scaled = scale is not None
  if (src == layout.FLOAT32 and dst == layout.BFLOAT16 and rounding == NEAREST
      and overflow == IEEE and not scaled and pow2 is None):
    return _float32_to_bfloat16(bits.astype(_u32))
  bits = bits.astype(word_for(src, dst, rand is not None, scaled))
  if pow2 is not None:
    # Every source subnormal needs its hidden bit: the shift may make it normal.
    parts = _scale_pow2(_unpack(bits, src, normalize=True), src, pow2, normal_scale)
    return _round_pack(parts, src.bias, src.mantissa_bits, dst, rounding, overflow, rand, True)
  if not scaled and rand is None and holds_every_value(src, dst):
    return _widen(_unpack(bits, src, normalize=True), src, dst, overflow)
  if scaled and not divide and rand is None and hardware_product(src, dst, rounding, overflow):
    return _scaled_decode(bits.astype(_u32), src, dst, scale)
  exact = scaled and not divide and exact_product(src)
  # Source subnormals need a hidden bit where the target's normal range
  # reaches below the source's, and for an exact product.
  normalize = exact or (not scaled and 1 - dst.bias < src.min_exponent)
  parts = _unpack(bits, src, normalize)
  src_m = src.mantissa_bits
  if scaled:
    parts, src_m = _scale(parts, src, scale, divide, normal_scale)
  if exact and dst != layout.FLOAT32:
    # The float32 product first, then the target, as float32 arithmetic
    # followed by a cast would round.
    wide = _round_pack(parts, src.bias, src_m, layout.FLOAT32, NEAREST, IEEE, None, True)
    return convert(wide, layout.FLOAT32, dst, rounding=rounding, overflow=overflow, rand=rand)
  return _round_pack(parts, src.bias, src_m, dst, rounding, overflow, rand, normalize or scaled)


def holds_every_value(src: BitLayout, dst: BitLayout) -> bool:
  """Whether every finite `src` value is a normal `dst` value (decoding into
  bfloat16, float16 or float32, but e4m3 into float16 for example)."""
  if not (src.has_subnormals and dst.has_subnormals):
    return False
  def top(f: BitLayout) -> int:
    return (f.max_magnitude >> f.mantissa_bits) - f.bias
  return (dst.mantissa_bits >= src.mantissa_bits and top(dst) >= top(src)
          and src.min_exponent - src.mantissa_bits >= dst.min_exponent)


def _widen(parts, src: BitLayout, dst: BitLayout, overflow: str) -> jax.Array:
  """`_round_pack` where `holds_every_value(src, dst)`: nothing rounds and
  nothing overflows, so each code is its mantissa moved up and its exponent
  rebiased, with none of the data-dependent shifts that rounding needs."""
  _, exp, mant, *_ = parts
  U, _ = _word(mant)
  dst_m = dst.mantissa_bits
  code = (mant << U(dst_m - src.mantissa_bits)) + (
      (exp + (dst.bias - src.bias - 1)).astype(U) << U(dst_m))
  return pack(code, parts, dst, NEAREST, overflow, zero_mask=True, can_overflow=False)


# A scale below 2^-LIFT is multiplied by 2^LIFT before it meets the values, so
# that no product of `_scaled_decode` is a float32 subnormal (which CPUs flush).
_LIFT = 64
# float32's smallest subnormal is 2^_F32_TINIEST (-149): the unit of its subnormal grid.
_F32_TINIEST = layout.FLOAT32.min_exponent - _F32_MANTISSA_BITS


def hardware_product(src: BitLayout, dst: BitLayout, rounding: str, overflow: str) -> bool:
  """Whether `_scaled_decode` gives `convert`'s bits: decoding (nearest, IEEE) into
  bfloat16, float16 or float32, from a format of at most 7 significant bits whose
  smallest value times the smallest lifted scale (2^(-149 + LIFT)) is still a
  normal float32."""
  if (dst not in layout.FLOAT_LAYOUTS.values() or rounding != NEAREST or overflow != IEEE
      or not exact_product(src) or not holds_every_value(src, layout.FLOAT32)):
    return False
  smallest = src.min_exponent - src.mantissa_bits
  return smallest + _F32_TINIEST + _LIFT >= layout.FLOAT32.min_exponent


def _scaled_decode(bits: jax.Array, src: BitLayout, dst: BitLayout, scale: jax.Array):
  """`convert` of small codes times a float32 scale into bfloat16, float16 or float32.

  The same bits as the exact product (the float32 product, rounded once with
  gradual underflow, then cast), mostly from one float32 multiplication per
  element: a decoded value (at most 7 significant bits) and a scale are
  normal floats, so their product is the correctly rounded IEEE one on every
  backend while it is normal. Scales below 2^-LIFT (float32 subnormals among
  them, which CPUs read as zero) are lifted by 2^LIFT first, exactly
  (`_lifted`), and the product comes back down by its exponent field. Where it
  lands below 2^-126 it is rounded onto float32's subnormal grid from the
  exact integer product of the significands instead (rounding the 24-bit
  float product again would round twice). Those float32 bits are then cast
  (`_float32_to_bfloat16`; float16 by the kernel). About 1.5 times as fast as
  the integer product in XLA:CPU, which must normalize every value first.
  """
  sign, exp, mant, is_nan, is_inf, is_zero = _unpack(bits, src, normalize=False)
  # The decoded value: its mantissa as a float32 (exact), moved by its exponent.
  unit = exp - (src.bias + src.mantissa_bits)  # value = mant * 2^unit
  m = lax.bitcast_convert_type(mant.astype(_i32).astype(jnp.float32), _u32)
  inf = _u32(layout.FLOAT32.inf_magnitude)
  d = jnp.where(is_zero, _u32(0), m + (unit.astype(_u32) << _F32_MANTISSA_BITS))
  d = jnp.where(is_inf, inf, jnp.where(is_nan, _u32(layout.FLOAT32.nan_code), d))

  s, down, s_int, s_unit = _lifted(scale)

  p = lax.bitcast_convert_type(
      lax.bitcast_convert_type(d, jnp.float32) * lax.bitcast_convert_type(s, jnp.float32), _u32)
  mag = p & _u32(0x7FFFFFFF)
  # Below 2^-126 once brought down: the exact product on float32's subnormal grid.
  low = mag < down + _u32(1 << _F32_MANTISSA_BITS)
  # q * 2^-r, where the product is below 2^-126 (q >= 2^23, so r > 0 there).
  q = mant * s_int  # < 2^29: exact
  r = jnp.clip(_F32_TINIEST - (unit + s_unit), 1, 31)
  sub = _round_shift(q, r.astype(_u32), NEAREST, 1)
  out = jnp.where(mag >= inf, mag, jnp.where(low, sub, mag - down))
  # The sign as `_scale` gives it: a NaN input keeps its own.
  out = out | (jnp.where(is_nan, sign, sign ^ (s >> 31)) << 31)
  if dst == layout.BFLOAT16:
    return _float32_to_bfloat16(out)  # NaN becomes the canonical NaN of its sign
  nan = _u32(layout.FLOAT32.nan_code) | (out & _u32(1 << 31))
  out = jnp.where(mag > inf, nan, out)
  if dst == layout.FLOAT16:
    return convert(out, layout.FLOAT32, dst, rounding=NEAREST, overflow=IEEE)
  return out


def _lifted(scale: jax.Array):
  """Per scale, for `_scaled_decode`: the scale's bits lifted (normal where finite
  and nonzero), the lift as a float32 exponent field, and the significand
  (an integer below 2^24) and unit exponent of the lifted scale, unlifted.

  A dozen integer operations, left to fuse into the elementwise loop: kept
  apart, the four arrays of many small blocks (NVFP4's 16) cost XLA:CPU more
  to write and read back than to recompute.
  """
  s = lax.bitcast_convert_type(jnp.asarray(scale, jnp.float32), _u32)
  mag = s & _u32(0x7FFFFFFF)
  lift = (mag < _u32((_F32_BIAS - _LIFT) << _F32_MANTISSA_BITS)) & (mag != 0)
  frac = mag & _u32((1 << _F32_MANTISSA_BITS) - 1)
  # A subnormal's fraction as a float32 is exact and normal: frac * 2^-149 lifted.
  sub = lax.bitcast_convert_type(frac.astype(_i32).astype(jnp.float32), _u32) - _u32(
      -(_F32_TINIEST + _LIFT) << _F32_MANTISSA_BITS)
  up = jnp.where(mag < _u32(1 << _F32_MANTISSA_BITS), sub,
                 mag + _u32(_LIFT << _F32_MANTISSA_BITS))
  lifted = jnp.where(lift, up | (s & _u32(1 << 31)), s)
  field = ((lifted & _u32(0x7FFFFFFF)) >> _F32_MANTISSA_BITS).astype(_i32)
  s_int = jnp.where(mag == 0, _u32(0),
                    (lifted & _u32((1 << _F32_MANTISSA_BITS) - 1)) | _u32(1 << _F32_MANTISSA_BITS))
  s_unit = field - jnp.where(lift, _LIFT, 0) - (_F32_BIAS + _F32_MANTISSA_BITS)
  down = jnp.where(lift, _u32(_LIFT << _F32_MANTISSA_BITS), _u32(0))
  return lifted, down, s_int, s_unit


def _float32_to_bfloat16(bits: jax.Array) -> jax.Array:
  """`convert` from float32 to bfloat16, nearest even, IEEE overflow: bfloat16 is
  float32's top half, so rounding is one add on the bits (a carry moves into the
  exponent, up to infinity); NaN becomes the canonical NaN of its sign."""
  nan = (bits & _u32(0x7FFFFFFF)) > _u32(0x7F800000)
  rounded = (bits + _u32(0x7FFF) + ((bits >> 16) & _u32(1))) >> 16
  canonical = _u32(layout.BFLOAT16.nan_code) | ((bits >> 31) << 15)
  return jnp.where(nan, canonical, rounded)


def _round_pack(parts, src_bias: int, src_m: int, dst: BitLayout, rounding: str, overflow: str,
                rand, zero_mask: bool):
  """Rounds unpacked values onto `dst`'s grid and packs its codes."""
  sign, exp, mant, is_nan, is_inf, is_zero = parts
  U, _ = _word(mant)
  dst_m = dst.mantissa_bits
  # Widening keeps every mantissa bit: shift left now, round nothing.
  if dst_m > src_m:
    mant = mant << U(dst_m - src_m)
  width = max(src_m, dst_m)
  min_shift = max(src_m - dst_m, 0)
  top_field = dst.magnitude_mask >> dst_m
  # Biased target exponent, capped so that no shift below can wrap around.
  t = jnp.minimum(exp - src_bias + dst.bias, top_field + 1)
  # Rounding treats every target as having subnormals below 2^(1 - bias).
  # For E8M0 this reproduces ml_dtypes: code 0 (2^-127) then acts as the
  # zero of that range, so values in (2^-127, 2^-126) round up to 2^-126.
  shift = min_shift + jnp.maximum(1 - t, 0)
  # Past width + 2 bits every rounding mode but stochastic gives 0.
  r = jnp.minimum(shift, width + 2).astype(U)

  if rounding == STOCHASTIC:
    # Add r uniform random bits below the cut, then truncate: a carry, and so
    # a step up, happens with probability (mant mod 2^r) / 2^r. Past
    # RANDOM_BITS the low bits are dropped first, so the probability is
    # resolved to 2^-RANDOM_BITS of the gap and the sum never wraps.
    rs = jnp.minimum(shift, RANDOM_BITS)
    low = mant >> jnp.minimum(shift - rs, 31).astype(U)
    rs = rs.astype(U)
    q = (low + (rand >> (U(32) - rs))) >> rs
  else:
    q = _round_shift(mant, r, rounding, min_shift)

  # q still holds the hidden bit, worth one exponent step: add t - 1.
  code = q + (jnp.maximum(t, 1) - 1).astype(U) * U(1 << dst_m)
  return pack(code, parts, dst, rounding, overflow, zero_mask, can_overflow=True)


def pack(code, parts, dst: BitLayout, rounding: str, overflow: str, zero_mask: bool = False,
         can_overflow: bool = True):
  """Packs rounded magnitudes `code` with their signs and special values.

  `code` holds magnitudes on `dst`'s grid extended past its range; `parts`
  is `_unpack`'s tuple (only its sign and flags are read). Magnitudes above
  the largest finite one overflow by the policy; `zero_mask` zeroes the
  magnitudes of zeros, and `can_overflow=False` promises none overflows.
  """
  sign, _, _, is_nan, is_inf, is_zero = parts
  U, _ = _word(code)
  if zero_mask:
    code = jnp.where(is_zero, U(0), code)

  over_to, inf_to = _overflow_targets(dst, rounding, overflow)
  over = (code > U(dst.max_magnitude)) & ~is_inf if can_overflow else None
  mag = code
  if over is not None and over_to is not None:
    mag = jnp.where(over, U(over_to), mag)
  if inf_to is not None:
    mag = jnp.where(is_inf, U(inf_to), mag)
  to_nan = is_nan
  if over is not None and over_to is None:
    to_nan = to_nan | over
  if inf_to is None:
    to_nan = to_nan | is_inf

  if dst.convention == layout.E8M0:
    to_nan = to_nan | (sign == 1) | is_zero
    return jnp.where(to_nan, U(dst.nan_code), mag)
  if dst.convention == layout.FNUZ:
    sign = sign & (mag != 0).astype(U)  # no negative zero
  out = mag | (sign << (dst.bits - 1))
  if dst.convention == layout.FNUZ:
    nan = U(dst.nan_code)
  elif dst.convention == layout.FINITE:
    # No NaN code: ml_dtypes encodes NaN as the zero of the opposite sign.
    nan = (sign ^ U(1)) << (dst.bits - 1)
  else:
    nan = U(dst.nan_code) | (sign << (dst.bits - 1))
  return jnp.where(to_nan, nan, out)


def _overflow_targets(dst: BitLayout, rounding: str, overflow: str):
  """Magnitudes for finite overflow and for infinities; None means NaN."""
  top = dst.max_magnitude
  if not dst.has_nan:
    return top, top  # no NaN and no infinity: always saturate (OCP MX)
  inf_or = dst.inf_magnitude if dst.has_inf else None
  if overflow == SATFINITE:
    return top, top
  if overflow == SATURATE:
    return top, (inf_or if dst.has_inf else top)
  # IEEE 754: rounding toward zero carries overflow to the largest finite.
  return (top if rounding == TOWARD_ZERO else inf_or), inf_or
