"""Properties over random shapes and values, with hypothesis."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests.conftest import ALL_FORMATS, DTYPES, dtype_id, ids

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
# One length for the value properties, so that each case compiles once.
LENGTH = 512


_ONE_LENGTH = st.just((LENGTH,))


def _arrays(dtype, shapes=_ONE_LENGTH):
  bits = np.dtype(np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint16)
  return hnp.arrays(bits, shapes).map(lambda a: a.view(dtype))


def _in_range(x: np.ndarray, fmt) -> np.ndarray:
  a = np.abs(x.astype(np.float64))
  return np.isfinite(a) & (a <= fmt.max)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@SETTINGS
@given(data=st.data())
def test_monotonic_idempotent_and_within_half_an_ulp(fmt, dtype, data):
  x = data.draw(_arrays(dtype))
  ok = _in_range(x, fmt) & ((x >= 0) | fmt.signed)
  if fmt.convention == "e8m0":
    ok &= np.abs(x.astype(np.float64)) >= 2 * fmt.min_normal  # its bottom binade rounds oddly
  x = np.where(ok, x, np.zeros((), x.dtype)) if fmt.convention != "e8m0" else \
      np.where(ok, x, np.ones((), x.dtype))
  xs = jnp.asarray(x)
  codes = fp8jax.encode(xs, fmt)
  y = np.asarray(fp8jax.decode(codes, fmt, jnp.float32)).astype(np.float64)
  xf = x.astype(np.float64).ravel()
  y = y.ravel()
  # Monotonic: sorting the inputs sorts the outputs.
  order = np.argsort(xf, kind="stable")
  assert np.all(np.diff(y[order]) >= 0)
  # Idempotent: re-encoding the decoded value gives the same code.
  again = fp8jax.encode(fp8jax.decode(codes, fmt, jnp.float32), fmt)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(codes))
  # Within half a step of the format's grid around the input.
  ulp = _ulp(np.abs(xf), fmt)
  assert np.all(np.abs(y - xf) <= ulp / 2)
  tz = np.asarray(fp8jax.decode(fp8jax.encode(xs, fmt, rounding="toward_zero"), fmt,
                                jnp.float32)).astype(np.float64).ravel()
  assert np.all(np.abs(tz - xf) < np.maximum(ulp, 0) + (xf == 0))
  assert np.all(np.abs(tz) <= np.abs(xf))


def _ulp(a: np.ndarray, fmt) -> np.ndarray:
  """The spacing of the format's grid at magnitude a (subnormal spacing below)."""
  with np.errstate(divide="ignore"):
    e = np.floor(np.log2(np.where(a > 0, a, 1)))
  e = np.maximum(e, np.log2(fmt.min_normal))
  return np.exp2(e - fmt.mantissa_bits)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e2m1fn"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(data=st.data())
def test_same_bits_eagerly_under_jit_and_vmap(fmt, dtype, data):
  shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
  x = jnp.asarray(data.draw(_arrays(dtype, shapes)))
  eager = np.asarray(fp8jax.encode(x, fmt, overflow="ieee"))
  jitted = np.asarray(jax.jit(lambda a: fp8jax.encode(a, fmt, overflow="ieee"))(x))
  np.testing.assert_array_equal(jitted, eager)
  assert eager.shape == x.shape and eager.dtype == np.uint8
  if x.ndim:
    mapped = np.asarray(jax.vmap(lambda a: fp8jax.encode(a, fmt, overflow="ieee"))(x))
    np.testing.assert_array_equal(mapped, eager)
  flat = np.asarray(fp8jax.encode(x.reshape(-1), fmt, overflow="ieee"))
  np.testing.assert_array_equal(flat, eager.reshape(-1))
  for i in range(min(x.size, 3)):  # 0-d arrays element by element
    one = fp8jax.encode(x.reshape(-1)[i], fmt, overflow="ieee")
    assert one.shape == () and int(one) == eager.reshape(-1)[i]
  dec = fp8jax.decode(jnp.asarray(eager), fmt, dtype)
  dec_jit = jax.jit(lambda c: fp8jax.decode(c, fmt, dtype))(jnp.asarray(eager))
  np.testing.assert_array_equal(np.asarray(dec).reshape(-1).view(np.uint8),
                                np.asarray(dec_jit).reshape(-1).view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_empty_and_zero_d(dtype):
  for shape in [(0,), (3, 0), ()]:
    x = jnp.zeros(shape, dtype)
    c = fp8jax.encode(x, "e4m3fn")
    assert c.shape == shape and c.dtype == jnp.uint8
    d = fp8jax.decode(c, "e4m3fn", dtype)
    assert d.shape == shape and d.dtype == dtype
  key = jax.random.key(0)
  assert fp8jax.encode(jnp.zeros((0, 4), dtype), "e5m2", rounding="stochastic",
                       key=key).shape == (0, 4)


def test_stochastic_under_jit_and_vmap_matches_eager():
  x = jnp.asarray(np.linspace(-5, 5, 64).reshape(4, 16), jnp.float32)
  key = jax.random.key(11)
  eager = fp8jax.encode(x, "e4m3fn", rounding="stochastic", key=key)
  jitted = jax.jit(lambda a, k: fp8jax.encode(a, "e4m3fn", rounding="stochastic", key=k))(x, key)
  np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
  keys = jax.random.split(key, 4)
  mapped = jax.vmap(lambda a, k: fp8jax.encode(a, "e4m3fn", rounding="stochastic", key=k))(x, keys)
  for i in range(4):
    row = fp8jax.encode(x[i], "e4m3fn", rounding="stochastic", key=keys[i])
    np.testing.assert_array_equal(np.asarray(mapped[i]), np.asarray(row))
