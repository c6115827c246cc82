"""Stochastic rounding: unbiased on the target grid, two neighbours, reproducible."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import reference
from tests.conftest import CUSTOM, DTYPES, dtype_id, ids, spec

N_KEYS = 20_000
FORMATS = [fp8jax.FORMATS[n] for n in ("e4m3fn", "e5m2", "e4m3fnuz", "e3m4", "e2m1fn", "e3m2fn")]
FORMATS += [CUSTOM[0], CUSTOM[3]]


def _between(fmt: fp8jax.Format, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Inputs strictly between neighbouring values (normal and subnormal, both
  signs) that `dtype` represents exactly, with their neighbours."""
  vals, _ = reference.positive_grid(spec(fmt))
  picks = [0, 1, 2, len(vals) // 3, len(vals) // 2, len(vals) - 2]  # 0..sub..normal..top
  xs, los, his = [], [], []
  for i in picks:
    lo, hi = vals[i], vals[i + 1]
    for frac in (0.25, 0.5, 0.8125):
      x = np.array(lo + frac * (hi - lo)).astype(dtype)
      if lo < float(x) < hi:
        for sgn in (1, -1):
          xs.append(sgn * x.astype(np.float64))
          lo_s, hi_s = (lo, hi) if sgn > 0 else (-hi, -lo)
          los.append(lo_s)
          his.append(hi_s)
  return np.array(xs).astype(dtype), np.array(los), np.array(his)




@pytest.mark.parametrize("fmt", FORMATS, ids=ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_mean_is_the_input_within_five_standard_errors(fmt, dtype):
  x, lo, hi = _between(fmt, dtype)
  assert x.size >= 12
  keys = jax.random.split(jax.random.key(1234), N_KEYS)
  codes = jax.vmap(lambda k: fp8jax.encode(jnp.asarray(x), fmt, rounding="stochastic",
                                           key=k))(keys)
  vals = np.asarray(fp8jax.decode(codes, fmt, jnp.float32)).astype(np.float64)
  # Every result is one of the two neighbours.
  assert np.all((vals == lo) | (vals == hi))
  xf = x.astype(np.float64)
  p = (xf - lo) / (hi - lo)
  se = (hi - lo) * np.sqrt(p * (1 - p) / N_KEYS)
  err = np.abs(vals.mean(axis=0) - xf)
  assert np.all(err <= 5 * se), (x[err > 5 * se], err[err > 5 * se], se[err > 5 * se])


def test_the_same_key_gives_the_same_bits_and_another_key_other_bits():
  x = jnp.asarray(np.linspace(-3, 3, 4096), jnp.bfloat16)
  a = fp8jax.encode(x, "e4m3fn", rounding="stochastic", key=jax.random.key(7))
  b = fp8jax.encode(x, "e4m3fn", rounding="stochastic", key=jax.random.key(7))
  c = fp8jax.encode(x, "e4m3fn", rounding="stochastic", key=jax.random.key(8))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (np.asarray(a) != np.asarray(c)).any()
  raw = fp8jax.encode(x, "e4m3fn", rounding="stochastic", key=jax.random.PRNGKey(7))
  np.testing.assert_array_equal(np.asarray(raw), np.asarray(a))


def test_representable_values_are_never_moved():
  codes = jnp.arange(256, dtype=jnp.uint8)
  vals = fp8jax.decode(codes, "e5m2", jnp.float32)
  finite = np.isfinite(np.asarray(vals))
  for seed in range(5):
    got = fp8jax.encode(vals, "e5m2", rounding="stochastic", key=jax.random.key(seed),
                        overflow="ieee")
    np.testing.assert_array_equal(np.asarray(got)[finite], np.asarray(codes)[finite])


def test_probability_of_rounding_up_is_the_fraction_of_the_gap():
  # 1 + k/16 lies between e4m3fn's 1 and 1.125: P(up) = k/2.
  x = jnp.asarray([1 + 1 / 16], jnp.float32)
  n = 200_000
  codes = fp8jax.encode(jnp.broadcast_to(x, (n,)), "e4m3fn", rounding="stochastic",
                        key=jax.random.key(3))
  ups = int((np.asarray(codes) == 0x39).sum())
  # Binomial(n, 1/2): 5 standard deviations.
  assert abs(ups - n / 2) <= 5 * np.sqrt(n / 4)


def _up_events(key, n: int = 1 << 18) -> np.ndarray:
  """Whether each of n copies of 1 + 1/16 (P(up) = 1/2 in e4m3fn) rounded up."""
  x = jnp.full((n,), 1 + 1 / 16, jnp.float32)
  return np.asarray(fp8jax.encode(x, "e4m3fn", rounding="stochastic", key=key)) == 0x39


def _assert_fair_agreement(a: np.ndarray, b: np.ndarray) -> None:
  # Independent fair coins agree with probability 1/2: Binomial(n, 1/2), 5 sd.
  n = a.size
  agree = int((a == b).sum())
  assert abs(agree - n / 2) <= 5 * np.sqrt(n / 4), (agree, n)


@pytest.mark.parametrize("lag", [1, 2, 3, 7, 8, 16, 64, 255, 256, 4096, 65536])
def test_elements_at_any_distance_round_independently(lag):
  # The random words come from a hash of the element's index: neighbours,
  # and elements a power of two apart, must not share or mirror them.
  up = _up_events(jax.random.key(11))
  _assert_fair_agreement(up[:-lag], up[lag:])


@pytest.mark.parametrize("shift", [0, 1, 1024])
def test_two_keys_give_unrelated_streams(shift):
  # Neither the same positions nor shifted runs of two keys' words agree
  # more often than chance.
  a = _up_events(jax.random.key(5))
  b = _up_events(jax.random.key(6))
  _assert_fair_agreement(a[shift:], b[:b.size - shift])


def test_split_keys_of_one_parent_are_unrelated():
  parent = jax.random.key(0)
  k1, k2 = jax.random.split(parent)
  _assert_fair_agreement(_up_events(k1), _up_events(k2))


def test_arrays_beyond_two_to_the_32_elements_stay_32_bit_and_tell_rows_apart(monkeypatch):
  import warnings

  from fp8jax.core import randbits
  # Tracing a 2^33-element cast must not need 64-bit integers (JAX would
  # silently truncate them to 32 bits).
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = jax.eval_shape(lambda k: randbits.bits(k, (1 << 17, 1 << 16)), jax.random.key(0))
  assert out.dtype == jnp.uint32
  # The same branch on a small array, with the threshold lowered: the second
  # word is one value per row and differs between rows.
  monkeypatch.setattr(randbits, "_WORD", 16)
  lo, hi = randbits._flat_index((8, 4))
  hi = np.asarray(hi)
  assert np.all(hi == hi[:, :1]) and len(set(hi[:, 0])) == 8
  np.testing.assert_array_equal(np.asarray(lo).ravel(), np.arange(32))
