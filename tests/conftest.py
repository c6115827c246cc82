"""Shared inputs: every bfloat16 / float16 bit pattern, every code, the formats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from tests import reference

NAMED = list(fp8jax.FORMATS.values())
NAMED_8BIT = [f for f in NAMED if f.bits == 8]
CUSTOM = [
    fp8jax.format_for_mantissa(1),  # E6M1, bias 31
    fp8jax.format_for_mantissa(5),  # E2M5, bias 1
    fp8jax.format_for_mantissa(6),  # E1M6, bias 0: subnormals only
    fp8jax.Format(exponent_bits=4, mantissa_bits=3, bias=9, convention="fn"),
    fp8jax.Format(exponent_bits=5, mantissa_bits=2, bias=13, convention="ieee"),
    fp8jax.Format(exponent_bits=3, mantissa_bits=4, bias=5, convention="fnuz"),
    fp8jax.Format(exponent_bits=6, mantissa_bits=1, bias=40, convention="finite"),
]
ALL_FORMATS = NAMED + CUSTOM
SOURCES = [jnp.bfloat16, jnp.float16]
DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]
ROUNDINGS = ["nearest", "toward_zero"]
OVERFLOWS = ["saturate", "satfinite", "ieee"]


def ids(f: fp8jax.Format) -> str:
  return f.name


def dtype_id(d) -> str:
  return np.dtype(d).name


def every(dtype) -> np.ndarray:
  """All 65,536 values of a 16-bit float dtype, in bit-pattern order."""
  return np.arange(1 << 16, dtype=np.uint16).view(dtype)


def every_code(fmt: fp8jax.Format) -> np.ndarray:
  return np.arange(1 << fmt.bits, dtype=np.uint8)


def spec(fmt: fp8jax.Format) -> reference.Spec:
  return reference.Spec(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.convention)


def ml_codes(x: np.ndarray, fmt: fp8jax.Format) -> np.ndarray:
  """ml_dtypes' conversion (round to nearest even, IEEE overflow), as codes."""
  with np.errstate(invalid="ignore", over="ignore"):
    return np.asarray(x).astype(fmt.dtype).view(np.uint8)


def ml_values(codes: np.ndarray, fmt: fp8jax.Format) -> np.ndarray:
  return np.asarray(codes, np.uint8).view(fmt.dtype).astype(np.float64)


def assert_codes_equal(got, want, fmt: fp8jax.Format, x=None) -> None:
  """Bit equality, except that NaN codes need only be NaN with the right sign."""
  got = np.asarray(got, np.uint8).ravel()
  want = np.asarray(want, np.uint8).ravel()
  bad = got != want
  if fmt.has_nan and bad.any():
    is_nan = np.isnan([reference.code_value(spec(fmt), c) for c in range(1 << fmt.bits)])
    nan_got, nan_want = is_nan[got], is_nan[want]
    same_sign = (got >> (fmt.bits - 1)) == (want >> (fmt.bits - 1))
    bad &= ~(nan_got & nan_want & same_sign)
  if bad.any():
    idx = np.nonzero(bad)[0][:8]
    shown = "" if x is None else f" inputs {np.asarray(x).ravel()[idx]!r}"
    raise AssertionError(f"{fmt.name}: {bad.sum()} of {bad.size} codes differ; at {idx}:"
                         f"{shown} got {[hex(int(c)) for c in got[idx]]} "
                         f"want {[hex(int(c)) for c in want[idx]]}")


def clip_then_convert(x: np.ndarray, fmt: fp8jax.Format, keep_inf: bool) -> np.ndarray:
  """The reference for the saturating policies: clip to +-max, then convert."""
  with np.errstate(invalid="ignore"):
    wide = x.astype(np.float64)
    clipped = np.clip(wide, -fmt.max, fmt.max)
    if keep_inf and fmt.has_inf:
      clipped = np.where(np.isinf(wide), wide, clipped)
  return ml_codes(clipped.astype(np.float32), fmt)


@pytest.fixture(autouse=True, scope="session")
def _no_x64():
  assert not jax.config.jax_enable_x64
  yield


BF16 = np.dtype(ml_dtypes.bfloat16)
