"""A slow, obviously-correct reference, written from the formats' definitions.

It shares no code with fp8jax: it lists every code's value from the sign,
exponent and mantissa fields, then rounds an input to the nearest listed
value (or the next one toward zero) with float64 comparisons, which are
exact for every value involved (bfloat16/float16/float32 inputs, 8-bit
format values and the midpoints between them).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
  """A format written out by hand: field widths, bias, special values."""

  e: int
  m: int
  bias: int
  convention: str  # "ieee", "fn", "fnuz", "finite" or "e8m0"

  @property
  def bits(self) -> int:
    return self.e + self.m + (0 if self.convention == "e8m0" else 1)


def code_value(spec: Spec, code: int) -> float:
  """The value of one code by the format's definition."""
  if spec.convention == "e8m0":
    return float("nan") if code == 0xFF else 2.0 ** (code - spec.bias)
  sign = -1.0 if code >> (spec.bits - 1) & 1 else 1.0
  exp = code >> spec.m & ((1 << spec.e) - 1)
  frac = code & ((1 << spec.m) - 1)
  top = (1 << spec.e) - 1
  if spec.convention == "ieee" and exp == top:
    return sign * float("inf") if frac == 0 else float("nan")
  if spec.convention == "fn" and exp == top and frac == (1 << spec.m) - 1:
    return float("nan")
  if spec.convention == "fnuz" and code == 1 << (spec.bits - 1):
    return float("nan")
  if exp == 0:
    return sign * frac * 2.0 ** (1 - spec.bias - spec.m)
  return sign * (1 + frac / 2**spec.m) * 2.0 ** (exp - spec.bias)


def positive_grid(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
  """Finite non-negative values in increasing order, and their codes."""
  codes = [c for c in range(1 << spec.bits)]
  vals = [code_value(spec, c) for c in codes]
  pairs = sorted((v, c) for v, c in zip(vals, codes, strict=False) if np.isfinite(v) and v >= 0
                 and not (v == 0 and c != 0))
  return np.array([v for v, _ in pairs]), np.array([c for _, c in pairs])


def next_above_max(spec: Spec) -> float:
  """The value the code after the largest finite one would have, were the
  exponent and mantissa fields to continue: the target of rounding up past
  the largest value."""
  _, codes = positive_grid(spec)
  nxt = int(codes[-1]) + 1
  exp, frac = nxt >> spec.m, nxt & ((1 << spec.m) - 1)
  if spec.convention != "e8m0" and exp == 0:
    return frac * 2.0 ** (1 - spec.bias - spec.m)
  return (1 + frac / 2**spec.m) * 2.0 ** (exp - spec.bias)


def _nan_code(spec: Spec, negative: bool) -> int:
  if spec.convention == "ieee":
    return (((1 << spec.e) - 1) << spec.m | 1 << (spec.m - 1)) | (negative << (spec.bits - 1))
  if spec.convention == "fn":
    return (1 << (spec.bits - 1)) - 1 | (negative << (spec.bits - 1))
  if spec.convention == "fnuz":
    return 1 << (spec.bits - 1)
  if spec.convention == "e8m0":
    return 0xFF
  # No NaN: ml_dtypes' choice, the zero of the opposite sign.
  return (not negative) << (spec.bits - 1)


def encode(x: np.ndarray, spec: Spec, rounding: str = "nearest",
           overflow: str = "saturate") -> np.ndarray:
  """Encodes each element of x (any float dtype) by the definition."""
  x = np.asarray(x).astype(np.float64).ravel()
  vals, codes = positive_grid(spec)
  vmax, cmax = vals[-1], codes[-1]
  has_inf = spec.convention == "ieee"
  inf_code = ((1 << spec.e) - 1) << spec.m if has_inf else None
  beyond = next_above_max(spec)
  out = np.zeros(x.shape, np.int64)
  for i, v in enumerate(x):
    neg = bool(np.signbit(v))
    a = abs(v)
    if np.isnan(v):
      out[i] = _nan_code(spec, neg)
      continue
    if spec.convention == "e8m0" and (neg or a == 0):
      out[i] = 0xFF
      continue
    over = False
    if np.isinf(a):
      kind = "inf"
    else:
      kind = "finite"
      j = np.searchsorted(vals, a, side="right") - 1  # vals[j] <= a
      if j == len(vals) - 1 and a == vmax:
        mag = cmax
      elif rounding == "toward_zero":
        if j < 0:
          mag = codes[0]
        elif j == len(vals) - 1:
          mag, over = cmax, a >= beyond
        else:
          mag = codes[j]
      else:
        lo = vals[j] if j >= 0 else 0.0
        hi = vals[j + 1] if j + 1 < len(vals) else beyond
        hi_code = codes[j + 1] if j + 1 < len(vals) else cmax + 1
        lo_code = codes[j] if j >= 0 else 0
        if spec.convention == "e8m0":
          mag = _e8m0_nearest(a, lo, hi, lo_code, hi_code, spec)
        else:
          mid = (lo + hi) / 2
          up = a > mid or (a == mid and hi_code % 2 == 0)
          mag = hi_code if up else lo_code
        over = mag > cmax
    mag = _apply_overflow(spec, kind, over, mag, rounding, overflow, cmax, inf_code)
    if mag == "nan":
      out[i] = _nan_code(spec, neg)
      continue
    if spec.convention == "fnuz" and mag == 0:
      neg = False
    out[i] = mag | ((neg and spec.convention != "e8m0") << (spec.bits - 1))
  return out.astype(np.uint8)


def _e8m0_nearest(a, lo, hi, lo_code, hi_code, spec):
  # ml_dtypes' rounding for E8M0: ties go up; below 2^-126 the smallest code
  # acts like a zero of a subnormal step, so (2^-127, 2^-126) rounds up.
  smallest = 2.0 ** -spec.bias
  if a <= smallest:
    return 0
  if a < 2 * smallest:
    return 1
  return hi_code if a >= (lo + hi) / 2 else lo_code


def _apply_overflow(spec, kind, over, mag, rounding, overflow, cmax, inf_code):
  has_nan = spec.convention != "finite"
  if not has_nan:
    return cmax if (kind == "inf" or over) else mag
  if kind == "inf":
    if overflow == "satfinite":
      return cmax
    if inf_code is not None:
      return inf_code
    return cmax if overflow == "saturate" else "nan"
  if not over:
    return mag
  if overflow in ("saturate", "satfinite") or rounding == "toward_zero":
    return cmax
  return inf_code if inf_code is not None else "nan"
