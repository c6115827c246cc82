"""Decoding with one scale by significands (`fp8jax.quant.significands`) against the kernel.

Every code of every element format, times scales across float32's range (and
the ones the check refuses: zero, negative, infinite, NaN, subnormal, and
scales whose products overflow or turn subnormal), must give the values of
`codec.decode_array(..., scale=s)` bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from fp8jax.core import codec, formats
from fp8jax.quant import scaled, significands
from tests.conftest import dtype_id
from tests.test_thresholds import _scales

F = formats.FORMATS
_FORMATS = [name for name, f in F.items() if significands.supported(f.bit_layout, jnp.bfloat16)]


@functools.cache
def _pair(fmt, dtype):
  src = F[fmt].bit_layout
  selected = jax.jit(lambda c, s: significands.decode_scaled(c, src, dtype, s))
  multiplied = jax.jit(lambda c, s: codec.decode_array(c, src, dtype, scale=s))
  return selected, multiplied


@pytest.mark.parametrize("fmt", _FORMATS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=dtype_id)
def test_every_code_and_scale(dtype, fmt):
  selected, multiplied = _pair(fmt, dtype)
  # Every code, with junk above a narrow format's bits (the kernel ignores them).
  codes = jnp.arange(256, dtype=jnp.uint8)
  for s in np.concatenate([_scales(3), np.float32([2.0**-133, 2.0**100, 65504.0, 2.0**-24])]):
    want = np.asarray(multiplied(codes, s)).view(np.uint16)
    got = np.asarray(selected(codes, s)).view(np.uint16)
    bad = np.flatnonzero(want != got)
    assert bad.size == 0, (f"scale {s!r}: {bad.size} values differ, first code {bad[0]:#04x}: "
                           f"{got[bad[0]]:#06x} instead of {want[bad[0]]:#06x}")


def test_supported_outputs_and_codes():
  assert significands.supported(F["e4m3fn"].bit_layout, jnp.bfloat16)
  assert significands.supported(F["e2m1fn"].bit_layout, jnp.float16)
  assert not significands.supported(F["e4m3fn"].bit_layout, jnp.float32)
  assert not significands.supported(F["e8m0fnu"].bit_layout, jnp.bfloat16)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e2m1fn"])
def test_large_per_tensor_dequantize_takes_this_path_and_matches_the_kernel(fmt):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((512, 512)) * 100, jnp.bfloat16)
  assert x.size >= scaled._ONE_SCALE_MIN_SIZE
  q = fp8jax.quantize(x, fmt)
  want = codec.decode_array(q.bits, F[fmt].bit_layout, jnp.bfloat16, scale=q.scale)
  np.testing.assert_array_equal(np.asarray(fp8jax.dequantize(q, jnp.bfloat16)).view(np.uint16),
                                np.asarray(want).view(np.uint16))
