"""Bit layouts of binary floating-point formats and the codes they derive.

A layout is the pure description the integer kernel works on: exponent bits,
mantissa bits, bias and the special-value convention. Public 8-bit-and-narrower
formats (`fp8jax.Format`) and the wide source types (bfloat16, float16,
float32) are both layouts, so one kernel converts in either direction.
Every derived code (largest finite, NaN, infinity) is computed here and
nowhere else.
"""

from __future__ import annotations

import dataclasses
import typing

import ml_dtypes
import numpy as np

IEEE = "ieee"
FN = "fn"
FNUZ = "fnuz"
FINITE = "finite"
E8M0 = "e8m0"
CONVENTIONS = (IEEE, FN, FNUZ, FINITE, E8M0)


class BitLayout(typing.NamedTuple):
  """Exponent bits, mantissa bits, bias and special-value convention."""

  exponent_bits: int
  mantissa_bits: int
  bias: int
  convention: str

  @property
  def signed(self) -> bool:
    return self.convention != E8M0

  @property
  def bits(self) -> int:
    return int(self.signed) + self.exponent_bits + self.mantissa_bits

  @property
  def sign_mask(self) -> int:
    return (1 << (self.bits - 1)) if self.signed else 0

  @property
  def magnitude_mask(self) -> int:
    return (1 << (self.exponent_bits + self.mantissa_bits)) - 1

  @property
  def has_subnormals(self) -> bool:
    # E8M0 has no mantissa and no zero: exponent field 0 is the normal 2^-bias.
    return self.convention != E8M0

  @property
  def min_exponent(self) -> int:
    """Unbiased exponent of the smallest normal value."""
    return (1 if self.has_subnormals else 0) - self.bias

  @property
  def has_inf(self) -> bool:
    return self.convention == IEEE

  @property
  def has_nan(self) -> bool:
    return self.convention != FINITE

  @property
  def max_magnitude(self) -> int:
    """Magnitude bits (sign cleared) of the largest finite value."""
    top = self.magnitude_mask
    if self.convention == IEEE:
      return top - (1 << self.mantissa_bits)
    if self.convention in (FN, E8M0):
      return top - 1
    return top  # FNUZ and FINITE use every magnitude for numbers.

  @property
  def inf_magnitude(self) -> int | None:
    if self.convention != IEEE:
      return None
    return self.magnitude_mask - ((1 << self.mantissa_bits) - 1)

  @property
  def nan_code(self) -> int | None:
    """The canonical positive NaN code (FNUZ: the only NaN, 0x80)."""
    if self.convention == IEEE:
      # Quiet NaN: top mantissa bit set, as ml_dtypes and IEEE 754 produce.
      return self.inf_magnitude | (1 << (self.mantissa_bits - 1))
    if self.convention == FN:
      return self.magnitude_mask
    if self.convention == FNUZ:
      return self.sign_mask
    if self.convention == E8M0:
      return (1 << self.bits) - 1
    return None

  def value(self, code: int) -> float:
    """The exact value of a code, as a Python float (NaN for NaN codes)."""
    code &= (1 << self.bits) - 1
    if self.is_nan(code):
      return float("nan")
    sign = -1.0 if code & self.sign_mask else 1.0
    mag = code & self.magnitude_mask
    if self.has_inf and mag == self.inf_magnitude:
      return sign * float("inf")
    exp = mag >> self.mantissa_bits
    frac = mag & ((1 << self.mantissa_bits) - 1)
    if exp == 0 and self.has_subnormals:
      return sign * frac * 2.0 ** (1 - self.bias - self.mantissa_bits)
    full = frac | (1 << self.mantissa_bits)
    return sign * full * 2.0 ** (exp - self.bias - self.mantissa_bits)

  def is_nan(self, code: int) -> bool:
    code &= (1 << self.bits) - 1
    if self.convention == IEEE:
      return (code & self.magnitude_mask) > self.inf_magnitude
    if self.convention == FN:
      return (code & self.magnitude_mask) == self.nan_code
    if self.convention in (FNUZ, E8M0):
      return code == self.nan_code
    return False


BFLOAT16 = BitLayout(8, 7, 127, IEEE)
FLOAT16 = BitLayout(5, 10, 15, IEEE)
FLOAT32 = BitLayout(8, 23, 127, IEEE)


@dataclasses.dataclass(frozen=True)
class FloatType:
  """A wide float type fp8jax converts from and to, with its names elsewhere.

  Attributes:
    short: the command line's name ("bf16", "f16", "f32").
    dtype: the NumPy (ml_dtypes) dtype.
    layout: its bit layout.
    safetensors: its safetensors dtype tag.
    torch: the torch dtype name (`torch.<name>`).
  """

  short: str
  dtype: np.dtype
  layout: BitLayout
  safetensors: str
  torch: str


FLOATS = (
    FloatType("bf16", np.dtype(ml_dtypes.bfloat16), BFLOAT16, "BF16", "bfloat16"),
    FloatType("f16", np.dtype(np.float16), FLOAT16, "F16", "float16"),
    FloatType("f32", np.dtype(np.float32), FLOAT32, "F32", "float32"),
)
"""The input and output float types: the one table of their names."""

FLOAT_LAYOUTS = {f.dtype: f.layout for f in FLOATS}
FLOAT_NAMES = "bfloat16, float16 or float32"
