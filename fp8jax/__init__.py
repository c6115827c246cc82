"""fp8jax: exact conversions between bfloat16/float16/float32 and FP8 formats."""

from fp8jax.compat import int32_to_bfloat16
from fp8jax.compat import round_to_fp8_represented_as_int8
from fp8jax.compat import undo_int8_fp8
from fp8jax.convert import decode
from fp8jax.convert import encode
from fp8jax.delayed import DelayedScaling
from fp8jax.delayed import DelayedState
from fp8jax.fake_quant import fake_quant
from fp8jax.formats import FORMATS
from fp8jax.formats import Format
from fp8jax.formats import FormatLike
from fp8jax.formats import format_for_mantissa
from fp8jax.formats import get_format
from fp8jax.formats import ieee_format
from fp8jax.fp8_dot import Fp8DotState
from fp8jax.fp8_dot import Fp8Recipe
from fp8jax.fp8_dot import fp8_dot_general
from fp8jax.fp8_dot import fp8_dot_state
from fp8jax.matmul import dot
from fp8jax.matmul import matmul
from fp8jax.packing import pack_fp4
from fp8jax.packing import unpack_fp4
from fp8jax.qarray import QArray
from fp8jax.scaling import amax
from fp8jax.scaling import dequantize
from fp8jax.scaling import quantize
from fp8jax.scaling import scale_from_amax
from fp8jax.views import as_float8
from fp8jax.views import from_float8

__version__ = "0.1.0"

__all__ = [
    "DelayedScaling",
    "DelayedState",
    "FORMATS",
    "Format",
    "FormatLike",
    "Fp8DotState",
    "Fp8Recipe",
    "QArray",
    "amax",
    "as_float8",
    "decode",
    "dequantize",
    "dot",
    "encode",
    "fake_quant",
    "format_for_mantissa",
    "fp8_dot_general",
    "fp8_dot_state",
    "from_float8",
    "get_format",
    "ieee_format",
    "int32_to_bfloat16",
    "matmul",
    "pack_fp4",
    "quantize",
    "round_to_fp8_represented_as_int8",
    "scale_from_amax",
    "undo_int8_fp8",
    "unpack_fp4",
]
