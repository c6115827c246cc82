"""The original API: `round_to_fp8_represented_as_int8`, `undo_int8_fp8`,
`int32_to_bfloat16`, with their original names and meaning.

JAX arrays are immutable, so `out=` cannot be filled in place. It is still
useful: when given, it must match the result's shape and dtype, it is
donated to the computation so that the result reuses its memory (large
casts are dominated by allocating fresh output), and the new array is
returned. The array passed as `out` is invalid afterwards, as with any JAX
donation; write `y = round_to_fp8_represented_as_int8(x, 3, out=y)`.
Inside `jax.jit`, `out` is checked and otherwise ignored.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from fp8jax.core import checks, codec, formats
from fp8jax.core.formats import FormatLike
from fp8jax.core.kernel import Overflow, Rounding


def round_to_fp8_represented_as_int8(t: ArrayLike, n_mantissa: int | None, out: Any = None,
                                     scaling_factor: Any = 1.0, *, rounding: Rounding = "nearest",
                                     overflow: Overflow = "saturate", key: jax.Array | None = None,
                                     format: FormatLike | None = None) -> jax.Array:
  """Rounds `t * scaling_factor` to FP8 and returns the codes as uint8.

  Args:
    t: bfloat16, float16 or float32 array.
    n_mantissa: mantissa bits, 1 to 6: 2 -> e5m2, 3 -> e4m3fn, 4 -> e3m4,
      and IEEE-style E6M1, E2M5, E1M6 for 1, 5, 6. May be None when
      `format` is given; otherwise it must agree with it.
    out: optional uint8 array of `t`'s shape, donated to hold the result
      (see the module docstring); the result is returned either way.
    scaling_factor: finite, nonzero number or float32 array broadcastable
      to `t`. `t` is multiplied by it in float32 (one rounding, no flushing
      of subnormals) before encoding.
    rounding: "nearest", "toward_zero" or "stochastic" (needs `key`).
    overflow: "saturate" (the original clamp; default), "satfinite", "ieee".
    key: a jax.random key for stochastic rounding.
    format: a format name, `Format` or float8 dtype overriding `n_mantissa`.

  Returns:
    uint8 codes, the shape of `t`.

  Example:
    >>> round_to_fp8_represented_as_int8(jnp.array([1.0, -2.0], jnp.bfloat16), 3)
    Array([ 56, 192], dtype=uint8)
  """
  checks.float_layout(t, "t")
  fmt = formats.resolve_format(n_mantissa, format)
  checks.rounding(rounding, key)
  checks.overflow(overflow)
  scale = checks.scale_or_none(scaling_factor, t.shape)
  checks.out(out, t.shape, np.dtype(np.uint8), like=t)
  return codec.encode_into(t, fmt, scale, out, rounding=rounding, overflow=overflow, key=key)


def undo_int8_fp8(fp8_tensor: ArrayLike, n_mantissa: int | None, target_dt: Any = jnp.bfloat16,
                  out: Any = None, scaling_factor: Any = 1.0, *,
                  format: FormatLike | None = None) -> jax.Array:
  """Decodes FP8 codes to `target_dt`, dividing by `scaling_factor`.

  Args:
    fp8_tensor: uint8 (or int8) codes.
    n_mantissa: mantissa bits, 1 to 6, as in `round_to_fp8_represented_as_int8`.
    target_dt: bfloat16 (default), float16 or float32.
    out: optional array of `target_dt` and the codes' shape, donated to hold
      the result; the result is returned either way.
    scaling_factor: finite, nonzero number or float32 array broadcastable to
      the codes; the decoded value is divided by it in float32, then rounded
      to `target_dt`.
    format: a format name, `Format` or float8 dtype overriding `n_mantissa`.

  Returns:
    An array of `target_dt`, the shape of `fp8_tensor`.

  Example:
    >>> undo_int8_fp8(jnp.array([56, 192], jnp.uint8), 3, jnp.float32)
    Array([ 1., -2.], dtype=float32)
  """
  checks.code_array(fp8_tensor, "fp8_tensor")
  fmt = formats.resolve_format(n_mantissa, format)
  out_dtype, _ = checks.target_layout(target_dt, "target_dt")
  scale = checks.scale_or_none(scaling_factor, fp8_tensor.shape)
  checks.out(out, fp8_tensor.shape, out_dtype, like=fp8_tensor)
  return codec.decode_into(fp8_tensor, fmt, out_dtype, scale, out)


@jax.jit
def _low_half_as_bf16(x: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(x.astype(jnp.uint16), jnp.bfloat16)


def int32_to_bfloat16(x: ArrayLike) -> jax.Array:
  """Reads the low 16 bits of each int32 as a bfloat16 bit pattern.

  Args:
    x: int32 (or uint32) array.

  Returns:
    A bfloat16 array of the same shape.

  Example:
    >>> int32_to_bfloat16(jnp.array([0x3F80, 0x12340000 | 0xC000], jnp.int32))
    Array([1, -2], dtype=bfloat16)
  """
  dtype = checks.dtype_of(x, "x")
  if dtype not in (np.dtype(np.int32), np.dtype(np.uint32)):
    raise TypeError(f"x must be int32 (or uint32) (got {dtype})")
  return _low_half_as_bf16(x)
