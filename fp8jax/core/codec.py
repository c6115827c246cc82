"""`encode` and `decode`: floats to the codes of a small format and back."""

from __future__ import annotations

from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from fp8jax.core import checks, kernel, layout, randbits
from fp8jax.core.formats import FormatLike, get_format
from fp8jax.core.kernel import Overflow, Rounding


def _as_u32(x: jax.Array) -> jax.Array:
  width = np.dtype(x.dtype).itemsize * 8
  if width == 32:
    return lax.bitcast_convert_type(x, jnp.uint32)
  return lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}")).astype(jnp.uint32)


def _from_u32(codes: jax.Array, dtype: np.dtype) -> jax.Array:
  width = np.dtype(dtype).itemsize * 8
  if width != 32:
    codes = codes.astype(jnp.dtype(f"uint{width}"))
  return lax.bitcast_convert_type(codes, dtype)


def encode_array(x: jax.Array, dst: layout.BitLayout, *, rounding: str, overflow: str,
                 key: jax.Array | None = None, scale: jax.Array | None = None,
                 divide: bool = False, pow2: jax.Array | None = None,
                 normal_scale: bool = False) -> jax.Array:
  """The traceable body of `encode`, for use inside other jitted functions.

  Arguments are not checked. With `scale`, encodes `x * scale` (or
  `x / scale`), the product or quotient formed as float32 does, rounded once
  to 24 bits, without flushing subnormals, infinite at or above 2^128. With
  `pow2` (integers), encodes `x * 2^pow2` the same way (`kernel.convert`).
  `normal_scale` promises positive normal scales (`kernel.convert`).
  """
  rand = None
  if rounding == kernel.STOCHASTIC:
    rand = randbits.bits(key, x.shape)
  src = layout.FLOAT_LAYOUTS[np.dtype(x.dtype)]
  codes = kernel.convert(_as_u32(x), src, dst, rounding=rounding, overflow=overflow,
                        rand=rand, scale=scale, divide=divide, pow2=pow2,
                        normal_scale=normal_scale)
  return codes.astype(jnp.uint8)


def decode_array(bits: jax.Array, src: layout.BitLayout, dtype: np.dtype, *,
                 scale: jax.Array | None = None, divide: bool = False,
                 pow2: jax.Array | None = None) -> jax.Array:
  """The traceable body of `decode`; with `scale`, `decode(bits) * scale` (or
  `/ scale`) formed as in float32 and rounded to `dtype`; with `pow2`
  (integers), `decode(bits) * 2^pow2`, which float32 holds exactly for the
  8-bit formats and exponents of at least -127 (MX scales), rounded once."""
  codes = lax.bitcast_convert_type(bits, jnp.uint8).astype(jnp.uint32)
  dtype = np.dtype(dtype)
  out = kernel.convert(codes, src, layout.FLOAT_LAYOUTS[dtype], rounding=kernel.NEAREST,
                      overflow=kernel.IEEE, scale=scale, divide=divide, pow2=pow2)
  return _from_u32(out, dtype)


def divide_f32(a: jax.Array, b: jax.Array) -> jax.Array:
  """a / b in float32, correctly rounded where the quotient is a normal float.

  XLA rewrites a division by a constant or a broadcast into a multiplication
  by the reciprocal, which is not correctly rounded, and flushes subnormals
  on CPU; the kernel does neither. A quotient below 2^-126 is rounded to 24
  bits first, then to float32's subnormal grid.
  """
  a = jnp.asarray(a, jnp.float32)
  out = kernel.convert(_as_u32(a), layout.FLOAT32, layout.FLOAT32, rounding=kernel.NEAREST,
                      overflow=kernel.IEEE, scale=jnp.asarray(b, jnp.float32), divide=True)
  return lax.bitcast_convert_type(out, jnp.float32)


def _encode_impl(x, key, scale, out, *, dst, rounding, overflow, divide):
  del out  # only donated, so that the result may reuse its buffer
  return encode_array(x, dst, rounding=rounding, overflow=overflow, key=key, scale=scale,
                      divide=divide)


def _decode_impl(bits, scale, out, *, src, dtype, divide):
  del out
  return decode_array(bits, src, dtype, scale=scale, divide=divide)


_ENCODE_STATIC = ("dst", "rounding", "overflow", "divide")
_DECODE_STATIC = ("src", "dtype", "divide")
_encode = jax.jit(_encode_impl, static_argnames=_ENCODE_STATIC)
_encode_into = jax.jit(_encode_impl, static_argnames=_ENCODE_STATIC, donate_argnames="out",
                       keep_unused=True)
