"""Two 4-bit codes per byte, low nibble first."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fp8jax.core import checks

_NIBBLE = 4


def pack_fp4(codes: ArrayLike) -> jax.Array:
  """Packs 4-bit codes two per byte along the last axis, low nibble first.

  An odd last axis is padded with one zero code.

  Args:
    codes: uint8 codes of a 4-bit format (only the low 4 bits are read).

  Returns:
    uint8 array whose last axis is ceil(n / 2).

  Example:
    >>> pack_fp4(jnp.array([1, 2, 3], jnp.uint8))
    Array([33,  3], dtype=uint8)
  """
  checks.code_array(codes, "codes")
  if codes.ndim == 0:
    raise ValueError("codes must have at least one axis to pack along")
  return pack_codes(codes)


@jax.jit
def pack_codes(codes: jax.Array) -> jax.Array:
  codes = codes.astype(jnp.uint8) & jnp.uint8(0xF)
  n = codes.shape[-1]
  if n % 2:
    codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
  pairs = codes.reshape(codes.shape[:-1] + (codes.shape[-1] // 2, 2))
  return pairs[..., 0] | (pairs[..., 1] << _NIBBLE)


def unpack_fp4(packed: ArrayLike, n: int | None = None) -> jax.Array:
  """Inverse of `pack_fp4`: one code per byte, the last axis cut to `n`.

  Args:
    packed: uint8 array from `pack_fp4`.
    n: length of the unpacked last axis (default: twice the packed one).

  Returns:
    uint8 codes in the low 4 bits.

  Example:
    >>> unpack_fp4(jnp.array([33, 3], jnp.uint8), 3)
    Array([1, 2, 3], dtype=uint8)
  """
  checks.code_array(packed, "packed")
  packed = jnp.asarray(packed).astype(jnp.uint8)
  full = 2 * packed.shape[-1]
  if n is None:
    n = full
  if not full - 1 <= n <= full:
    raise ValueError(f"n must be {full - 1} or {full} for a packed last axis of "
                     f"{packed.shape[-1]} (got {n})")
  return unpack_codes(packed, n)


@functools.partial(jax.jit, static_argnums=1)
def unpack_codes(packed: jax.Array, n: int) -> jax.Array:
  lo = packed & jnp.uint8(0xF)
  hi = packed >> _NIBBLE
  both = jnp.stack([lo, hi], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))
  return both[..., :n]
