"""Encoding by thresholds (`fp8jax.quant.thresholds`) against the kernel's division.

Every 16-bit pattern, divided by scales across float32's whole range (and
the ones it refuses: zero, negative, infinite, NaN, subnormal), must give
the codes of `codec.encode_array(..., divide=True)` bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fp8jax.core import codec, formats, kernel, layout
from fp8jax.quant import thresholds
from tests.conftest import dtype_id

F = formats.FORMATS
_SPECIAL = [0.37, 1.0, 448.0, 2.0**-20, 2.0**20, 2.0**-126, 2.0**-120, 2.0**-117, 2.0**-116,
            1.5 * 2.0**-113, 2.0**100, 2.0**127, 3.4028235e38, 0.0, -2.0, float("inf"),
            float("nan"), 2.0**-130, 1e-45]


def _scales(seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  random = rng.uniform(1, 2, 8) * 2.0 ** rng.integers(-140, 128, 8).astype(np.float64)
  return np.concatenate([np.float32(_SPECIAL), random.astype(np.float32)])


@functools.cache
def _pair(dtype, fmt, rounding, overflow):
  dst = F[fmt].bit_layout
  counted = jax.jit(lambda x, s: thresholds.encode_divided(x, dst, s, rounding=rounding,
                                                           overflow=overflow))
  divided = jax.jit(lambda x, s: codec.encode_array(x, dst, rounding=rounding,
                                                    overflow=overflow, scale=s, divide=True))
  return counted, divided


def _every(dtype) -> jax.Array:
  return jnp.asarray(np.arange(1 << 16, dtype=np.uint16).view(dtype))


def _check(dtype, fmt, rounding, overflow, seed=0):
  counted, divided = _pair(dtype, fmt, rounding, overflow)
  x = _every(dtype)
  for s in _scales(seed):
    want, got = np.asarray(divided(x, s)), np.asarray(counted(x, s))
    bad = np.flatnonzero(want != got)
    assert bad.size == 0, (f"scale {s!r}: {bad.size} codes differ, first pattern "
                           f"{bad[0]:#06x}: {got[bad[0]]:#04x} instead of {want[bad[0]]:#04x}")


_FORMATS = [name for name, f in F.items()
            if thresholds.supported(layout.BFLOAT16, f.bit_layout, "nearest")]


@pytest.mark.parametrize("fmt", _FORMATS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=dtype_id)
def test_every_pattern_and_scale_nearest(dtype, fmt):
  _check(dtype, fmt, kernel.NEAREST, kernel.SATURATE)


@pytest.mark.parametrize("overflow", ["satfinite", "ieee"])
@pytest.mark.parametrize("rounding", ["nearest", "toward_zero"])
@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e4m3fnuz"])
def test_every_pattern_and_scale_by_policy(fmt, rounding, overflow):
  _check(jnp.bfloat16, fmt, rounding, overflow, seed=1)


def test_supported_only_where_counting_is_exact():
  bf16, f32 = layout.BFLOAT16, layout.FLOAT32
  assert thresholds.supported(bf16, F["e4m3fn"].bit_layout, "nearest")
  assert not thresholds.supported(f32, F["e4m3fn"].bit_layout, "nearest")
  assert not thresholds.supported(bf16, F["e4m3fn"].bit_layout, "stochastic")
  assert not thresholds.supported(bf16, F["e8m0fnu"].bit_layout, "nearest")

