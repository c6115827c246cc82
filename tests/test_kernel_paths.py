"""The kernel's shortcuts, bit for bit against the general routes they bypass.

`kernel.convert(..., pow2=e)` (MX blocks) moves exponents in the input's
lanes; its reference is the same kernel's float32 route, dividing by 2^-e,
whose exactness the scaling tests establish against the definition. Float32
to bfloat16 is one add on the bits; its reference is ml_dtypes.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from fp8jax.core import codec, kernel, layout
from fp8jax.core.formats import FORMATS
from tests.conftest import every

TARGETS = ("e4m3fn", "e5m2", "e2m3fn", "e3m2fn", "e2m1fn")
# The ends of an MX divisor's range (2^-127 .. 2^127), 2^-126, and between;
# then the sentinels for an infinite and a NaN divisor.
EXPONENTS = (-127, -126, -100, -9, -1, 0, 1, 6, 64, 126, 127, kernel.POW2_ZERO, kernel.POW2_NAN)




def _encode(x, fmt, e, rounding, key=None):
  dst = FORMATS[fmt].bit_layout
  fast = codec.encode_array(x, dst, rounding=rounding, overflow="saturate", key=key, pow2=e)
  if isinstance(e, int) and e in (kernel.POW2_ZERO, kernel.POW2_NAN):
    divisor = jnp.float32(np.inf if e == kernel.POW2_ZERO else np.nan)
  else:
    divisor = jnp.asarray(np.exp2(-np.asarray(e, np.float64)).astype(np.float32))
  slow = codec.encode_array(x, dst, rounding=rounding, overflow="saturate", key=key,
                            scale=divisor, divide=True)
  if not isinstance(e, int) or e not in (kernel.POW2_ZERO, kernel.POW2_NAN):
    # Without sentinels, the promise of a normal scale changes nothing.
    promised = codec.encode_array(x, dst, rounding=rounding, overflow="saturate", key=key,
                                  pow2=e, normal_scale=True)
    np.testing.assert_array_equal(np.asarray(promised), np.asarray(fast))
    if np.all(np.abs(np.asarray(e)) <= 126):  # 2^-127 is not a normal float32
      normal = codec.encode_array(x, dst, rounding=rounding, overflow="saturate", key=key,
                                  scale=divisor, divide=True, normal_scale=True)
      np.testing.assert_array_equal(np.asarray(normal), np.asarray(slow))
  return fast, slow


@pytest.mark.parametrize("fmt", TARGETS)
@pytest.mark.parametrize("src", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("rounding", ["nearest", "toward_zero"])
def test_every_16bit_input_and_exponent(fmt, src, rounding):
  x = jnp.asarray(every(np.dtype(src)))
  for e in EXPONENTS:
    fast, slow = _encode(x, fmt, e, rounding)
    bad = np.flatnonzero(np.asarray(fast) != np.asarray(slow))
    assert bad.size == 0, (e, np.asarray(x)[bad[:5]], np.asarray(fast)[bad[:5]],
                           np.asarray(slow)[bad[:5]])


def test_float32_inputs_and_stochastic_rounding():
  rng = np.random.default_rng(0)
  bits = rng.integers(0, 2**32, 1 << 16, dtype=np.uint64).astype(np.uint32)
  x = lax.bitcast_convert_type(jnp.asarray(bits), jnp.float32)
  e = rng.integers(-127, 128, x.shape).astype(np.int32)
  key = jax.random.key(1)
  for rounding in ("nearest", "stochastic"):
    fast, slow = _encode(x, "e4m3fn", e, rounding, key if rounding == "stochastic" else None)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(slow))


@pytest.mark.parametrize("fmt", TARGETS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32], ids=["bf16", "f16", "f32"])
def test_decode_every_code_and_exponent(fmt, dtype):
  src = FORMATS[fmt].bit_layout
  codes = jnp.arange(256, dtype=jnp.uint8) & jnp.uint8((1 << src.bits) - 1)
  for e in EXPONENTS[:-2] + (kernel.POW2_NAN,):
    scale = jnp.float32(np.nan) if e == kernel.POW2_NAN else jnp.asarray(np.float32(2.0**e))
    fast = codec.decode_array(codes, src, np.dtype(dtype), pow2=e)
    slow = codec.decode_array(codes, src, np.dtype(dtype), scale=scale)
    np.testing.assert_array_equal(np.asarray(fast).view(np.uint8), np.asarray(slow).view(np.uint8),
                                  err_msg=str(e))


def test_float32_to_bfloat16_is_ml_dtypes_rounding():
  rng = np.random.default_rng(2)
  # Random bit patterns (every exponent, subnormals, NaN payloads), ties, and the edges.
  bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
  ties = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
  edges = np.array([0, 0x80000000, 1, 0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x7F800000,
                    0xFF800000, 0x7FC00000, 0xFFFFFFFF, 0x00807FFF, 0x00008000], np.uint32)
  bits = np.concatenate([bits, ties, edges])
  x = bits.view(np.float32)
  got = np.asarray(kernel.convert(jnp.asarray(bits), layout.FLOAT32, layout.BFLOAT16,
                                  rounding="nearest", overflow="ieee")).astype(np.uint16)
  want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
  nan = np.isnan(x)
  np.testing.assert_array_equal(got[~nan], want[~nan])
  # NaN: the canonical quiet NaN of its sign, as the general route writes it.
  np.testing.assert_array_equal(got[nan], np.where(bits[nan] >> 31, 0xFFC0, 0x7FC0))
