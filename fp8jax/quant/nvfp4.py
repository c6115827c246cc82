"""NVFP4 as each stack computes it: E2M1 codes, e4m3fn block scales, a float32 tensor scale.

NVFP4 stores E2M1 (FP4) elements in blocks of 16 (or 16x16 tiles), each
block with an E4M3 scale, and one float32 scale per tensor (or per expert).
The stacks agree on that and on nothing finer: where the smallest block
scale lies, whether elements are multiplied by a reciprocal or divided, and
which number is stored for the tensor. Each rule below is that stack's
arithmetic, every step a correctly rounded float32 operation (`f32.mul`,
`f32.div`: subnormals included, no flushing), so the codes, block scales,
tensor scale and dequantized values are the stack's bits.

With A the tensor's amax and b a block's amax (NaN and infinities included,
as `torch.amax` does), `e4m3(v)` the nearest e4m3fn value (saturating),
`fl(v)` float32 rounding, and C6 = fl(1/6):

| rule | tensor scale stored | block scale s (e4m3fn) | element code of x | dequantized |
| --- | --- | --- | --- | --- |
| torchao (`nvfp4_quantize` with `per_tensor_scale`) | t = fl(A / 2688), decodes | e4m3(clamp(fl(fl(b / 6) / t), 2^-6, 448)) | fp4(fl(x * fl(fl(1 / t) / s))) | fl(code * fl(t * s)) |
| te (TransformerEngine `NVFP4QuantizerRef`; dequantize kernel) | A itself; S = min(fl(2688 / A), float32 max), 1 if that is 0 | e4m3(clamp(fl(b * fl(S * C6)), 0, 448)) | fp4(fl(x * min(fl(1 / fl(s * fl(1 / S))), max))) | fl(code * fl(fl(s * A) * fl32(1/2688))) |
| modelopt (`NVFP4QTensor`) | t = fl(A / 2688) (`weight_scale_2`), decodes | e4m3(max(fl(b / fl(6 * t)) or 1 if 0, 2^-9)) | fp4(fl(x / fl(s * t))) | fl(code * fl(s * t)), code 0x8 read as +0 |
| compressed-tensors (`calculate_qparams`, `generate_gparam`) | g = rd(rd(1 / max(A, tiny)) * 2688), 1 if NaN or inf (`weight_global_scale`), encodes | e4m3(min(fl(g * rd(b / 6)), 448)), 0.125 if 0 | fp4(fl(x / fl(s / g))) | fl(code * fl(s / g)) |

rd is rounding to the input's dtype: compressed-tensors computes its
statistics in the weight's dtype (the observers' min/max), so for bfloat16
weights 1/A, its product by 2688 and b/6 are bfloat16; `2688.0 / t` in torch
is `t.reciprocal() * 2688.0`. fp4 is round to nearest even with saturation
at 6. Zeros: torchao and te keep the sign of x (code 0x8 for -0.0, as
`f32_to_f4_unpacked` and the GPU's cvt.rn.satfinite.e2m1x2.f32 do);
modelopt (`x < 0`) and compressed-tensors (`torch.sign`) write code 0 where
the float32 quotient is zero, -0.0 included; ModelOpt's dequantization
table also reads code 0x8 as +0. NaN elements (and elements made NaN by a
NaN scale or 0 * inf) get fp8jax's NaN convention for formats without NaN,
the zero of the opposite sign; the stacks write codes that depend on their
arithmetic (torchao: 1.5 for +NaN).
"""

from __future__ import annotations

from collections.abc import Callable
import typing
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from fp8jax.core import codec, f32, fusion
from fp8jax.core.formats import FORMATS
from fp8jax.quant import grouping, scales
from fp8jax.quant.spec import NVFP4, QuantSpec

_E4M3 = FORMATS["e4m3fn"].bit_layout
_FP4_MAX = 6.0
_E4M3_MAX = 448.0
_BOTH_MAX = _FP4_MAX * _E4M3_MAX  # 2688
_F32_MAX = f32.MAX
_RCP6 = float(np.float32(1) / np.float32(6))  # torch.reciprocal(6.0) and TE's 1.0f / 6.0f
_RCP2688 = float(np.float32(1.0 / _BOTH_MAX))  # TE's constexpr 1.0 / (6.0 * 448.0), as float


class BlockScales(NamedTuple):
  """One rule's result for a grouped view: e4m3fn codes, the element scale and its use."""

  codes: jax.Array  # uint8 e4m3fn block scales
  element_scale: jax.Array  # float32: x is multiplied (or divided, `_DIVIDING`) by it
  tensor_scale: jax.Array  # float32, the number the stack stores


