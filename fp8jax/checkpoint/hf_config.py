"""The `quantization_config` that `quantize_checkpoint` writes today into `config.json`.

A shim over `layouts` for the names the pipeline stores today: e4m3fn
weights per tensor or in 128x128 tiles in vLLM's `fp8` layout
(`layouts.get_layout("vllm")`), every other layout under `quant_method:
"fp8jax"` with its codes under `X.weight` and its scale under
`X.weight` + `WeightLayout.scale_suffix`. `layouts` has the layouts the
stacks read (compressed-tensors, ModelOpt) and the `fp8jax` layout whose
codes no loader mistakes for weights; this module goes once the pipeline
writes those.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fp8jax.checkpoint.layouts import VLLM_BLOCK, get_layout, ignored_modules, module_name
from fp8jax.checkpoint.stored import WeightLayout

__all__ = ["VLLM_BLOCK", "module_name", "quantization_config"]


def quantization_config(layout: WeightLayout, ignored: Iterable[str]) -> dict[str, Any]:
  """The `quantization_config` entry for a folder quantized with `layout`.

  Args:
    layout: the weights' layout.
    ignored: names of the floating-point weights with 2 or more dimensions
      that were left unquantized (embeddings, `lm_head`, `--exclude`d).

  Returns:
    A JSON-ready dict.

  Example:
    >>> layout = WeightLayout.parse("e4m3fn", "block:128x128")
    >>> quantization_config(layout, ["lm_head.weight"])  # doctest: +NORMALIZE_WHITESPACE
    {'quant_method': 'fp8', 'activation_scheme': 'dynamic', 'weight_block_size': [128, 128],
     'ignored_layers': ['lm_head'], 'modules_to_not_convert': ['lm_head']}
  """
  vllm = get_layout("vllm")
  if vllm.holds(layout):
    return vllm.quantization_config(layout, ignored)
  modules = ignored_modules(ignored)
  config: dict[str, Any] = {
      "quant_method": "fp8jax", "format": layout.fmt.name, "scaling": layout.scaling,
      "weight_dtype": layout.bits_dtype, "scale_dtype": layout.scale_dtype,
      "scale_suffix": layout.scale_suffix}
  if layout.scaling == "mx":
    config["scale_format"] = "e8m0fnu"
  config["ignored_layers"] = modules
  config["modules_to_not_convert"] = list(modules)
  return config
