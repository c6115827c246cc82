"""Random bits for stochastic rounding, computed inside the encode kernel.

`jax.random.bits` runs threefry over a counter array: about twenty rounds of
integer work per 64 bits, which on CPU costs many times more than the cast it
feeds. Stochastic rounding needs only well-mixed, reproducible bits, one
32-bit word per element, so fp8jax derives them from the element's flat index
with a keyed integer hash. XLA fuses the hash into the cast, so random bits
cost no extra pass over memory, and they depend only on (key, index): the
same under `jit`, `vmap` and any sharding of the array.

The hash is Wellons' `lowbias32` finalizer (two multiply-xorshift rounds,
chosen by search for the lowest avalanche bias among such hashes) applied to
a keyed affine map of the index, with words drawn once from the key by
threefry:
  h = mix(index * (k0 | 1) + k1)
The affine map is a bijection that differs from key to key in both slope
and offset, so two keys do not share a shifted or permuted run of words
(as `mix(index + k)` or `mix(index ^ k)` would). Arrays of more than 2^32
elements also mix in a hash of each element's leading indices.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import jax
from jax import lax
import jax.numpy as jnp

_u32 = jnp.uint32
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
_WORD = 1 << 32


def _mix(h: jax.Array) -> jax.Array:
  h = h ^ (h >> _u32(16))
  h = h * _u32(_MUL1)
  h = h ^ (h >> _u32(15))
  h = h * _u32(_MUL2)
  return h ^ (h >> _u32(16))


def _flat_index(shape: Sequence[int]) -> tuple[jax.Array, jax.Array | None]:
  """The row-major flat index of every element mod 2^32, and a word that
  tells apart elements whose flat indices differ by a multiple of 2^32.

  The second word is None for arrays of at most 2^32 elements. Above that it
  hashes the indices along all but the last axis: elements with the same
  low word lie in different rows, since a row is shorter than 2^32.
  """
  if any(n > _WORD for n in shape):
    raise ValueError(f"stochastic rounding needs every axis below 2^32 elements (got shape "
                     f"{tuple(shape)}); reshape x first")
  lo = jnp.zeros(shape, _u32)
  stride = 1
  for d in reversed(range(len(shape))):
    lo = lo + lax.broadcasted_iota(_u32, shape, d) * _u32(stride % _WORD)
    stride *= shape[d]
  if math.prod(shape) <= _WORD:
    return lo, None
  hi = jnp.zeros(shape, _u32)
  for d in range(len(shape) - 1):
    hi = _mix(hi ^ lax.broadcasted_iota(_u32, shape, d))
  return lo, hi


def bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Uniform uint32 words, one per element of `shape`, from `key`.

  Args:
    key: a jax.random key (typed, or a raw uint32[2] PRNGKey).
    shape: the shape of the result.

  Returns:
    A uint32 array of `shape`; the same key and shape give the same words.
  """
  k = jax.random.bits(key, (3,), _u32)
  lo, hi = _flat_index(tuple(shape))
  h = lo * (k[0] | _u32(1)) + k[1]
  if hi is not None:
    h = _mix(h ^ _mix(hi + k[2]))
  return _mix(h)
