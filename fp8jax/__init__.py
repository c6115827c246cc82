"""fp8jax: exact conversions between bfloat16/float16/float32 and FP8 formats."""

from fp8jax.compat import int32_to_bfloat16
from fp8jax.compat import round_to_fp8_represented_as_int8
from fp8jax.compat import undo_int8_fp8
from fp8jax.convert import decode
from fp8jax.convert import encode
from fp8jax.formats import FORMATS
from fp8jax.formats import Format
from fp8jax.formats import FormatLike
from fp8jax.formats import format_for_mantissa
from fp8jax.formats import get_format
from fp8jax.formats import ieee_format
from fp8jax.views import as_float8
from fp8jax.views import from_float8

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "Format",
    "FormatLike",
    "as_float8",
    "decode",
    "encode",
    "format_for_mantissa",
    "from_float8",
    "get_format",
    "ieee_format",
    "int32_to_bfloat16",
    "round_to_fp8_represented_as_int8",
    "undo_int8_fp8",
]
