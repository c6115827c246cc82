"""Float32 by its bits: comparisons, maxima and powers of two that never flush.

XLA on CPU flushes float32 subnormals to zero in arithmetic and comparisons.
Scales and amaxes may be subnormal, and non-negative floats order like their
bit patterns, so these helpers work on the uint32 patterns instead.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fp8jax.core import codec, kernel, layout
from fp8jax.core.formats import FORMATS

BIAS = layout.FLOAT32.bias
MANTISSA_BITS = layout.FLOAT32.mantissa_bits
MAX = float(np.finfo(np.float32).max)
TINY = 2.0**layout.FLOAT32.min_exponent
"""The smallest normal float32, 2^-126."""

_E8M0 = FORMATS["e8m0fnu"]


def is_positive(a: jax.Array) -> jax.Array:
  """a > 0 for non-negative float32 a, subnormals included."""
  return lax.bitcast_convert_type(a, jnp.uint32) != 0


def clamp_positive(a: jax.Array, lo: float, hi: float) -> jax.Array:
  """clip(a, lo, hi) for non-negative float32 a and bounds, subnormals included."""
  lo_bits, hi_bits = np.array([lo, hi], np.float32).view(np.uint32)
  u = jnp.clip(lax.bitcast_convert_type(a, jnp.uint32), jnp.uint32(lo_bits), jnp.uint32(hi_bits))
  return lax.bitcast_convert_type(u, jnp.float32)


def max_positive(a: jax.Array, axis=None) -> jax.Array:
  """The max of non-negative float32 values, exact for subnormals."""
  return lax.bitcast_convert_type(
      jnp.max(lax.bitcast_convert_type(a, jnp.uint32), axis=axis), jnp.float32)


def pow2_up(s: jax.Array) -> jax.Array:
  """The smallest power of two >= s, for positive finite float32 s."""
  u = lax.bitcast_convert_type(s, jnp.uint32)
  mant_mask = jnp.uint32((1 << MANTISSA_BITS) - 1)
  normal = (u + mant_mask) & ~mant_mask  # a carry moves into the exponent
  # Subnormal: the next power of two of the integer significand.
  m = jnp.maximum(u, jnp.uint32(1)) - jnp.uint32(1)
  sub = jnp.where(u <= 1, u, jnp.uint32(1) << (jnp.uint32(32) - lax.clz(m)))
  return lax.bitcast_convert_type(jnp.where(u > mant_mask, normal, sub), jnp.float32)


def floor_log2(amax: jax.Array) -> jax.Array:
  """floor(log2(a)) for positive float32 a, from the bits."""
  u = lax.bitcast_convert_type(amax, jnp.uint32)
  exp = (u >> MANTISSA_BITS).astype(jnp.int32)
  sub = (31 - lax.clz(u).astype(jnp.int32)) - (BIAS - 1 + MANTISSA_BITS)
  return jnp.where(exp > 0, exp - BIAS, sub)


def from_e8m0(codes: jax.Array) -> jax.Array:
  """e8m0fnu codes (MX scales) as the float32 powers of two they stand for."""
  return codec.decode_array(codes, _E8M0.bit_layout, np.dtype(np.float32))


# --- correctly rounded float32 arithmetic on small arrays (scales) -------------
#
# XLA:CPU flushes subnormal results, and the kernel's scaled route keeps 24
# bits below 2^-126 instead of rounding to float32's subnormal grid. Scale
# formulas copied from other stacks (NVFP4's two-level scales) must give the
# float32 bits those stacks get, subnormals included, so `mul` and `div` form
# the exact product or quotient with integers and round it once, as IEEE 754
# float32 does (nearest even, gradual underflow, overflow to infinity).

_F32 = layout.FLOAT32
_MAG = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)


def _bits(a) -> jax.Array:
  return lax.bitcast_convert_type(jnp.asarray(a, jnp.float32), jnp.uint32)


def _pack(sign, exp, mant, mant_bits, is_nan, is_inf, is_zero) -> jax.Array:
  """Rounds mant * 2^(exp - BIAS - mant_bits) to float32 (mant's lowest bit is sticky)."""
  parts = (sign, exp, mant, is_nan, is_inf, is_zero)
  # Same subpackage: the kernel's rounding and packing, onto float32's grid.
  out = kernel._round_pack(parts, BIAS, mant_bits, _F32, kernel.NEAREST, kernel.IEEE, None,
                           True)
  return lax.bitcast_convert_type(out, jnp.float32)


def mul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a * b in float32, correctly rounded, subnormals included, on every backend.

  Args:
    a: float32 array (or number).
    b: float32 array (or number), broadcastable against `a`.

  Returns:
    The IEEE 754 float32 product: nearest even, gradual underflow, infinity
    past the largest float, NaN for NaN operands and 0 * inf.

  Example:
    >>> mul(jnp.float32(3.0), jnp.float32(2.0**-140)) == jnp.float32(3 * 2.0**-140)
    Array(True, dtype=bool)
  """
  ua, ub = jnp.broadcast_arrays(_bits(a), _bits(b))
  sa, ea, ma, na, ia, za = kernel._unpack(ua, _F32, normalize=True)
  sb, eb, mb, nb, ib, zb = kernel._unpack(ub, _F32, normalize=True)
  u32 = jnp.uint32
  # The exact 48-bit product of the 24-bit significands, as hi * 2^32 + lo.
  a1, a0 = ma >> u32(16), ma & u32(0xFFFF)
  b1, b0 = mb >> u32(16), mb & u32(0xFFFF)
  lo = a0 * b0
  mid = a1 * b0 + a0 * b1  # < 2^25
  lo2 = lo + ((mid & u32(0xFFFF)) << u32(16))
  hi = a1 * b1 + (mid >> u32(16)) + (lo2 < lo).astype(jnp.uint32)
  # 26 leading bits and a sticky bit: product in [2^46, 2^48).
  top = (hi << u32(10)) | (lo2 >> u32(22))
  mant = (top << u32(1)) | (lo2 & u32((1 << 22) - 1) != 0).astype(jnp.uint32)
  carry = mant >= u32(1 << 26)
  mant = jnp.where(carry, (mant >> u32(1)) | (mant & u32(1)), mant)
  exp = ea + eb - BIAS + carry.astype(jnp.int32)
  is_nan = na | nb | (ia & zb) | (za & ib)
  is_inf = ~is_nan & (ia | ib)
  is_zero = ~is_nan & ~is_inf & (za | zb)
  return _pack(sa ^ sb, exp, mant, 25, is_nan, is_inf, is_zero)


def div(a: jax.Array, b: jax.Array) -> jax.Array:
  """a / b in float32, correctly rounded, subnormals included, on every backend.

  `codec.divide_f32` is the fast route for normal quotients; this one also
  rounds subnormal quotients exactly (from the exact integer quotient and
  remainder of the significands), for scale-sized arrays.

  Args:
    a: float32 array (or number), the dividend.
    b: float32 array (or number), the divisor, broadcastable against `a`.

  Returns:
    The IEEE 754 float32 quotient: nearest even, gradual underflow, infinity
    for a finite nonzero `a` over zero, NaN for 0/0 and inf/inf.

  Example:
    >>> div(jnp.float32(1.0), jnp.float32(3.0))
    Array(0.33333334, dtype=float32)
  """
  ua, ub = jnp.broadcast_arrays(_bits(a), _bits(b))
  sa, ea, ma, na, ia, za = kernel._unpack(ua, _F32, normalize=True)
  sb, eb, mb, nb, ib, zb = kernel._unpack(ub, _F32, normalize=True)
  u32, i32 = jnp.uint32, jnp.int32
  mb = jnp.where(zb | ib | nb, u32(1 << 23), mb)  # keep the arithmetic well defined
  ma = jnp.where(za | ia | na, u32(1 << 23), ma)
  # q = floor(ma * 2^26 / mb): a float32 estimate within 4 of it (ma, mb < 2^24 are
  # exact floats, the quotient in (1/2, 2) has 24 bits), then the exact remainder. It is
  # below 2^31 in magnitude, so the low 32 bits of ma * 2^26 - q * mb give it.
  est = lax.bitcast_convert_type(ma.astype(jnp.float32) / mb.astype(jnp.float32), u32)
  est = est + u32(26 << MANTISSA_BITS)  # times 2^26, exactly: an integer below 2^27
  q = lax.bitcast_convert_type(est, jnp.float32).astype(u32)
  r = lax.bitcast_convert_type((ma << u32(26)) - q * mb, i32)
  k = jnp.floor(r.astype(jnp.float32) / mb.astype(jnp.float32)).astype(i32)
  r = r - k * mb.astype(i32)
  low, high = r < 0, r >= mb.astype(i32)
  r = jnp.where(low, r + mb.astype(i32), jnp.where(high, r - mb.astype(i32), r))
  k = k - low.astype(i32) + high.astype(i32)
  q = (q.astype(i32) + k).astype(u32)
  mant = (q << u32(1)) | (r != 0).astype(jnp.uint32)  # in [2^26, 2^28)
  carry = mant >= u32(1 << 27)
  mant = jnp.where(carry, (mant >> u32(1)) | (mant & u32(1)), mant)
  exp = ea - eb + BIAS - 1 + carry.astype(jnp.int32)
  is_nan = na | nb | (za & zb) | (ia & ib)
  is_inf = ~is_nan & (ia | (zb & ~za))
  is_zero = ~is_nan & ~is_inf & (za | ib)
  return _pack(sa ^ sb, exp, mant, 26, is_nan, is_inf, is_zero)


def round_to(a: jax.Array, dtype) -> jax.Array:
  """Float32 `a` rounded to `dtype` (bfloat16, float16, float32; nearest even,
  overflow to infinity), returned as float32: what a cast to `dtype` keeps."""
  dst = layout.FLOAT_LAYOUTS[np.dtype(dtype)]
  if dst == _F32:
    return jnp.asarray(a, jnp.float32)
  narrow = kernel.convert(_bits(a), _F32, dst, rounding=kernel.NEAREST, overflow=kernel.IEEE)
  wide = kernel.convert(narrow, dst, _F32, rounding=kernel.NEAREST, overflow=kernel.IEEE)
  return lax.bitcast_convert_type(wide.astype(jnp.uint32), jnp.float32)


def is_nan(a: jax.Array) -> jax.Array:
  """isnan(a) from the bits (no float comparison)."""
  return (_bits(a) & _MAG) > _INF_BITS


def is_inf(a: jax.Array) -> jax.Array:
  """isinf(a) from the bits."""
  return (_bits(a) & _MAG) == _INF_BITS


def clamp_keep_nan(a: jax.Array, lo: float, hi: float) -> jax.Array:
  """torch.clamp(a, lo, hi) for non-negative float32 a (NaN stays NaN), subnormals included."""
  return jnp.where(is_nan(a), a, clamp_positive(a, lo, hi))


def is_pow2(a: jax.Array) -> jax.Array:
  """Whether positive finite float32 a is a power of two, subnormals included."""
  u = _bits(a) & _MAG
  frac = u & np.uint32((1 << MANTISSA_BITS) - 1)
  normal = (u >> MANTISSA_BITS) != 0
  return jnp.where(normal, frac == 0, (u & (u - np.uint32(1))) == 0)


def quotient_is_zero(x: jax.Array, d: jax.Array) -> jax.Array:
  """Whether float32 division x / d rounds to (signed) zero: |x| <= |d| * 2^-150.

  Exact for any finite x (bfloat16, float16 or float32) and positive d,
  subnormals included; an infinite d gives True for finite x.
  """
  src = layout.FLOAT_LAYOUTS[np.dtype(x.dtype)]
  word = jnp.dtype(f"uint{src.bits}")
  ux = lax.bitcast_convert_type(x, word).astype(jnp.uint32)
  _, ex, mx, _, _, zx = kernel._unpack(ux, src, normalize=True)
  # The divisor unpacked at its own shape (one per block), not per element.
  _, ed, md, _, idd, _ = kernel._unpack(_bits(d), _F32, normalize=True)
  ex = ex - src.bias  # exponents of the leading bits, significands to 24 bits
  mx = mx << np.uint32(MANTISSA_BITS - src.mantissa_bits)
  limit = ed - BIAS - 150
  below = (ex < limit) | ((ex == limit) & (mx <= md))
  return zx | idd | below
