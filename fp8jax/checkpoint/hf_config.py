"""The `quantization_config` a quantized Hugging Face model folder's `config.json` gains.

e4m3fn weights per tensor or in 128x128 tiles are written in the form vLLM's
`fp8` method loads (`Fp8Config`): `quant_method: "fp8"`, dynamic activation
scales, `weight_block_size: [128, 128]` for tiles (scales named
`X.weight_scale_inv`), per-tensor scales as `X.weight_scale`, and the
layers left unquantized in `ignored_layers` (also as
`modules_to_not_convert`, the key transformers reads). Every other layout
is recorded under `quant_method: "fp8jax"` with its format, scaling and
storage dtypes, for fp8jax (and readers that follow this description).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fp8jax.checkpoint.stored import WeightLayout

VLLM_BLOCK = [128, 128]


def module_name(tensor_name: str) -> str:
  """`model.layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj`."""
  base, dot, last = tensor_name.rpartition(".")
  return base if dot and last == "weight" else tensor_name


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
  modules = sorted({module_name(n) for n in ignored})
  if layout.vllm_fp8:
    config: dict[str, Any] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    if layout.scaling != "tensor":
      config["weight_block_size"] = list(VLLM_BLOCK)
  else:
    config = {"quant_method": "fp8jax", "format": layout.fmt.name, "scaling": layout.scaling,
              "weight_dtype": layout.bits_dtype, "scale_dtype": layout.scale_dtype,
              "scale_suffix": layout.scale_suffix}
    if layout.scaling == "mx":
      config["scale_format"] = "e8m0fnu"
  config["ignored_layers"] = modules
  config["modules_to_not_convert"] = list(modules)
  return config