_decode = jax.jit(_decode_impl, static_argnames=_DECODE_STATIC)
_decode_into = jax.jit(_decode_impl, static_argnames=_DECODE_STATIC, donate_argnames="out",
                       keep_unused=True)


def _donatable(out: Any) -> bool:
  return isinstance(out, jax.Array) and not isinstance(out, jax.core.Tracer)


def encode(x: ArrayLike, fmt: FormatLike, *, rounding: Rounding = "nearest",
           overflow: Overflow = "saturate",
           key: jax.Array | None = None) -> jax.Array:
  """Encodes floats as the codes of a small float format.

  Rounds once, straight from the input's precision to the target's grid,
  with integer arithmetic only (subnormals included, on every backend).

  Args:
    x: bfloat16, float16 or float32 array, any shape.
    fmt: a format name such as "e4m3fn", a `Format`, or a float8 dtype.
    rounding: "nearest" (ties to even), "toward_zero", or "stochastic"
      (rounds up with probability equal to the distance from the lower
      neighbour over the gap, resolved to 2^-31 of the gap; needs `key`).
    overflow: "saturate", "satfinite" or "ieee"; see the README's table.
    key: a jax.random key, required for (and only for) stochastic rounding.
      The same key gives the same bits.

  Returns:
    A uint8 array of the same shape holding the codes (sub-byte formats in
    the low bits).

  Example:
    >>> encode(jnp.array([1.0, 500.0], jnp.bfloat16), "e4m3fn")
    Array([ 56, 126], dtype=uint8)
  """
  checks.float_layout(x, "x")
  dst = get_format(fmt).bit_layout
  checks.rounding(rounding, key)
  checks.overflow(overflow)
  return _encode(x, key, None, None, dst=dst, rounding=rounding, overflow=overflow,
                 divide=False)


def decode(bits: ArrayLike, fmt: FormatLike, dtype: Any = jnp.bfloat16) -> jax.Array:
  """Decodes the codes of a small float format to floats, exactly.

  Every code maps to its exact value; only float16 can fall short, for
  formats whose range exceeds it (e8m0fnu), where values round to nearest
  even and overflow to infinity as a float16 cast does.

  Args:
    bits: uint8 (or int8) codes, any shape. For 6- and 4-bit formats only
      the low bits are read.
    fmt: a format name, a `Format`, or a float8 dtype.
    dtype: bfloat16 (default), float16 or float32.

  Returns:
    An array of `dtype` of the same shape.

  Example:
    >>> decode(jnp.array([56, 126], jnp.uint8), "e4m3fn", jnp.float32)
    Array([  1., 448.], dtype=float32)
  """
  checks.code_array(bits, "bits")
  src = get_format(fmt).bit_layout
  out_dtype, _ = checks.target_layout(dtype, "dtype")
  return _decode(bits, None, None, src=src, dtype=out_dtype, divide=False)


def encode_into(x: jax.Array, fmt: FormatLike, scale: jax.Array | None, out: Any, *,
                rounding: str, overflow: str, key: jax.Array | None) -> jax.Array:
  """`encode`, optionally of `x * scale`, writing into a donated `out`.

  Arguments are checked by the caller. The product `x * scale` is the
  float32 product rounded to 24 significant bits, with an exponent that
  neither underflows nor flushes, infinite at or above 2^128; it is then
  rounded once more, onto the format's grid. A concrete `out` is donated:
  the result reuses its buffer and the old handle becomes invalid.
  """
  fn = _encode_into if _donatable(out) else _encode
  return fn(x, key, scale, out if _donatable(out) else None, dst=get_format(fmt).bit_layout,
            rounding=rounding, overflow=overflow, divide=False)


def decode_into(bits: jax.Array, fmt: FormatLike, dtype: Any, scale: jax.Array | None,
                out: Any) -> jax.Array:
  """`decode`, optionally followed by a float32 division by `scale`, into `out`.

  Arguments are checked by the caller. The quotient is the float32
  quotient (24 significant bits, no flushing), then rounded to `dtype`.
  """
  out_dtype, _ = checks.target_layout(dtype, "dtype")
  fn = _decode_into if _donatable(out) else _decode
  return fn(bits, scale, out if _donatable(out) else None, src=get_format(fmt).bit_layout,
            dtype=out_dtype, divide=True)