def _f(v: float) -> jax.Array:
  return jnp.float32(v)


def _e4m3(v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Non-negative float32 to e4m3fn (nearest even, saturating): codes and their values."""
  # The codes apart: every later use (the scale, the element scale, the output) would
  # otherwise redo the arithmetic that led to them.
  codes = fusion.apart(
      lambda v: codec.encode_array(v, _E4M3, rounding="nearest", overflow="satfinite"), v)
  return codes, codec.decode_array(codes, _E4M3, np.dtype(np.float32))


def _min_keep_nan(a: jax.Array, hi: float) -> jax.Array:
  """torch.min(a, hi) for non-negative a: NaN stays NaN."""
  return f32.clamp_keep_nan(a, 0.0, hi)


def _torchao(b, a, dtype) -> BlockScales:
  del dtype
  t = f32.div(a, _f(_BOTH_MAX))
  codes, s = _e4m3(f32.clamp_keep_nan(f32.div(f32.div(b, _f(_FP4_MAX)), t), 2.0**-6, _E4M3_MAX))
  r = f32.div(f32.div(_f(1), t), s)
  return BlockScales(codes, r, t)


def _te(b, a, dtype) -> BlockScales:
  del dtype
  enc = _min_keep_nan(f32.div(_f(_BOTH_MAX), a), _F32_MAX)
  enc = jnp.where(f32.is_positive(enc), enc, _f(1))  # a zero encode scale (A = inf) gives 1
  dec = f32.div(_f(1), enc)
  scale = _min_keep_nan(f32.mul(b, f32.mul(enc, _f(_RCP6))), _F32_MAX)
  codes, s = _e4m3(_min_keep_nan(scale, _E4M3_MAX))
  r = _min_keep_nan(f32.div(_f(1), f32.mul(s, dec)), _F32_MAX)
  return BlockScales(codes, r, a)


def _modelopt(b, a, dtype) -> BlockScales:
  del dtype
  t = f32.div(a, _f(_BOTH_MAX))
  scale = f32.div(b, f32.mul(_f(_FP4_MAX), t))
  scale = jnp.where(f32.is_positive(scale) | f32.is_nan(scale), scale, _f(1))
  codes, s = _e4m3(jnp.where(f32.is_nan(scale), scale, f32.clamp_positive(scale, 2.0**-9, np.inf)))
  return BlockScales(codes, f32.mul(s, t), t)


def _compressed_tensors(b, a, dtype) -> BlockScales:
  tiny = float(ml_dtypes.finfo(dtype).tiny)
  a = jnp.where(f32.is_nan(a), a, f32.clamp_positive(a, tiny, np.inf))
  g = f32.round_to(f32.mul(f32.round_to(f32.div(_f(1), a), dtype), _f(_BOTH_MAX)), dtype)
  g = jnp.where(f32.is_nan(g) | f32.is_inf(g), _f(1), g)
  scale = f32.mul(g, f32.round_to(f32.div(b, _f(_FP4_MAX)), dtype))
  codes, s = _e4m3(_min_keep_nan(scale, _E4M3_MAX))
  zero = ~f32.is_positive(s)  # s is never negative; NaN is not zero
  codes = jnp.where(zero, codec.encode_array(_f(0.125), _E4M3, rounding="nearest",
                                             overflow="satfinite"), codes)
  s = jnp.where(zero, _f(0.125), s)
  return BlockScales(codes, f32.div(s, g), g)


_Rule = Callable[[jax.Array, jax.Array, np.dtype], BlockScales]
_RULES: dict[str, _Rule] = {
    "torchao": _torchao,
    "te": _te,
    "modelopt": _modelopt,
    "compressed-tensors": _compressed_tensors,
}
_SIGNED_ZEROS = ("torchao", "te")  # the others write code 0 for a zero quotient
_DIVIDING = ("modelopt", "compressed-tensors")  # the others multiply by the element scale


def _multiplier(rule: str, s: jax.Array, t: jax.Array) -> jax.Array:
  """The float32 number a block's codes are multiplied by to dequantize, as `rule` forms it."""
  if rule == "te":
    return f32.mul(f32.mul(s, t), _f(_RCP2688))
  if rule == "compressed-tensors":
    return f32.div(s, t)
  return f32.mul(s, t)  # torchao: per_tensor_scale * scale; modelopt: scale * weight_scale_2


def _leading(spec: QuantSpec, ndim: int) -> int:
  """How many leading axes have a tensor scale of their own."""
  return max(ndim - 2, 0) if typing.cast(NVFP4, spec.granularity).stacked else 0


def quantize_blocks(x: jax.Array, spec: QuantSpec, key: jax.Array | None):
  """The traceable NVFP4 quantization: (codes, block scale codes, tensor scale).

  Arguments are checked by the caller; `spec` is resolved for `x`.
  """
  g = typing.cast(NVFP4, spec.granularity)
  axes, block = spec.grouping(x.ndim)
  lead = _leading(spec, x.ndim)
  view, inner = grouping.grouped(x, axes, grouping.blocks_for(x.shape, axes, block))
  b = scales.abs_max_bits(view, inner, finite=False, blocks=True)
  if b.size:
    # The tensor's amax is the largest block amax (NaN's bits are the largest): no
    # second pass over x.
    a = f32.max_positive(b, axis=tuple(range(lead, b.ndim)))
  else:
    a = scales.abs_max_bits(x, tuple(range(lead, x.ndim)), finite=False)
  a = a.reshape(x.shape[:lead] + (1,) * (b.ndim - lead))
  # Apart from the encode, or XLA fuses the per-block arithmetic into it and redoes
  # it for every element (ten times slower).
  result = fusion.apart(lambda ba: _RULES[g.rule](*ba, np.dtype(x.dtype)), (b, a))
  codes = codec.encode_array(view, spec.format.bit_layout, rounding=spec.rounding,
                             overflow=spec.overflow, key=key, scale=result.element_scale,
                             divide=g.rule in _DIVIDING)
  if g.rule not in _SIGNED_ZEROS:
    codes = jnp.where(f32.quotient_is_zero(view, result.element_scale), jnp.uint8(0), codes)
  bits = grouping.ungrouped(codes, x.shape, axes)
  block_codes = grouping.merged(result.codes, grouping.pair_starts(x.ndim, axes))
  return bits, block_codes, result.tensor_scale.reshape(x.shape[:lead])


def decoded_codes(bits: jax.Array, spec: QuantSpec) -> jax.Array:
  """The codes as the rule's stack decodes them: ModelOpt's table maps -0 (code 8) to +0."""
  if typing.cast(NVFP4, spec.granularity).rule == "modelopt":
    return jnp.where((bits & jnp.uint8(0xF)) == 8, jnp.uint8(0), bits)
  return bits


def block_multipliers(block_codes: jax.Array, tensor_scale: jax.Array, spec: QuantSpec
                      ) -> jax.Array:
  """The float32 decode multiplier of every block: e4m3fn scale and tensor scale combined.

  `decode(bits) * multiplier`, rounded to float32, is the dequantized value
  the rule's stack computes. `tensor_scale` may carry leading batch axes
  (from vmap); it is broadcast against the block grid from the left.

  Args:
    block_codes: uint8 e4m3fn codes, a QArray's `scale`.
    tensor_scale: float32, a QArray's `tensor_scale`.
    spec: the QArray's spec (an `NVFP4` granularity).

  Returns:
    float32, the shape of `block_codes`.

  Example:
    >>> q = fp8jax.quantize(jnp.linspace(-3, 3, 32), "e2m1fn", scaling="nvfp4",
    ...                     nvfp4_rule="torchao")
    >>> block_multipliers(q.scale, q.tensor_scale, q.spec).shape
    (2,)
  """
  rule = typing.cast(NVFP4, spec.granularity).rule
  s = codec.decode_array(block_codes, _E4M3, np.dtype(np.float32))
  t = jnp.asarray(tensor_scale, jnp.float32)
  t = t.reshape(t.shape + (1,) * (s.ndim - t.ndim))
  return _multiplier(rule, s, t)


def tensor_multiplier(tensor_scale: jax.Array, rule: str) -> jax.Array:
  """The tensor scale as a float32 decode multiplier (for products of whole blocks).

  torchao and modelopt store it (amax / 2688); compressed-tensors stores
  its inverse (1 / g); te stores the amax (amax * fl32(1/2688)).

  Args:
    tensor_scale: a QArray's `tensor_scale`.
    rule: the QArray's NVFP4 rule.

  Returns:
    float32 of `tensor_scale`'s shape: x ≈ decode(bits) * block scale * this.

  Example:
    >>> tensor_multiplier(jnp.float32(2688.0), "te")
    Array(1., dtype=float32)
  """
  t = jnp.asarray(tensor_scale, jnp.float32)
  if rule == "compressed-tensors":
    return f32.div(_f(1), t)
  if rule == "te":
    return f32.mul(t, _f(_RCP2688))
  return t
