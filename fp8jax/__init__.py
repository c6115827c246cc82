"""fp8jax: exact conversions between bfloat16/float16/float32 and FP8 formats.

The public API, by concept:

- formats: `Format`, `FORMATS`, `get_format`, `ieee_format`, `format_for_mantissa`;
- the codec: `encode`, `decode`, `as_float8`, `from_float8`, `pack_fp4`, `unpack_fp4`;
- scaled quantization: `QuantSpec` with its granularities `Tensor`, `Axis`, `Block`,
  `MX`, `NVFP4`, `Static`; `quantize`, `dequantize`, `QArray`, `fake_quant`; delayed scaling
  (`DelayedScaling`, `DelayedState`), and its two halves `amax` and `scale_from_amax`,
  public on purpose for recipes of one's own;
- FP8 matmul and training: `dot`, `matmul`, `scaled_matmul` (and its operands,
  `scaled_matmul_operands`, for `jax.nn.scaled_matmul`), `fp8_dot_general`, `fp8_einsum`,
  and their recipes (`Fp8Recipe`, `Cast`, the presets `RECIPES`, `get_recipe`) and state
  (`Fp8DotState`, `fp8_dot_state`, `tied`); `fp8jax.flax` holds Flax modules built on them;
- the original API: `round_to_fp8_represented_as_int8`, `undo_int8_fp8`,
  `int32_to_bfloat16`.

Subpackages: `core` (bit layouts, formats, the kernel, the codec), `quant` (specs and
scaled quantization), `ops` (matmul, training and its recipes), `flax` (Flax linen and
nnx modules; needs flax), `checkpoint` (safetensors
checkpoints), `cli` (the `fp8jax` command); `legacy` holds the original API.

Each public name is imported when first used (PEP 562), so that the command line can
install its signal handlers before JAX loads; `import fp8jax` itself is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name lives.
_HOMES = {
    "fp8jax.core.codec": ("decode", "encode"),
    "fp8jax.core.formats": ("FORMATS", "Format", "FormatLike", "format_for_mantissa",
                            "get_format", "ieee_format"),
    "fp8jax.core.packing": ("pack_fp4", "unpack_fp4"),
    "fp8jax.core.views": ("as_float8", "from_float8"),
    "fp8jax.legacy": ("int32_to_bfloat16", "round_to_fp8_represented_as_int8", "undo_int8_fp8"),
    "fp8jax.ops.gemm": ("dot", "matmul", "scaled_matmul", "scaled_matmul_operands"),
    "fp8jax.ops.recipes": ("RECIPES", "Cast", "Fp8DotState", "Fp8Recipe", "get_recipe"),
    "fp8jax.ops.training": ("fp8_dot_general", "fp8_dot_state", "fp8_einsum", "tied"),
    "fp8jax.quant.delayed": ("DelayedScaling", "DelayedState"),
    "fp8jax.quant.fake": ("fake_quant",),
    "fp8jax.quant.qarray": ("QArray",),
    "fp8jax.quant.scaled": ("dequantize", "quantize"),
    "fp8jax.quant.scales": ("amax", "scale_from_amax"),
    "fp8jax.quant.spec": ("MX", "NVFP4", "Axis", "Block", "QuantSpec", "Static", "Tensor"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__version__ = "0.1.0"
__all__ = sorted(_HOME)


_SUBPACKAGES = ("core", "quant", "ops", "flax", "checkpoint", "cli", "legacy")


def __getattr__(name: str) -> Any:
  if name in _SUBPACKAGES:
    return importlib.import_module(f"fp8jax.{name}")  # as after an eager import
  module = _HOME.get(name)
  if module is None:
    raise AttributeError(f"module 'fp8jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))

