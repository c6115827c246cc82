"""Zero-arithmetic views of uint8 codes as jax.numpy float8 arrays and back."""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fp8jax.core import checks
from fp8jax.core.formats import _BY_DTYPE, FORMATS, FormatLike, get_format

_VIEWABLE = [name for name, f in FORMATS.items() if f.bits == 8]


def as_float8(bits: ArrayLike, fmt: FormatLike) -> jax.Array:
  """Reinterprets uint8 codes as the matching jax.numpy float8 array.

  A bitcast, not a conversion: the result feeds XLA's own FP8 operations,
  such as `lax.dot_general` with float8 operands.

  Args:
    bits: uint8 (or int8) codes.
    fmt: a named 8-bit format (FP6 and FP4 have no byte-sized view: XLA
      packs them, so use `decode` for those).

  Returns:
    An array of the format's dtype and the same shape.

  Raises:
    ValueError: if the format has no jax.numpy dtype.

  Example:
    >>> as_float8(jnp.array([56], jnp.uint8), "e4m3fn")
    Array([1], dtype=float8_e4m3fn)
  """
  checks.code_array(bits, "bits")
  f = get_format(fmt)
  if f.dtype is None or f.bits != 8:
    raise ValueError(f"fmt {f.name!r} has no 8-bit jax.numpy dtype to view codes as; "
                     f"formats with one: {', '.join(sorted(_VIEWABLE))}")
  return lax.bitcast_convert_type(jnp.asarray(bits), f.dtype)


def from_float8(x: ArrayLike) -> jax.Array:
  """Reinterprets a jax.numpy float8 array as its uint8 codes.

  Args:
    x: an array of a float8 dtype.

  Returns:
    The uint8 codes, same shape.

  Example:
    >>> from_float8(jnp.array([1.0], jnp.float8_e4m3fn))
    Array([56], dtype=uint8)
  """
  dtype = checks.dtype_of(x, "x")
  if dtype not in _BY_DTYPE or dtype.itemsize * 8 != _BY_DTYPE[dtype].bits:
    raise TypeError(f"x must be an array of a float8 dtype ({', '.join(sorted(_VIEWABLE))}) "
                    f"(got {dtype})")
  return lax.bitcast_convert_type(jnp.asarray(x), jnp.uint8)
