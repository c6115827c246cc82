"""Formats: derived properties against ml_dtypes and DESIGN.md's numbers."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from tests.conftest import NAMED, ids


@pytest.mark.parametrize("fmt", NAMED, ids=ids)
def test_properties_match_ml_dtypes_finfo(fmt):
  info = ml_dtypes.finfo(fmt.dtype)
  assert fmt.max == float(info.max)
  assert fmt.min_normal == float(info.smallest_normal)
  assert fmt.min_subnormal == float(info.smallest_subnormal)
  assert fmt.eps == float(info.eps)
  assert fmt.bits == info.bits
  assert fmt.dtype == np.dtype(fmt.dtype)


@pytest.mark.parametrize("name,max_,max_code,nan,inf", [
    ("e4m3fn", 448, 0x7E, 0x7F, None),
    ("e4m3", 240, 0x77, 0x7C, 0x78),
    ("e4m3fnuz", 240, 0x7F, 0x80, None),
    ("e5m2", 57344, 0x7B, 0x7E, 0x7C),
    ("e5m2fnuz", 57344, 0x7F, 0x80, None),
    ("e4m3b11fnuz", 30, 0x7F, 0x80, None),
    ("e3m4", 15.5, 0x6F, 0x78, 0x70),
    ("e2m3fn", 7.5, 0x1F, None, None),
    ("e3m2fn", 28, 0x1F, None, None),
    ("e2m1fn", 6, 0x7, None, None),
    ("e8m0fnu", 2.0**127, 0xFE, 0xFF, None),
])
def test_numbers_to_know(name, max_, max_code, nan, inf):
  f = fp8jax.FORMATS[name]
  assert (f.max, f.max_code, f.nan_code, f.inf_code) == (max_, max_code, nan, inf)
  if inf is not None:
    assert f.neg_inf_code == inf | 0x80
  assert f.value(max_code) == max_


def test_e8m0_range():
  f = fp8jax.FORMATS["e8m0fnu"]
  assert (f.min_normal, f.min_subnormal, f.max) == (2.0**-127, 2.0**-127, 2.0**127)
  assert not f.signed and f.bits == 8


@pytest.mark.parametrize("fmt", NAMED, ids=ids)
def test_get_format_accepts_names_formats_and_dtypes(fmt):
  assert fp8jax.get_format(fmt.name) is fmt
  assert fp8jax.get_format(fmt.name.upper()) is fmt
  assert fp8jax.get_format(fmt) is fmt
  assert fp8jax.get_format(fmt.dtype) is fmt
  assert fp8jax.get_format(fmt.dtype.type) is fmt
  assert fp8jax.get_format(fmt.dtype.name) is fmt


def test_jnp_dtypes_resolve():
  assert fp8jax.get_format(jnp.float8_e4m3fn).name == "e4m3fn"
  assert fp8jax.get_format(jnp.float8_e5m2fnuz).name == "e5m2fnuz"


def test_formats_are_hashable_values():
  a = fp8jax.Format(exponent_bits=4, mantissa_bits=3, bias=7, convention="fn")
  assert a == fp8jax.FORMATS["e4m3fn"] and hash(a) == hash(fp8jax.FORMATS["e4m3fn"])
  assert a.name == "e4m3fn" and a.dtype == np.dtype(ml_dtypes.float8_e4m3fn)
  b = fp8jax.Format(exponent_bits=4, mantissa_bits=3, bias=9, convention="fn")
  assert b != a and b.dtype is None and b.name == "e4m3b9fn"
  assert b.max == 112.0 and b.min_subnormal == 2.0**-11
  with pytest.raises(dataclasses.FrozenInstanceError):
    b.bias = 3


def test_custom_formats_from_n_mantissa():
  e6m1 = fp8jax.format_for_mantissa(1)
  assert (e6m1.max, e6m1.min_subnormal, e6m1.inf_code) == (1.5 * 2.0**31, 2.0**-31, 0x7E)
  e1m6 = fp8jax.format_for_mantissa(6)
  # One exponent bit: field 0 holds the subnormals m/32, field 1 inf and NaN.
  assert e1m6.max == 63 / 32 and e1m6.min_subnormal == 1 / 32 and e1m6.inf_code == 0x40
