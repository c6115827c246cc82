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

from fp8jax.core import codec, layout
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
