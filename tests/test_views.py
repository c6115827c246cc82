"""as_float8 / from_float8: bitcasts between codes and jax.numpy float8 arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests.conftest import NAMED_8BIT, ids


@pytest.mark.parametrize("fmt", NAMED_8BIT, ids=ids)
def test_views_round_trip_every_code(fmt):
  codes = jnp.arange(256, dtype=jnp.uint8)
  view = fp8jax.as_float8(codes, fmt)
  assert view.dtype == fmt.dtype
  np.testing.assert_array_equal(np.asarray(view).view(np.uint8), np.asarray(codes))
  np.testing.assert_array_equal(np.asarray(fp8jax.from_float8(view)), np.asarray(codes))


def test_views_feed_xla_float8_ops():
  a = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16)), jnp.bfloat16)
  b = jnp.asarray(np.random.default_rng(1).normal(size=(16, 4)), jnp.bfloat16)
  fa = fp8jax.as_float8(fp8jax.encode(a, "e4m3fn"), "e4m3fn")
  fb = fp8jax.as_float8(fp8jax.encode(b, "e4m3fn"), "e4m3fn")
  got = jax.lax.dot_general(fa, fb, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  da = fp8jax.decode(fp8jax.encode(a, "e4m3fn"), "e4m3fn", jnp.float32)
  db = fp8jax.decode(fp8jax.encode(b, "e4m3fn"), "e4m3fn", jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(da @ db), rtol=1e-6, atol=1e-6)


def test_views_work_under_jit():
  codes = jnp.arange(256, dtype=jnp.uint8)
  f = jax.jit(lambda c: fp8jax.from_float8(fp8jax.as_float8(c, "e5m2")))
  np.testing.assert_array_equal(np.asarray(f(codes)), np.asarray(codes))
