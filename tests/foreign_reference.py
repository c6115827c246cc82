"""The producers' own code, driven on CPU, for the foreign-checkpoint tests.

Each function calls the real library where it runs here:

- compressed-tensors 0.20: a tiny model quantized and compressed as llm-compressor does it
  (`apply_quantization_config`, the min-max observer's `calculate_qparams` /
  `generate_gparam`, `ModelCompressor.compress_model`, `update_config`), and read back by
  its model-free dequantizer `CompressedTensorsDequantizer` (the per-format compressors'
  `decompress`);
- block FP8 (vLLM / DeepSeek-V3): compressed-tensors' `FP8BlockDequantizer`, which pads
  edge tiles, and transformers 5.24's `Fp8Dequantize` (the `fp8` quantizer's
  `dequantize=True` path), which needs whole tiles;
- gpt-oss MXFP4: transformers' `convert_moe_packed_tensors`, what `Mxfp4Dequantize` runs;
- ModelOpt is not installed: `tests/nvfp4_reference.modelopt_dequantize` transcribes
  `NVFP4QTensor.dequantize` (the non-fast path).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import warnings

import torch

with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  from compressed_tensors.compressors import ModelCompressor
  from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
      CompressedTensorsDequantizer,
  )
  from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import (
      FP8BlockDequantizer,
  )
  from compressed_tensors.quantization import (
      QuantizationArgs,
      QuantizationConfig,
      QuantizationScheme,
      apply_quantization_config,
  )
  from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
  from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
  from safetensors.torch import load_file, save_file
  from transformers.integrations.finegrained_fp8 import Fp8Dequantize
  from transformers.integrations.mxfp4 import convert_moe_packed_tensors

MODULE = "model.layers.0.mlp.up_proj"


class _Model(torch.nn.Module):
  """`model.layers.0.mlp.up_proj` (quantized) and `lm_head` (ignored)."""

  def __init__(self, out: int, inn: int, dtype: torch.dtype):
    super().__init__()
    self.model = torch.nn.Module()
    self.model.layers = torch.nn.ModuleList([torch.nn.Module()])
    self.model.layers[0].mlp = torch.nn.Module()
    self.model.layers[0].mlp.up_proj = torch.nn.Linear(inn, out, bias=False, dtype=dtype)
    self.lm_head = torch.nn.Linear(inn, out, bias=False, dtype=dtype)


def ct_scheme(preset: str, **weights) -> QuantizationScheme:
  """A preset scheme (`FP8_BLOCK`, `NVFP4`, ...), its weight args overridden by `weights`."""
  args = copy.deepcopy(PRESET_SCHEMES[preset])
  if weights:
    args["weights"] = QuantizationArgs(**{**args["weights"].model_dump(), **weights})
  return QuantizationScheme(targets=["Linear"], **args)


def _qparams(w: torch.Tensor, args: QuantizationArgs):
  """Scale (and global scale) as llm-compressor's min-max observer computes them."""
  strategy = str(getattr(args.strategy, "value", args.strategy))
  if strategy == "tensor":
    lo, hi = torch.aminmax(w)
    return calculate_qparams(lo.reshape(1), hi.reshape(1), args)[0], None
  if strategy == "channel":
    return calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), args)[0], None
  if strategy == "block":
    b0, b1 = args.block_structure
    padded = torch.nn.functional.pad(w, (0, -w.shape[1] % b1, 0, -w.shape[0] % b0))
    tiles = padded.reshape(padded.shape[0] // b0, b0, padded.shape[1] // b1, b1).transpose(1, 2)
    return calculate_qparams(tiles.amin((-1, -2)), tiles.amax((-1, -2)), args)[0], None
  gs = generate_gparam(w.amin(), w.amax()) if strategy == "tensor_group" else None
  groups = w.unflatten(-1, (w.shape[-1] // args.group_size, args.group_size))
  return calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=gs)[0], gs


def ct_checkpoint(folder: str, scheme: QuantizationScheme, weight: torch.Tensor) -> None:
  """Quantizes `weight` as `MODULE` with `scheme`, compresses and saves it as llm-compressor
  does: `model.safetensors` and `config.json` with its `quantization_config`."""
  model = _Model(*weight.shape, weight.dtype)
  linear = model.model.layers[0].mlp.up_proj
  linear.weight.data.copy_(weight)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme},
                                                        ignore=["lm_head"]),
                              show_progress=False)
    scale, gs = _qparams(linear.weight.data, scheme.weights)
    if scale.shape == linear.weight_scale.shape:
      scale = scale.to(linear.weight_scale.dtype)
    linear.weight_scale.data = scale
    if gs is not None:
      linear.weight_global_scale.data = gs.reshape(linear.weight_global_scale.shape)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  save_file(state, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": "llama", "torch_dtype": "bfloat16"}, f)
  compressor.update_config(folder)


def ct_dequantize(folder: str) -> dict[str, torch.Tensor]:
  """compressed-tensors' model-free dequantization of a folder, to float32 (exact: its
  decompressors' own results, widened)."""
  tensors = {}
  for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
    tensors.update(load_file(path))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return CompressedTensorsDequantizer(folder, dtype=torch.float32).process(tensors)


def fp8_block_dequantize(weight: torch.Tensor, scale_inv: torch.Tensor,
                         block: tuple[int, int]) -> torch.Tensor:
  """compressed-tensors' `FP8BlockDequantizer` (DeepSeek-V3 layout, edge tiles padded), float32."""
  converter = FP8BlockDequantizer(weight_block_size=block, dtype=torch.float32)
  return converter._create_dequantized_weight(weight, scale_inv)


def fp8_transformers_dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """transformers' `Fp8Dequantize` for one weight (whole tiles; a scalar scale as 1x1), float32."""
  if scale.ndim < 2:
    scale = scale.reshape(1, 1)
  return Fp8Dequantize(None)._dequantize_one(weight, scale, torch.float32)


def gpt_oss_dequantize(blocks: torch.Tensor, scales: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
  """transformers' gpt-oss MXFP4 dequantization (`Mxfp4Dequantize`) into `dtype`."""
  return convert_moe_packed_tensors(blocks, scales, dtype=dtype)


def ct_config(scheme: QuantizationScheme, ignore=("lm_head",)) -> dict:
  """The `quantization_config` compressed-tensors writes for one config group."""
  config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=list(ignore),
                              quantization_status="compressed")
  return config.model_dump(mode="json")
