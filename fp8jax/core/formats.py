"""Small floating-point formats as values: `Format`, `FORMATS`, `get_format`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_dtypes
import numpy as np

from fp8jax.core import layout
from fp8jax.core.layout import BitLayout

CONVENTIONS = layout.CONVENTIONS


@dataclasses.dataclass(frozen=True)
class Format:
  """A binary floating-point format of at most 8 bits, stored in a uint8.

  A format is a hashable value, so it can be a static argument of `jax.jit`.
  Two formats with the same bits are equal whatever their names.

  Attributes:
    exponent_bits: width of the exponent field.
    mantissa_bits: width of the mantissa (fraction) field.
    bias: exponent bias.
    convention: special values, one of "ieee" (infinities and NaNs in the top
      exponent), "fn" (no infinities; NaN is all ones), "fnuz" (no
      infinities, no negative zero; NaN is 0x80), "finite" (no specials at
      all) or "e8m0" (unsigned powers of two, NaN 0xFF).
    name: display name; derived from the fields when left empty.

  Example:
    >>> Format(exponent_bits=4, mantissa_bits=3, bias=9, convention="fn").max
    112.0
  """

  exponent_bits: int
  mantissa_bits: int
  bias: int
  convention: str = "ieee"
  name: str = dataclasses.field(default="", compare=False)

  def __post_init__(self):
    _check_fields(self.exponent_bits, self.mantissa_bits, self.bias, self.convention)
    if not self.name:
      object.__setattr__(self, "name", _default_name(self.bit_layout))

  @property
  def bit_layout(self) -> BitLayout:
    return BitLayout(self.exponent_bits, self.mantissa_bits, self.bias, self.convention)

  @property
  def bits(self) -> int:
    """Total width in bits: 8, or 6 and 4 for the MX sub-byte formats."""
    return self.bit_layout.bits

  @property
  def signed(self) -> bool:
    return self.bit_layout.signed

  @property
  def max(self) -> float:
    """The largest finite value."""
    return self.bit_layout.value(self.bit_layout.max_magnitude)

  @property
  def min_normal(self) -> float:
    """The smallest positive normal value."""
    return 2.0 ** self.bit_layout.min_exponent

  @property
  def min_subnormal(self) -> float:
    """The smallest positive value (min_normal where there are no subnormals)."""
    if not self.bit_layout.has_subnormals:
      return self.min_normal
    return 2.0 ** (self.bit_layout.min_exponent - self.mantissa_bits)

  @property
  def eps(self) -> float:
    """The gap between 1 and the next larger value, 2^-mantissa_bits."""
    return 2.0 ** -self.mantissa_bits

  @property
  def max_code(self) -> int:
    """The code of +max."""
    return self.bit_layout.max_magnitude

  @property
  def nan_code(self) -> int | None:
    """The canonical NaN code, or None for formats without NaN."""
    return self.bit_layout.nan_code

  @property
  def inf_code(self) -> int | None:
    """The code of +inf, or None for formats without infinities."""
    return self.bit_layout.inf_magnitude

  @property
  def neg_inf_code(self) -> int | None:
    """The code of -inf, or None for formats without infinities."""
    inf = self.bit_layout.inf_magnitude
    return None if inf is None else inf | self.bit_layout.sign_mask

  @property
  def has_inf(self) -> bool:
    return self.bit_layout.has_inf

  @property
  def has_nan(self) -> bool:
    return self.bit_layout.has_nan

  @property
  def has_negative_zero(self) -> bool:
    return self.convention in ("ieee", "fn", "finite")

  @property
  def dtype(self) -> np.dtype | None:
    """The matching ml_dtypes / jax.numpy dtype, or None if there is none."""
    name = _ML_DTYPES_NAMES.get(self)
    return None if name is None else np.dtype(getattr(ml_dtypes, name))

  def value(self, code: int) -> float:
    """The exact value of one code, as a Python float."""
    return self.bit_layout.value(code)

  def __repr__(self) -> str:
    return (f"Format({self.name!r}: e{self.exponent_bits}m{self.mantissa_bits}, "
            f"bias={self.bias}, convention={self.convention!r})")


def _check_fields(e: Any, m: Any, bias: Any, convention: Any) -> None:
  for arg, value in (("exponent_bits", e), ("mantissa_bits", m), ("bias", bias)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise TypeError(f"{arg} must be an int (got {type(value).__name__})")
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)} (got {convention!r})")
  if convention == "e8m0":
    if (e, m) != (8, 0):
      raise ValueError(f"convention='e8m0' needs exponent_bits=8, mantissa_bits=0 (got {e}, {m})")
  elif e < 1 or m < 0 or 1 + e + m > 8:
    raise ValueError("a signed format needs exponent_bits >= 1, mantissa_bits >= 0 and "
                     f"1 + exponent_bits + mantissa_bits <= 8 (got e{e}m{m})")
  if convention == "ieee" and m < 1:
    raise ValueError("convention='ieee' needs mantissa_bits >= 1 to tell infinity from NaN")
  layout = BitLayout(e, m, bias, convention)
  # Every value must be exact in float32, the widest decode target.
  low = layout.min_exponent - (m if layout.has_subnormals else 0)
  high = np.log2(layout.value(layout.max_magnitude)) if layout.max_magnitude else low
  if low < -149 or high >= 128:
    raise ValueError(f"bias={bias} puts e{e}m{m} values outside float32's range")


def _default_name(layout: BitLayout) -> str:
  # Only formats built without a name get here, after FORMATS exists.
  for name, fmt in FORMATS.items():
    if fmt.bit_layout == layout:
      return name
  e, m = layout.exponent_bits, layout.mantissa_bits
  return f"e{e}m{m}b{layout.bias}{'' if layout.convention == 'ieee' else layout.convention}"


@dataclasses.dataclass(frozen=True)
class ExternalNames:
  """What other libraries call a named format (None where they have no name for it).

  Attributes:
    ml_dtypes: the ml_dtypes / jax.numpy dtype name.
    torch: the torch dtype name (`torch.<name>`).
    safetensors: the safetensors dtype tag of a tensor stored in this format.
  """

  ml_dtypes: str
  torch: str | None = None
  safetensors: str | None = None


_NAMED = {
    # name: (exponent bits, mantissa bits, bias, convention), external names
    "e4m3fn": ((4, 3, 7, "fn"), ExternalNames("float8_e4m3fn", "float8_e4m3fn", "F8_E4M3")),
    "e4m3fnuz": ((4, 3, 8, "fnuz"), ExternalNames("float8_e4m3fnuz", "float8_e4m3fnuz",
                                                   "F8_E4M3FNUZ")),
    "e4m3b11fnuz": ((4, 3, 11, "fnuz"), ExternalNames("float8_e4m3b11fnuz")),
    "e5m2": ((5, 2, 15, "ieee"), ExternalNames("float8_e5m2", "float8_e5m2", "F8_E5M2")),
    "e5m2fnuz": ((5, 2, 16, "fnuz"), ExternalNames("float8_e5m2fnuz", "float8_e5m2fnuz",
                                                   "F8_E5M2FNUZ")),
    "e3m4": ((3, 4, 3, "ieee"), ExternalNames("float8_e3m4")),
    "e4m3": ((4, 3, 7, "ieee"), ExternalNames("float8_e4m3")),
    "e8m0fnu": ((8, 0, 127, "e8m0"), ExternalNames("float8_e8m0fnu", "float8_e8m0fnu",
                                                   "F8_E8M0")),
    "e2m3fn": ((2, 3, 1, "finite"), ExternalNames("float6_e2m3fn")),
    "e3m2fn": ((3, 2, 3, "finite"), ExternalNames("float6_e3m2fn")),
    "e2m1fn": ((2, 1, 1, "finite"), ExternalNames("float4_e2m1fn", "float4_e2m1fn_x2")),
}

FORMATS: dict[str, Format] = {
    name: Format(*fields, name=name) for name, (fields, _) in _NAMED.items()
}
"""Every named format, by name."""

EXTERNAL_NAMES: dict[str, ExternalNames] = {name: ext for name, (_, ext) in _NAMED.items()}
"""Each named format's names in ml_dtypes, torch and safetensors: the one table of them."""

