"""fp8jax: exact conversions between bfloat16/float16/float32 and FP8 formats.

The public API, by concept:

- formats: `Format`, `FORMATS`, `get_format`, `ieee_format`, `format_for_mantissa`;
- the codec: `encode`, `decode`, `as_float8`, `from_float8`, `pack_fp4`, `unpack_fp4`;
- scaled quantization: `QuantSpec` with its granularities `Tensor`, `Axis`, `Block`,
  `MX`, `NVFP4`, `Static`; `quantize`, `dequantize`, `QArray`, `fake_quant`; delayed scaling
  (`DelayedScaling`, `DelayedState`), and its two halves `amax` and `scale_from_amax`,
  public on purpose for recipes of one's own;
- FP8 matmul and training: `dot`, `matmul`, `scaled_matmul` (and its operands,
  `scaled_matmul_operands`, for `jax.nn.scaled_matmul`), `fp8_dot_general`, `Fp8Recipe`,
  `Fp8DotState`, `fp8_dot_state`;
- the original API: `round_to_fp8_represented_as_int8`, `undo_int8_fp8`,
  `int32_to_bfloat16`.

Subpackages: `core` (bit layouts, formats, the kernel, the codec), `quant` (specs and
scaled quantization), `ops` (matmul and training), `checkpoint` (safetensors
checkpoints), `cli` (the `fp8jax` command); `legacy` holds the original API.
"""

from fp8jax.core.codec import decode, encode
from fp8jax.core.formats import (
    FORMATS,
    Format,
    FormatLike,
    format_for_mantissa,
    get_format,
    ieee_format,
)
from fp8jax.core.packing import pack_fp4, unpack_fp4
from fp8jax.core.views import as_float8, from_float8
from fp8jax.legacy import int32_to_bfloat16, round_to_fp8_represented_as_int8, undo_int8_fp8
from fp8jax.ops.gemm import dot, matmul, scaled_matmul, scaled_matmul_operands
from fp8jax.ops.training import Fp8DotState, Fp8Recipe, fp8_dot_general, fp8_dot_state, tied
from fp8jax.quant.delayed import DelayedScaling, DelayedState
from fp8jax.quant.fake import fake_quant
from fp8jax.quant.qarray import QArray
from fp8jax.quant.scaled import dequantize, quantize
from fp8jax.quant.scales import amax, scale_from_amax
from fp8jax.quant.spec import MX, NVFP4, Axis, Block, QuantSpec, Static, Tensor

__version__ = "0.1.0"

__all__ = [
    "MX",
    "NVFP4",
    "Axis",
    "Block",
    "DelayedScaling",
    "DelayedState",
    "FORMATS",
    "Format",
    "FormatLike",
    "Fp8DotState",
    "Fp8Recipe",
    "QArray",
    "QuantSpec",
    "Static",
    "Tensor",
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
    "scaled_matmul",
    "scaled_matmul_operands",
    "tied",
    "undo_int8_fp8",
    "unpack_fp4",
]
