"""Transcriptions, in torch on CPU, of the NVFP4 formulas of the stacks that do not run here.

TransformerEngine needs a CUDA build; the ModelOpt package (nvidia-modelopt) is not in
the test environment. Each function restates the published code step by step, with the
same torch operations in the same order (so the same float32 roundings):

- TransformerEngine: `NVFP4QuantizerRef._quantize_blockwise_reference` in
  transformer_engine/pytorch/custom_recipes/quantization_ref_nvfp4.py (1x16 blocks and
  16x16 tiles, no Hadamard transform, no 4over6), the tensor amax as `_quantize` takes it,
  and the dequantization of `dequantize_fp4_kernel` in
  transformer_engine/common/cast/nvfp4/dequantize_nvfp4.cuh. One deliberate departure:
  the reference's `cast_to_fp4x2` writes +0 for -0.0 (and 0 for NaN), where the GPU
  kernel's cvt.rn.satfinite.e2m1x2.f32 keeps the sign of zero; `te_quantize` keeps it,
  as the hardware does, and `te_reference_codes` gives the reference's own bucket codes
  so the tests can show they agree everywhere else.
- ModelOpt: `NVFP4QTensor.get_weights_scaling_factor_2`, `get_weights_scaling_factor`
  (the dynamic path), `quantize`, `_cast_fp4` and `dequantize` (the non-fast path) in
  modelopt/torch/quantization/qtensor/nvfp4_tensor.py.
"""

from __future__ import annotations

import torch

F32 = torch.float32
# ModelOpt's e2m1_values (code 8 is +0); the GPU's conversion (TE) gives -0.0 for code 8.
MODELOPT_VALUES = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6],
                               dtype=F32)
FP4_VALUES = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                          dtype=F32)
_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])


def _fp4_rne_signed(v: torch.Tensor) -> torch.Tensor:
  """cvt.rn.satfinite.e2m1: nearest even, saturating, the sign kept (also on zero)."""
  a = v.abs()
  mag = torch.zeros_like(v, dtype=torch.uint8)
  for code, (lo, lo_inclusive) in enumerate([(0.25, False), (0.75, True), (1.25, False),
                                             (1.75, True), (2.5, False), (3.5, True),
                                             (5.0, False)], start=1):
    mag = torch.where((a >= lo) if lo_inclusive else (a > lo), torch.full_like(mag, code), mag)
  return mag | (torch.signbit(v).to(torch.uint8) << 3)


def te_reference_codes(clipped: torch.Tensor) -> torch.Tensor:
  """The reference's `cast_to_fp4x2` buckets, one code per element (not packed)."""
  x = clipped
  r = torch.zeros_like(x, dtype=torch.uint8)
  r[(x >= 0.0) & (x <= 0.25)] = 0
  r[(x > 0.25) & (x < 0.75)] = 1
  r[(x >= 0.75) & (x <= 1.25)] = 2
  r[(x > 1.25) & (x < 1.75)] = 3
  r[(x >= 1.75) & (x <= 2.5)] = 4
  r[(x > 2.5) & (x < 3.5)] = 5
  r[(x >= 3.5) & (x <= 5.0)] = 6
  r[x > 5.0] = 7
  r[(x >= -0.25) & (x < -0.0)] = 8
  r[(x < -0.25) & (x > -0.75)] = 9
  r[(x <= -0.75) & (x >= -1.25)] = 10
  r[(x < -1.25) & (x > -1.75)] = 11
  r[(x <= -1.75) & (x >= -2.5)] = 12
  r[(x < -2.5) & (x > -3.5)] = 13
  r[(x <= -3.5) & (x >= -5.0)] = 14
  r[x < -5.0] = 15
  return r