_ML_DTYPES_NAMES = {FORMATS[name]: ext.ml_dtypes for name, ext in EXTERNAL_NAMES.items()}
_BY_DTYPE = {np.dtype(getattr(ml_dtypes, ext.ml_dtypes)): FORMATS[name]
             for name, ext in EXTERNAL_NAMES.items()}
_ALIASES = {ext.ml_dtypes: name for name, ext in EXTERNAL_NAMES.items()}

FormatLike = str | Format | type | np.dtype


def ieee_format(exponent_bits: int, mantissa_bits: int) -> Format:
  """The IEEE-style format ExMy with the standard bias 2^(e-1) - 1."""
  return Format(exponent_bits, mantissa_bits, 2 ** (exponent_bits - 1) - 1, "ieee")


_N_MANTISSA = {2: "e5m2", 3: "e4m3fn", 4: "e3m4"}
N_MANTISSA_VALUES = (1, 2, 3, 4, 5, 6)


def format_for_mantissa(n_mantissa: int) -> Format:
  """The 8-bit format of the original API's `n_mantissa` argument.

  2 -> e5m2, 3 -> e4m3fn, 4 -> e3m4; 1, 5 and 6 -> the IEEE-style
  E(7-n)M(n) with bias 2^(e-1) - 1.

  Args:
    n_mantissa: mantissa bits, 1 to 6.

  Returns:
    The Format.

  Example:
    >>> format_for_mantissa(3).name
    'e4m3fn'
  """
  if (not isinstance(n_mantissa, (int, np.integer)) or isinstance(n_mantissa, bool)
      or n_mantissa not in N_MANTISSA_VALUES):
    raise ValueError("n_mantissa must be one of "
                     f"{', '.join(map(str, N_MANTISSA_VALUES))} (got {n_mantissa!r})")
  if n_mantissa in _N_MANTISSA:
    return FORMATS[_N_MANTISSA[n_mantissa]]
  return ieee_format(7 - int(n_mantissa), int(n_mantissa))


