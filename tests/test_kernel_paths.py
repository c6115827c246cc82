"""The kernel's shortcuts, bit for bit against the general routes they bypass.

`kernel.convert(..., pow2=e)` (MX blocks) moves exponents in the input's
lanes; its reference is the same kernel's float32 route, dividing by 2^-e,
whose exactness the scaling tests establish against the definition. Float32
to bfloat16 is one add on the bits; its reference is ml_dtypes. Codes times a
float32 scale (dequantize) multiply in float32 hardware; the references are
NumPy's exact float64 product cast to float32 (gradual underflow) and then to
the target (ml_dtypes, NumPy), and the kernel's integer product.
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


def _scales() -> np.ndarray:
  """Float32 scales over the whole range: the specials, float32's subnormals,
  both sides of the lift at 2^-64 and of 2^-126, and random ones of every
  exponent and sign."""
  rng = np.random.default_rng(3)
  special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 448.0 / 3, 2.0**-149,
             3 * 2.0**-149, 2.0**-127, -(2.0**-127) * 1.5, 2.0**-126, 2.0**-117, 2.0**-65,
             np.nextafter(np.float32(2.0**-64), np.float32(0)), 2.0**-64, 2.0**-63, 2.0**100,
             2.0**127, np.finfo(np.float32).max, -np.finfo(np.float32).max]
  bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32)
  tiny = rng.integers(1, 1 << 23, 500, dtype=np.uint32) | (rng.integers(0, 2, 500, dtype=np.uint32) << 31)
  return np.concatenate([np.array(special, np.float32), bits.view(np.float32), tiny.view(np.float32)])


def _product(src: layout.BitLayout, scales: np.ndarray, dtype) -> np.ndarray:
  """decode(code) * scale by the definition: the float64 product is exact
  (at most 7 by 24 significant bits), cast to float32 with gradual underflow,
  then to dtype; NaN as the kernel writes it (canonical, the input's sign for
  a NaN code, else the sign of the product)."""
  codes = np.arange(1 << src.bits)
  values = np.array([src.value(int(c)) for c in codes])
  negative = (codes >> (src.bits - 1)) & 1 if src.signed else np.zeros_like(codes)
  with np.errstate(invalid="ignore", over="ignore"):
    prod = (values[:, None] * scales.astype(np.float64)[None, :]).astype(np.float32)
  out = prod.astype(dtype)
  width = np.dtype(dtype).itemsize * 8
  word = np.dtype(f"uint{width}")
  bits = out.view(word).copy()
  nan_input = np.isnan(values)[:, None]
  sign = np.where(nan_input, negative[:, None], negative[:, None] ^ np.signbit(scales)[None, :])
  quiet = layout.FLOAT_LAYOUTS[np.dtype(dtype)].nan_code
  canonical = (sign.astype(np.uint64) << (width - 1)) | quiet
  return np.where(np.isnan(prod), canonical.astype(word), bits)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "e8m0fnu"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32],
                         ids=["bf16", "f16", "f32"])
def test_scaled_decode_is_the_float32_product(fmt, dtype, monkeypatch):
  src = FORMATS[fmt].bit_layout
  dst = layout.FLOAT_LAYOUTS[np.dtype(dtype)]
  assert kernel.hardware_product(src, dst, "nearest", "ieee")
  scales = _scales()
  codes = jnp.arange(1 << src.bits, dtype=jnp.uint32)[:, None]

  def run():
    return np.asarray(jax.jit(lambda c, s: kernel.convert(
        c, src, dst, rounding="nearest", overflow="ieee", scale=s))(codes, jnp.asarray(scales)))

  fast = run()
  want = _product(src, scales, np.dtype(dtype))
  bad = np.argwhere(fast != want)
  assert bad.size == 0, [(int(c), float(scales[s]), hex(int(fast[c, s])), hex(int(want[c, s])))
                         for c, s in bad[:5]]
  monkeypatch.setattr(kernel, "hardware_product", lambda *a: False)
  np.testing.assert_array_equal(run(), fast)