def te_quantize(x: torch.Tensor, tile: int = 1):
  """TE's NVFP4 of a 2-D x whose shape divides the tiles: (codes, per-row block scales as
  e4m3fn, clipped scaled values, global amax). tile: 1 (1x16 blocks) or 16 (16x16)."""
  m, n = x.shape
  global_amax = torch.max(torch.abs(x)).to(F32).view(1)
  if tile == 16:
    blocks = x.unfold(0, 16, 16).unfold(1, 16, 16).to(F32)
    vec_max = torch.amax(torch.abs(blocks), dim=(-1, -2)).repeat_interleave(16, dim=0)
    vec_max = vec_max.unsqueeze(-1)
  else:
    vec_max = torch.amax(torch.abs(x.view(m, n // 16, 16)), dim=-1, keepdim=True).to(F32)
  xb = x.view(m, n // 16, 16)
  fp4_max = torch.tensor(6.0, dtype=F32)
  e4m3_max = torch.tensor(448.0, dtype=F32)
  f32_max = torch.tensor(torch.finfo(F32).max, dtype=F32)
  encode = torch.min(torch.div(e4m3_max * fp4_max, global_amax), f32_max)
  if encode == torch.tensor(0.0, dtype=F32):
    encode = torch.tensor(1.0, dtype=F32)
  decode = torch.div(1.0, encode)
  multiplier = encode * torch.reciprocal(fp4_max)
  block = torch.min(vec_max * multiplier, f32_max)
  block = torch.clamp(block, min=-e4m3_max, max=e4m3_max).to(torch.float8_e4m3fn)
  element = torch.min(torch.div(1.0, block.to(F32) * decode), f32_max)
  clipped = torch.clamp(xb.to(F32) * element, -fp4_max, fp4_max).reshape(m, n)
  return _fp4_rne_signed(clipped), block.squeeze(-1), clipped, global_amax


def te_dequantize(codes: torch.Tensor, block: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
  """dequantize_fp4_kernel: value * (float(scale) * amax * float(1.0 / (6.0 * 448.0)))."""
  factor_inv = torch.tensor(1.0 / (6.0 * 448.0), dtype=F32)
  final = block.to(F32) * amax * factor_inv
  m, n = codes.shape
  values = FP4_VALUES[codes.long()].view(m, n // 16, 16)
  return (values * final.unsqueeze(-1)).reshape(m, n)


def modelopt_quantize(x: torch.Tensor, block_size: int = 16):
  """NVFP4QTensor.quantize with computed scales: (packed codes, e4m3fn block scales,
  weights_scaling_factor_2, the scaled values before the FP4 cast)."""
  pad = -x.shape[-1] % block_size
  if pad:  # reduce_block_padding
    x = torch.nn.functional.pad(x, (0, pad), value=0.0)
  wsf2 = torch.amax(torch.abs(x)).float() / (6.0 * 448.0)
  blocks = x.view(*x.shape[:-1], -1, block_size)
  per_block_amax = torch.amax(torch.abs(blocks), dim=-1).float()
  per_block_scale = per_block_amax / (6.0 * wsf2)
  per_block_scale[per_block_scale == 0] = 1.0
  scale = per_block_scale.clamp_(min=2**-9).to(torch.float8_e4m3fn)
  scaled = blocks / (scale.to(F32) * wsf2).unsqueeze(-1)
  scaled = scaled.view(x.shape)
  q = _modelopt_cast_fp4(scaled.clone())
  packed = (q[..., 1::2] << 4) | q[..., 0::2]
  return packed, scale, wsf2, scaled


def _modelopt_cast_fp4(weight: torch.Tensor) -> torch.Tensor:
  sign_bit = (weight < 0).to(torch.uint8)
  weight_abs = weight.abs_()
  ordinal = torch.searchsorted(_BOUNDS, weight_abs, out_int32=True).to(torch.uint8)
  odd_bounds = _BOUNDS[[1, 3, 5]]
  on_odd = torch.any(weight_abs.unsqueeze(-1) == odd_bounds, dim=-1).to(torch.uint8)
  return (sign_bit << 3) + ordinal + on_odd


def modelopt_dequantize(packed: torch.Tensor, scale: torch.Tensor, wsf2: torch.Tensor,
                        block_size: int = 16) -> torch.Tensor:
  per_block_scale = scale.to(F32) * wsf2
  unpacked_shape = (*packed.shape[:-1], packed.shape[-1] * 2)
  codes = torch.empty(unpacked_shape, dtype=torch.long)
  codes[..., 1::2] = (packed >> 4).long()
  codes[..., 0::2] = (packed & 0x0F).long()
  values = MODELOPT_VALUES[codes.reshape(-1)].reshape(unpacked_shape)
  values = values.view(*unpacked_shape[:-1], -1, block_size) * per_block_scale.unsqueeze(-1)
  return values.reshape(unpacked_shape)