@functools.cache
def _lookup_name(name: str) -> Format | None:
  key = name.lower()
  return FORMATS.get(key) or FORMATS.get(_ALIASES.get(key, ""))


def get_format(fmt: FormatLike, argname: str = "fmt") -> Format:
  """Resolves a format name, a `Format` or a float8 dtype to a `Format`.

  Args:
    fmt: a name from `FORMATS` (or its ml_dtypes name, such as
      "float8_e4m3fn"), a `Format`, or an ml_dtypes / jax.numpy dtype such
      as `jnp.float8_e5m2`.
    argname: the argument name to use in error messages.

  Returns:
    The Format.

  Raises:
    ValueError: for an unknown name or a dtype that is not a small float.
    TypeError: for anything else.

  Example:
    >>> get_format("e4m3fn").max
    448.0
  """
  if isinstance(fmt, Format):
    return fmt
  if isinstance(fmt, str):
    found = _lookup_name(fmt)
    if found is None:
      raise ValueError(f"{argname} must be one of {', '.join(FORMATS)} or a Format "
                       f"(got {fmt!r})")
    return found
  if not isinstance(fmt, (type, np.dtype)):
    raise TypeError(f"{argname} must be a format name, a Format or a float8 dtype "
                    f"(got {type(fmt).__name__})")
  dtype = np.dtype(fmt)
  if dtype not in _BY_DTYPE:
    raise ValueError(f"{argname} dtype {dtype} is not one of the named formats' dtypes; "
                     f"valid names: {', '.join(FORMATS)}")
  return _BY_DTYPE[dtype]


def resolve_format(n_mantissa: int | None, format: FormatLike | None) -> Format:
  """The format named by `format=`, else the one `n_mantissa` maps to."""
  if format is None:
    return format_for_mantissa(n_mantissa)
  fmt = get_format(format, "format")
  if n_mantissa is not None and n_mantissa != fmt.mantissa_bits:
    raise ValueError(f"n_mantissa={n_mantissa!r} disagrees with format={fmt.name!r}, which has "
                     f"{fmt.mantissa_bits} mantissa bits; pass n_mantissa=None or "
                     f"{fmt.mantissa_bits}")
  return fmt
