"""Decoding with one scale: each value a per-scale significand moved by the code's exponent.

For one positive scale s, `decode(code) * s` (the exact product rounded to
float32, then to the output dtype, as `kernel.convert` defines it) depends
on a code's fraction bits f through one significand per f, and on its
exponent field e only by e binades, wherever the results stay normal:
doubling the code's value doubles the product. So with the 2^m results of
e = 1 and the 2^m of e = 0 (the subnormals), found once by the kernel, each
element is a selection by its fraction bits plus its exponent field moved
into place, in 16-bit lanes, where the kernel multiplies in 32.

The per-scale check is exhaustive: the formula is compared with the kernel
on every code, and where one differs (results that overflow or turn
subnormal, a scale that is not a positive normal float), `decode_scaled`
takes the kernel's product instead.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fp8jax.core import codec, kernel, layout
from fp8jax.core.layout import BitLayout

_u16 = jnp.uint16


def supported(src: BitLayout, dtype) -> bool:
  """Whether `decode_scaled` can select significands for these codes and output."""
  dst = layout.FLOAT_LAYOUTS.get(np.dtype(dtype))
  return (dst is not None and dst.bits == 16 and src.signed and src.has_subnormals
          and src.bits <= 8)


def _select(bits: list[jax.Array], values: list[jax.Array]) -> jax.Array:
  """values[i] per element, i given by its bits (least significant first)."""
  for bit in bits:
    values = [jnp.where(bit, hi, lo) for lo, hi in zip(values[::2], values[1::2], strict=True)]
  return values[0]


def decode_scaled(codes: jax.Array, src: BitLayout, dtype, scale: jax.Array) -> jax.Array:
  """`codec.decode_array(codes, src, dtype, scale=scale)` for one scale.

  Args:
    codes: uint8 codes of `src` (`supported`).
    src: their layout.
    dtype: bfloat16 or float16.
    scale: one float32 scale (any shape of size 1).

  Returns:
    The decoded, scaled values in `dtype`, bit for bit the kernel's.
  """
  dtype = np.dtype(dtype)
  dst = layout.FLOAT_LAYOUTS[dtype]
  m = src.mantissa_bits
  s = jnp.asarray(scale, jnp.float32).reshape(())
  every = lax.iota(jnp.uint32, 1 << src.bits)
  table = kernel.convert(every, src, dst, rounding=kernel.NEAREST, overflow=kernel.IEEE,
                         scale=s).astype(jnp.int32)
  # The significands: subnormal codes as they are, e = 1 less one binade.
  sub = table[: 1 << m]
  normal = table[1 << m: 2 << m] - (1 << dst.mantissa_bits)
  mags = jnp.arange(src.magnitude_mask + 1, dtype=jnp.int32)
  frac, exp = mags & ((1 << m) - 1), mags >> m
  formula = jnp.where(exp == 0, sub[frac], normal[frac] + (exp << dst.mantissa_bits))
  # Codes that are not numbers (and FNUZ's NaN, whose magnitude is 0) keep the kernel's
  # results; the formula must give every other code's.
  special = np.array([src.is_nan(c) or abs(src.value(c)) == np.inf for c in range(1 << src.bits)])
  positive = table[: src.magnitude_mask + 1]
  usable = (s > 0) & jnp.all(special[: src.magnitude_mask + 1] | (formula == positive))

  def selected(codes, s):
    c = codes.astype(_u16) & _u16((1 << src.bits) - 1)
    sign = (c >> _u16(src.bits - 1)) & _u16(1)
    mag = c & _u16(src.magnitude_mask)
    e = mag >> _u16(m)
    pick = [jnp.where(e == 0, sub[k].astype(_u16), normal[k].astype(_u16)) for k in range(1 << m)]
    out = _select([(mag >> _u16(j)) & _u16(1) for j in range(m)], pick) + (e << dst.mantissa_bits)
    out = out | (sign << _u16(15))
    signed = lambda code: table[code].astype(_u16) | (sign << _u16(15))
    if src.convention == layout.IEEE:
      inf = src.inf_magnitude
      out = jnp.where(mag == inf, signed(inf), jnp.where(mag > inf, signed(src.nan_code), out))
    elif src.convention == layout.FN:
      out = jnp.where(mag == src.nan_code, signed(src.nan_code), out)
    elif src.convention == layout.FNUZ:
      out = jnp.where(c == src.nan_code, table[src.nan_code].astype(_u16), out)
    return lax.bitcast_convert_type(out, dtype)

  def multiplied(codes, s):
    return codec.decode_array(codes, src, dtype, scale=s)

  return lax.cond(usable, selected, multiplied, codes, s)
