"""encode: bit-exact against ml_dtypes and against the definition."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import reference
from tests.conftest import (
  ALL_FORMATS,
  CUSTOM,
  NAMED,
  OVERFLOWS,
  ROUNDINGS,
  SOURCES,
  assert_codes_equal,
  clip_then_convert,
  dtype_id,
  every,
  ids,
  ml_codes,
  spec,
)


@pytest.mark.parametrize("fmt", NAMED, ids=ids)
@pytest.mark.parametrize("src", SOURCES, ids=dtype_id)
def test_matches_ml_dtypes_on_every_16bit_input(fmt, src):
  x = every(src)
  got = fp8jax.encode(jnp.asarray(x), fmt, overflow="ieee")
  assert got.dtype == jnp.uint8 and got.shape == x.shape
  assert_codes_equal(got, ml_codes(x, fmt), fmt, x)


def _boundaries(fmt: fp8jax.Format) -> np.ndarray:
  """Every value of the format, every midpoint between neighbours, the
  midpoint past the largest value, and the float32 neighbours of all those."""
  vals, _ = reference.positive_grid(spec(fmt))
  mids = (vals[:-1] + vals[1:]) / 2
  top = reference.next_above_max(spec(fmt))
  beyond = [(vals[-1] + top) / 2, top]
  points = np.concatenate([vals, mids, beyond, vals / 2, vals / 4]).astype(np.float32)
  near = [points, np.nextafter(points, np.float32(np.inf)), np.nextafter(points, np.float32(0))]
  pos = np.concatenate(near)
  return np.concatenate([pos, -pos])


def _f32_specials() -> np.ndarray:
  bits = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
                   0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x00000001,
                   0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF], np.uint32)
  return bits.view(np.float32)


def f32_inputs(fmt: fp8jax.Format, n: int = 10_000_000, seed: int = 0) -> np.ndarray:
  """At least n float32 inputs: boundaries and specials, then random values
  spread over the format's range and random bit patterns."""
  rng = np.random.default_rng(seed)
  fixed = np.concatenate([_boundaries(fmt), _f32_specials()])
  rest = n - fixed.size
  raw = rng.integers(0, 1 << 32, rest // 2, dtype=np.uint64).astype(np.uint32).view(np.float32)
  lo, hi = np.log2(fmt.min_subnormal) - 3, np.log2(fmt.max) + 3
  mags = np.exp2(rng.uniform(lo, hi, rest - raw.size)).astype(np.float32)
  ranged = mags * rng.choice(np.array([-1, 1], np.float32), mags.size)
  return np.concatenate([fixed, raw, ranged])


@pytest.mark.parametrize("fmt", NAMED, ids=ids)
def test_matches_ml_dtypes_on_ten_million_float32_inputs(fmt):
  x = f32_inputs(fmt)
  assert x.size >= 10_000_000
  got = fp8jax.encode(jnp.asarray(x), fmt, overflow="ieee")
  assert_codes_equal(got, ml_codes(x, fmt), fmt, x)


@pytest.mark.parametrize("fmt", NAMED, ids=ids)
@pytest.mark.parametrize("policy", ["saturate", "satfinite"])
@pytest.mark.parametrize("src", SOURCES + [np.float32], ids=dtype_id)
def test_saturating_policies_equal_clip_then_convert(fmt, policy, src):
  if src == np.float32:
    x = f32_inputs(fmt, n=1_000_000, seed=1)
  else:
    x = every(src)
  got = fp8jax.encode(jnp.asarray(x), fmt, overflow=policy)
  want = clip_then_convert(x, fmt, keep_inf=policy == "saturate")
  assert_codes_equal(got, want, fmt, x)


# The special-value rows of DESIGN.md's overflow table, code by code:
# (format, policy) -> codes for [+inf, -inf, NaN, -NaN, 1e6, -1e6].
SPECIAL_ROWS = {
    ("e4m3fn", "saturate"): [0x7E, 0xFE, 0x7F, 0xFF, 0x7E, 0xFE],
    ("e4m3fn", "satfinite"): [0x7E, 0xFE, 0x7F, 0xFF, 0x7E, 0xFE],
    ("e4m3fn", "ieee"): [0x7F, 0xFF, 0x7F, 0xFF, 0x7F, 0xFF],
    ("e5m2", "saturate"): [0x7C, 0xFC, 0x7E, 0xFE, 0x7B, 0xFB],
    ("e5m2", "satfinite"): [0x7B, 0xFB, 0x7E, 0xFE, 0x7B, 0xFB],
    ("e5m2", "ieee"): [0x7C, 0xFC, 0x7E, 0xFE, 0x7C, 0xFC],
    ("e4m3", "saturate"): [0x78, 0xF8, 0x7C, 0xFC, 0x77, 0xF7],
    ("e4m3", "satfinite"): [0x77, 0xF7, 0x7C, 0xFC, 0x77, 0xF7],
    ("e4m3", "ieee"): [0x78, 0xF8, 0x7C, 0xFC, 0x78, 0xF8],
    ("e4m3fnuz", "saturate"): [0x7F, 0xFF, 0x80, 0x80, 0x7F, 0xFF],
    ("e4m3fnuz", "satfinite"): [0x7F, 0xFF, 0x80, 0x80, 0x7F, 0xFF],
    ("e4m3fnuz", "ieee"): [0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
    ("e5m2fnuz", "saturate"): [0x7F, 0xFF, 0x80, 0x80, 0x7F, 0xFF],
    ("e5m2fnuz", "ieee"): [0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
    ("e3m4", "saturate"): [0x70, 0xF0, 0x78, 0xF8, 0x6F, 0xEF],
    ("e3m4", "satfinite"): [0x6F, 0xEF, 0x78, 0xF8, 0x6F, 0xEF],
    ("e8m0fnu", "saturate"): [0xFE, 0xFF, 0xFF, 0xFF, 0x93, 0xFF],
    ("e8m0fnu", "ieee"): [0xFF, 0xFF, 0xFF, 0xFF, 0x93, 0xFF],
    ("e2m3fn", "saturate"): [0x1F, 0x3F, 0x20, 0x00, 0x1F, 0x3F],
    ("e2m3fn", "ieee"): [0x1F, 0x3F, 0x20, 0x00, 0x1F, 0x3F],
    ("e3m2fn", "satfinite"): [0x1F, 0x3F, 0x20, 0x00, 0x1F, 0x3F],
    ("e2m1fn", "ieee"): [0x7, 0xF, 0x8, 0x0, 0x7, 0xF],
}


@pytest.mark.parametrize("name,policy", sorted(SPECIAL_ROWS))
@pytest.mark.parametrize("src", SOURCES + [np.float32], ids=dtype_id)
def test_special_values_follow_the_design_table(name, policy, src):
  x = np.array([np.inf, -np.inf, np.nan, -np.nan, 1e6, -1e6], np.float32).astype(src)
  if src == jnp.float16:
    x[4:] = [65504.0, -65504.0]  # float16's max; 1e6 is inf there
  want = list(SPECIAL_ROWS[name, policy])
  if name == "e8m0fnu" and src == jnp.float16:
    want[4] = 0x8F  # 65504 rounds to 2^16
  got = np.asarray(fp8jax.encode(jnp.asarray(x), name, overflow=policy))
  assert [hex(int(c)) for c in got] == [hex(c) for c in want]


@pytest.mark.parametrize("fmt", [fp8jax.FORMATS["e4m3fn"], fp8jax.FORMATS["e5m2"]], ids=ids)
def test_values_just_past_max_round_before_overflowing(fmt):
  """Under "ieee", E4M3FN maps 464 (a tie) to 448 and anything above to NaN."""
  vals, _ = reference.positive_grid(spec(fmt))
  tie = np.float32((vals[-1] + reference.next_above_max(spec(fmt))) / 2)
  below, above = np.nextafter(tie, np.float32(0)), np.nextafter(tie, np.float32(1e9))
  x = jnp.asarray(np.array([below, tie, above], np.float32))
  got = np.asarray(fp8jax.encode(x, fmt, overflow="ieee"))
  want_tie = fmt.max_code if fmt.max_code % 2 == 0 else (fmt.inf_code or fmt.nan_code)
  assert got[0] == fmt.max_code
  assert got[1] == want_tie
  assert got[2] == (fmt.inf_code if fmt.has_inf else fmt.nan_code)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=ids)
@pytest.mark.parametrize("src", SOURCES, ids=dtype_id)
def test_toward_zero_matches_definition_on_every_16bit_input(fmt, src):
  x = every(src)
  got = fp8jax.encode(jnp.asarray(x), fmt, rounding="toward_zero", overflow="saturate")
  assert_codes_equal(got, reference.encode(x, spec(fmt), "toward_zero", "saturate"), fmt, x)


@pytest.mark.parametrize("fmt", CUSTOM, ids=ids)
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_custom_formats_match_definition_on_every_bfloat16(fmt, rounding, overflow):
  x = every(np.dtype(jnp.bfloat16))
  got = fp8jax.encode(jnp.asarray(x), fmt, rounding=rounding, overflow=overflow)
  assert_codes_equal(got, reference.encode(x, spec(fmt), rounding, overflow), fmt, x)


@pytest.mark.parametrize("fmt", CUSTOM, ids=ids)
def test_custom_formats_match_definition_on_every_float16(fmt):
  x = every(np.float16)
  got = fp8jax.encode(jnp.asarray(x), fmt, overflow="ieee")
  assert_codes_equal(got, reference.encode(x, spec(fmt), "nearest", "ieee"), fmt, x)


@pytest.mark.parametrize("fmt", NAMED, ids=ids)
@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_named_formats_match_definition_under_every_policy(fmt, overflow):
  x = every(np.dtype(jnp.bfloat16))
  got = fp8jax.encode(jnp.asarray(x), fmt, overflow=overflow)
  assert_codes_equal(got, reference.encode(x, spec(fmt), "nearest", overflow), fmt, x)


def test_toward_zero_with_ieee_overflow_carries_to_the_largest_finite():
  x = jnp.asarray([1e5, -1e5, np.inf, -np.inf], jnp.float32)
  assert list(np.asarray(fp8jax.encode(x, "e4m3fn", rounding="toward_zero", overflow="ieee"))) \
      == [0x7E, 0xFE, 0x7F, 0xFF]
  assert list(np.asarray(fp8jax.encode(x, "e5m2", rounding="toward_zero", overflow="ieee"))) \
      == [0x7B, 0xFB, 0x7C, 0xFC]
