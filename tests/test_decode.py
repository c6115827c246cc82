"""decode: every code to its exact value; encode(decode(c)) == c."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import reference
from tests.conftest import ALL_FORMATS, DTYPES, NAMED, dtype_id, every_code, ids, spec


def _bits_of(a: np.ndarray) -> np.ndarray:
  a = np.asarray(a)
  return a.view(np.uint32 if a.dtype.itemsize == 4 else np.uint16)


@pytest.mark.parametrize("fmt", NAMED, ids=ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_every_code_decodes_to_ml_dtypes_value(fmt, dtype):
  codes = every_code(fmt)
  with np.errstate(over="ignore"):
    want = codes.view(fmt.dtype).astype(dtype)
  got = np.asarray(fp8jax.decode(jnp.asarray(codes), fmt, dtype))
  assert got.dtype == np.dtype(dtype)
  nan = np.isnan(want.astype(np.float32))
  np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
  np.testing.assert_array_equal(_bits_of(got)[~nan], _bits_of(want)[~nan])


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=ids)
def test_every_code_decodes_to_its_defined_value_in_float32(fmt):
  codes = every_code(fmt)
  want = np.array([reference.code_value(spec(fmt), int(c)) for c in codes])
  got = np.asarray(fp8jax.decode(jnp.asarray(codes), fmt, jnp.float32)).astype(np.float64)
  np.testing.assert_array_equal(got, want)  # NaN == NaN here
  np.testing.assert_array_equal(np.signbit(got[want == 0]), np.signbit(want[want == 0]))


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_encode_of_decode_is_the_identity_on_non_nan_codes(fmt, dtype):
  codes = every_code(fmt)
  values = fp8jax.decode(jnp.asarray(codes), fmt, dtype)
  exact = np.array([reference.code_value(spec(fmt), int(c)) for c in codes])
  keep = ~np.isnan(exact) & (np.asarray(values).astype(np.float64) == exact)
  if dtype != jnp.float16:
    assert keep.sum() == (~np.isnan(exact)).sum()  # bf16 and f32 hold every value
  back = np.asarray(fp8jax.encode(values, fmt, overflow="ieee"))
  np.testing.assert_array_equal(back[keep], codes[keep])


def test_decode_reads_only_the_low_bits_of_sub_byte_formats():
  codes = jnp.arange(256, dtype=jnp.uint8)
  got = fp8jax.decode(codes, "e2m1fn", jnp.float32)
  np.testing.assert_array_equal(np.asarray(got).reshape(16, 16), np.tile(np.asarray(
      fp8jax.decode(codes[:16], "e2m1fn", jnp.float32)), (16, 1)))


def test_int8_codes_decode_like_uint8():
  codes = np.arange(256, dtype=np.uint8)
  a = fp8jax.decode(jnp.asarray(codes.view(np.int8)), "e5m2", jnp.float32)
  b = fp8jax.decode(jnp.asarray(codes), "e5m2", jnp.float32)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
