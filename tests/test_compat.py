"""The original API: names, n_mantissa mapping, scaling, out=."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from tests.conftest import assert_codes_equal, clip_then_convert, dtype_id, every


@pytest.mark.parametrize("n,name", [(2, "e5m2"), (3, "e4m3fn"), (4, "e3m4")])
def test_n_mantissa_maps_to_the_named_formats(n, name):
  assert fp8jax.format_for_mantissa(n) is fp8jax.FORMATS[name]
  x = jnp.asarray(every(ml_dtypes.bfloat16))
  np.testing.assert_array_equal(np.asarray(fp8jax.round_to_fp8_represented_as_int8(x, n)),
                                np.asarray(fp8jax.encode(x, name)))


@pytest.mark.parametrize("n", [1, 5, 6])
def test_other_n_mantissa_are_ieee_style_with_standard_bias(n):
  f = fp8jax.format_for_mantissa(n)
  e = 7 - n
  fields = (f.exponent_bits, f.mantissa_bits, f.bias, f.convention)
  assert fields == (e, n, 2 ** (e - 1) - 1, "ieee")


@pytest.mark.parametrize("scale", [2.0, 0.375, 3.3, 448 / 3.7, 1e-5, -1.7])
@pytest.mark.parametrize("src", [ml_dtypes.bfloat16, np.float16], ids=dtype_id)
def test_scaling_factor_multiplies_in_float32_before_encoding(scale, src):
  x = every(src)
  fmt = fp8jax.FORMATS["e4m3fn"]
  with np.errstate(over="ignore", invalid="ignore"):
    p = x.astype(np.float32) * np.float32(scale)
  # Where the float32 product is subnormal fp8jax keeps full precision
  # instead; every such product rounds to a zero code either way.
  want = clip_then_convert(p, fmt, keep_inf=True)
  got = np.asarray(fp8jax.round_to_fp8_represented_as_int8(jnp.asarray(x), 3,
                                                           scaling_factor=scale))
  assert_codes_equal(got, want, fmt, x)


def test_scaling_does_not_flush_subnormal_inputs():
  # 2^-130 and 2^-133 are bfloat16 subnormals; times 2^127 they are 2^-3, 2^-6.
  x = jnp.asarray([2.0**-130, -(2.0**-133)], jnp.bfloat16)
  got = fp8jax.round_to_fp8_represented_as_int8(x, 3, scaling_factor=2.0**127)
  assert list(np.asarray(got)) == [0x20, 0x88]


def test_scaled_products_overflowing_float32_are_infinite():
  x = jnp.asarray([3e38, 1.0], jnp.float32)
  got = fp8jax.round_to_fp8_represented_as_int8(x, 2, scaling_factor=4.0)
  assert list(np.asarray(got)) == [0x7C, 0x44]  # inf stays inf under "saturate"; 4.0


@pytest.mark.parametrize("target", [jnp.bfloat16, jnp.float16, jnp.float32], ids=dtype_id)
@pytest.mark.parametrize("scale", [1.0, 2.0, 0.3, 1000.0])
def test_undo_divides_in_float32_then_rounds(target, scale):
  codes = np.arange(256, dtype=np.uint8)
  vals = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
  with np.errstate(over="ignore"):
    want = (vals / np.float32(scale)).astype(target)
  got = np.asarray(fp8jax.undo_int8_fp8(jnp.asarray(codes), 3, target, scaling_factor=scale))
  nan = np.isnan(want.astype(np.float32))
  np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
  np.testing.assert_array_equal(got[~nan].view(np.uint8), want[~nan].view(np.uint8))


def test_round_trip_with_per_channel_scales():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)) * [[1], [10], [100], [1000]],
                  jnp.bfloat16)
  s = 448.0 / np.abs(np.asarray(x, np.float32)).max(axis=1, keepdims=True)
  bits = fp8jax.round_to_fp8_represented_as_int8(x, 3, scaling_factor=s)
  back = fp8jax.undo_int8_fp8(bits, 3, jnp.float32, scaling_factor=s)
  rel = np.abs(np.asarray(back) - np.asarray(x, np.float32)) / np.abs(np.asarray(x, np.float32))
  assert rel.max() <= 2.0**-4 + 2.0**-8  # half an e4m3 step, plus bf16 input rounding slack


def test_out_is_donated_and_returned():
  x = jnp.asarray(np.linspace(-10, 10, 1000), jnp.bfloat16)
  out = jnp.zeros(1000, jnp.uint8)
  ptr = out.unsafe_buffer_pointer()
  got = fp8jax.round_to_fp8_represented_as_int8(x, 3, out=out)
  assert got.unsafe_buffer_pointer() == ptr
  assert out.is_deleted()
  np.testing.assert_array_equal(np.asarray(got), np.asarray(fp8jax.encode(x, "e4m3fn")))
  dec_out = jnp.zeros(1000, jnp.float32)
  back = fp8jax.undo_int8_fp8(got, 3, jnp.float32, out=dec_out)
  assert dec_out.is_deleted()
  np.testing.assert_array_equal(np.asarray(back), np.asarray(fp8jax.decode(got, "e4m3fn",
                                                                            jnp.float32)))


def test_out_inside_jit_is_checked_and_the_result_returned():
  x = jnp.ones((3,), jnp.float32)
  f = jax.jit(lambda a, o: fp8jax.round_to_fp8_represented_as_int8(a, 3, out=o))
  np.testing.assert_array_equal(np.asarray(f(x, jnp.zeros(3, jnp.uint8))), [0x38] * 3)


@pytest.mark.parametrize("bad_out", [jnp.zeros(4, jnp.uint8), jnp.zeros(3, jnp.int8)])
def test_mismatched_out_raises_and_is_untouched(bad_out):
  with pytest.raises(ValueError, match="out must have shape"):
    fp8jax.round_to_fp8_represented_as_int8(jnp.ones(3, jnp.float32), 3, out=bad_out)
  assert not bad_out.is_deleted()
  np.testing.assert_array_equal(np.asarray(bad_out), 0)


def test_format_keyword_overrides_n_mantissa():
  x = jnp.asarray([1.0, -300.0], jnp.float32)
  got = fp8jax.round_to_fp8_represented_as_int8(x, None, format="e4m3fnuz")
  np.testing.assert_array_equal(np.asarray(got), np.asarray(fp8jax.encode(x, "e4m3fnuz")))
  same = fp8jax.round_to_fp8_represented_as_int8(x, 3, format="e4m3fnuz")
  np.testing.assert_array_equal(np.asarray(same), np.asarray(got))
  with pytest.raises(ValueError, match="n_mantissa=2 disagrees with format='e4m3fnuz'"):
    fp8jax.round_to_fp8_represented_as_int8(x, 2, format="e4m3fnuz")
  back = fp8jax.undo_int8_fp8(got, None, jnp.float32, format="e4m3fnuz")
  np.testing.assert_array_equal(np.asarray(back), [1.0, -240.0])


def test_stochastic_rounding_through_the_original_api():
  x = jnp.asarray(np.full(10_000, 1 + 1 / 32), jnp.float32)  # a quarter of the way up
  bits = fp8jax.round_to_fp8_represented_as_int8(x, 3, rounding="stochastic",
                                                 key=jax.random.key(0))
  frac_up = float((np.asarray(bits) == 0x39).mean())
  assert abs(frac_up - 0.25) <= 5 * np.sqrt(0.25 * 0.75 / 10_000)


def test_int32_to_bfloat16_reads_the_low_half():
  words = np.arange(1 << 16, dtype=np.int32) | np.int32(0x5A5A0000)
  got = np.asarray(fp8jax.int32_to_bfloat16(jnp.asarray(words)))
  np.testing.assert_array_equal(got.view(np.uint16), np.arange(1 << 16, dtype=np.uint16))
  neg = fp8jax.int32_to_bfloat16(jnp.asarray([-1, -65536], jnp.int32))
  np.testing.assert_array_equal(np.asarray(neg).view(np.uint16), [0xFFFF, 0x0000])
  assert fp8jax.int32_to_bfloat16(jnp.asarray(0x3F80, jnp.int32)).dtype == jnp.bfloat16
