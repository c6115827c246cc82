"""Scaled quantization: `quantize` and `dequantize`, for every granularity of a `QuantSpec`.

Every granularity is one computation over a grouped view of the input
(`grouping`): the amax is a max over the block dimensions; the scale is
`amax / (max * 2^-margin)`; the codes are `encode(x / scale)`. XLA fuses the
amax reduction, the scale and the cast; there is no Python loop over blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from fp8jax.core import checks, codec, formats, fusion, layout, packing
from fp8jax.quant import grouping, nvfp4, scales, significands, thresholds
from fp8jax.quant.qarray import QArray
from fp8jax.quant.spec import MX, NVFP4, Overflow, QuantSpec, Rounding, Static, Tensor

# --- quantize / dequantize ---------------------------------------------------

# From this many elements on, one scale pays for its preparation: a 16-bit input
# divided by it is encoded by counting thresholds (`thresholds`, a few hundred
# divisions to find them), and codes multiplied by it are decoded by selecting
# significands (`significands`, a kernel run over every code); each element then
# costs 16-bit integer operations instead of float32 arithmetic in 32-bit lanes.
_ONE_SCALE_MIN_SIZE = 1 << 18


def _encode_divided(x: jax.Array, dst: layout.BitLayout, scale: jax.Array, rounding: str,
                    overflow: str, key: jax.Array | None, normal: bool) -> jax.Array:
  """`encode(x / scale)`, by thresholds where that is exact and pays; `normal`:
  the scale is a positive normal float (a dynamic one)."""
  src = layout.FLOAT_LAYOUTS[np.dtype(x.dtype)]
  if (scale.size != 1 or x.size < _ONE_SCALE_MIN_SIZE
      or not thresholds.supported(src, dst, rounding)):
    return codec.encode_array(x, dst, rounding=rounding, overflow=overflow, key=key,
                              scale=scale, divide=True, normal_scale=normal)
  return thresholds.encode_divided(x, dst, scale, rounding=rounding, overflow=overflow,
                                   normal=normal)


def _last_block(nd: int, axes: tuple[int, ...], block: tuple[int, ...] | None) -> int | None:
  """The block length along the last axis, where blocks split it (they lie within shards)."""
  if block is None:
    return None
  lengths = {a % nd: b for a, b in zip(axes, block, strict=False)}
  return lengths.get(nd - 1)


@functools.partial(jax.jit, static_argnames=("spec", "axis_name"))
def _quantize(x, key, static_scale, *, spec: QuantSpec, axis_name):
  fmt, kind, dst = spec.format, spec.kind, spec.format.bit_layout
  axes, block = spec.grouping(x.ndim)
  tensor_scale = None
  if kind == NVFP4.kind:
    bits, scale, tensor_scale = nvfp4.quantize_blocks(x, spec, key)
  elif kind == Static.kind:
    bits = _encode_divided(x, dst, static_scale, spec.rounding, spec.overflow, key, False)
    scale = static_scale
  elif x.size == 0 and block is None:
    # No values: the scale of an all-zero group.
    bits = jnp.zeros(x.shape, jnp.uint8)
    scale = jnp.ones(spec.scale_shape(x.shape), jnp.float32)
  else:
    view, inner = grouping.grouped(x, axes, grouping.blocks_for(x.shape, axes, block))
    if kind == MX.kind:
      # Every rule but OCP's floor takes NaN and infinities into the amax, as torchao does.
      rule = spec.granularity.rule
      amax = scales.abs_max_bits(view, inner, axis_name, finite=rule == "floor", blocks=True)
      # Apart, or XLA redoes the per-block arithmetic for every element.
      scale_kd = fusion.apart(lambda a: scales.mx_scale_codes(a, fmt, rule), amax)
      divisor, pow2 = None, scales.mx_exponent(scale_kd, rule)
    else:
      amax = scales.abs_max_bits(view, inner, axis_name, blocks=block is not None)
      scale_kd = divisor = scales.dynamic_scale(amax, fmt, spec.pow2, spec.margin)
      pow2 = None
    if kind == Tensor.kind:
      scale = scale_kd.reshape(())
      bits = _encode_divided(x, dst, scale, spec.rounding, spec.overflow, key, True)
    else:
      # Dynamic scales are positive normal floats; MX exponents have sentinels for
      # infinite and NaN divisors under every rule but floor.
      codes = codec.encode_array(view, dst, rounding=spec.rounding, overflow=spec.overflow,
                                 key=key, scale=divisor, divide=True, pow2=pow2,
                                 normal_scale=kind != MX.kind or spec.granularity.rule == "floor")
      bits = grouping.ungrouped(codes, x.shape, axes)
      scale = grouping.merged(scale_kd, grouping.pair_starts(x.ndim, axes))
  if spec.pack:
    bits = packing.pack_codes(bits)
  # Formats without NaN encode NaN as a zero: count them, so none vanish unseen.
  nan_count = None if fmt.has_nan else scales.nan_count(x, _last_block(x.ndim, axes, block))
  return bits, scale, nan_count, tensor_scale


@functools.partial(jax.jit, static_argnames=("spec", "dtype", "odd"))
def _dequantize(bits, scale, tensor_scale, *, spec: QuantSpec, dtype, odd):
  if spec.pack:
    bits = packing.unpack_codes(bits, 2 * bits.shape[-1] - int(odd))
  if bits.size == 0:
    return jnp.zeros(bits.shape, dtype)
  src, kind = spec.format.bit_layout, spec.kind
  if kind == NVFP4.kind:
    bits = nvfp4.decoded_codes(bits, spec)
    # Apart, or XLA redoes the multipliers' exact float32 arithmetic for every element.
    scale = fusion.apart(lambda st: nvfp4.block_multipliers(*st, spec), (scale, tensor_scale))
  elif kind != MX.kind:  # MX codes stay e8m0: they decode as exponents (below)
    scale = scales.scale_f32(scale, kind)
  if kind == Static.kind:
    return codec.decode_array(bits, src, dtype, scale=scale)
  if kind == Tensor.kind:
    if (scale.size == 1 and bits.size >= _ONE_SCALE_MIN_SIZE
        and significands.supported(src, dtype)):
      return significands.decode_scaled(bits, src, dtype, scale)
    # A per-tensor scale may carry leading batch axes from vmap.
    scale = scale.reshape(scale.shape + (1,) * (bits.ndim - scale.ndim))
    return codec.decode_array(bits, src, dtype, scale=scale)
  axes, block = spec.grouping(bits.ndim)
  if block is None and scale.ndim == bits.ndim:
    # The scales already broadcast against the codes: no grouped view.
    return codec.decode_array(bits, src, dtype, scale=scale)
  view, inner = grouping.grouped(bits, axes, grouping.blocks_for(bits.shape, axes, block))
  if kind == MX.kind:
    # A power of two: exponents move in 16-bit lanes, faster here than the float32
    # product (docs/DESIGN.md §2).
    e = grouping.keepdims(scales.e8m0_exponent(scale), view.shape, inner)
    vals = codec.decode_array(view, src, dtype, pow2=e)
  else:
    vals = codec.decode_array(view, src, dtype,
                              scale=grouping.keepdims(scale, view.shape, inner))
  return grouping.ungrouped(vals, bits.shape, axes)


def quantize(x: ArrayLike, fmt: QuantSpec | formats.FormatLike = "e4m3fn", *, scaling: Any = "tensor",
             axis: int | Sequence[int] = -1, block_size: int | Sequence[int] | None = None,
             pow2: bool = False, margin: int = 0, rounding: Rounding = "nearest",
             overflow: Overflow = "saturate", key: jax.Array | None = None,
             pack: bool = False, axis_name: Any = None, scale: Any = None,
             scale_rounding: str | None = None, nvfp4_rule: str | None = None,
             stacked: bool = False) -> QArray:
  """Quantizes `x` to a small float format with scales: `x ≈ decode(bits) * scale`.

  `quantize(x, spec)` takes everything from a `QuantSpec`; the keyword form
  (`quantize(x, "e4m3fn", scaling="axis")`) builds the same spec
  (`QuantSpec.from_options`) and gives the same bits.

  Args:
    x: bfloat16, float16 or float32 array.
    fmt: a `QuantSpec` (then only `key`, `axis_name` and `scale` may be
      given), or the element format (name, `Format` or float8 dtype).
    scaling: "tensor" (one scale), "axis" (one scale per slice along `axis`),
      "block" (blocks of `block_size` along `axis`, or 2-D tiles), "mx" (OCP
      MX: 32-element blocks along `axis`, e8m0fnu power-of-two scales),
      "nvfp4" (e2m1fn only: 16-element blocks along `axis`, or 16x16 tiles,
      with e4m3fn scales and a float32 tensor scale, by `nvfp4_rule`), or a
      static scale: a positive finite number or float32 array broadcastable
      to `x`, the multiplier that dequantizes.
    axis: the axis the groups run along (per axis, block, MX); for 2-D tiles
      a tuple of two axes (default: the last two).
    block_size: block length for "block": an int, or a tuple such as
      (128, 128) for tiles. Edges need not divide: the last block is short.
      "mx" takes 32 only, "nvfp4" 16 or (16, 16).
    pow2: round each dynamic scale up to a power of two.
    margin: headroom: scale = amax / max * 2^margin (a non-negative int).
    rounding: "nearest", "toward_zero" or "stochastic" (needs `key`).
    overflow: "saturate", "satfinite" or "ieee", for values beyond the range
      (non-finite inputs, and values over a static or MX scale).
    key: a jax.random key, for stochastic rounding.
    pack: FP4 only: pack two codes per byte along the last axis.
    axis_name: for per-shard code inside `shard_map`: the mesh axis name (or
      tuple of names) that split the groups, so that the amax is reduced over
      them too (one all-reduce): for "tensor" every mesh axis x is split
      over, for "axis" those splitting `axis`. Blocks and MX blocks must lie
      within a shard, so they take none. Not needed under `jax.jit`, where
      XLA inserts the reduction itself.
    scale: with a `Static` spec, the scale (as `scaling` in the keyword form).
    scale_rounding: scaling="mx" only: the shared-exponent rule, "floor"
      (OCP MX v1.0, the default), or torchao's "rceil", "ceil", "even".
    nvfp4_rule: scaling="nvfp4" only, and required there: whose formulas to
      reproduce, "torchao", "te", "modelopt" or "compressed-tensors".
    stacked: scaling="nvfp4" only: one tensor scale per index of the axes
      before the last two (stacked experts) instead of one.

  Returns:
    A `QArray`, carrying its spec with the axes resolved for `x`.

  Example:
    >>> q = quantize(jnp.array([[1.0, -2.0], [300.0, 4.0]]), "e4m3fn", scaling="axis")
    >>> q.scale.shape
    (2, 1)
    >>> quantize(jnp.ones((2, 64)), QuantSpec("e4m3fn", Block((32,)))).scale.shape
    (2, 2)
    >>> q = quantize(jnp.ones((2, 64)), "e2m1fn", scaling="nvfp4", nvfp4_rule="te")
    >>> q.scale.shape, q.tensor_scale
    ((2, 4), Array(1., dtype=float32))
  """
  if isinstance(fmt, QuantSpec):
    if scaling != "tensor" or axis != -1 or block_size is not None or pow2 or margin or (
        rounding != "nearest" or overflow != "saturate" or pack or stacked
        or scale_rounding is not None or nvfp4_rule is not None):
      raise ValueError("quantize(x, spec) takes its options from the spec; pass either a "
                       "QuantSpec or keyword options, not both")
    return quantize_as(x, fmt, key, scale, "scale", axis_name)
  checks.float_layout(x, "x")
  if scale is not None:
    raise ValueError("scale= goes with a Static QuantSpec; in the keyword form the static "
                     "scale is scaling=")
  spec = QuantSpec.from_options(fmt, scaling, axis=axis, block_size=block_size,
                                scale_rounding=scale_rounding, nvfp4_rule=nvfp4_rule,
                                stacked=stacked, pow2=pow2, margin=margin, rounding=rounding,
                                overflow=overflow, pack=pack)
  return quantize_as(x, spec, key, None if isinstance(scaling, str) else scaling, "scaling",
                     axis_name)


def quantize_as(x: Any, spec: QuantSpec, key: jax.Array | None, scale: Any, scale_arg: str,
                axis_name: Any = None) -> QArray:
  """`quantize(x, spec)`: checks the arguments `spec` leaves open, then quantizes.

  `scale_arg` is the name the caller gave the static scale, for errors.
  """
  checks.float_layout(x, "x")
  checks.rounding(spec.rounding, key)
  if spec.pack and x.ndim == 0:
    raise ValueError("pack=True needs x with at least one axis")
  spec = spec.resolved(x.ndim)
  if spec.kind == Static.kind:
    if scale is None:
      raise ValueError("a Static spec needs scale=, the multiplier that dequantizes")
    scale = checks.scale_factor(scale, scale_arg, tuple(x.shape), positive=True)
    if tuple(scale.shape) != spec.granularity.shape:
      raise ValueError(f"{scale_arg} of shape {tuple(scale.shape)} does not match the spec's "
                       f"Static{spec.granularity.shape}")
  elif scale is not None:
    raise ValueError(f"scale= applies to a Static spec (got a {spec.kind} spec)")
  if axis_name is not None and spec.grouping(x.ndim)[1] is not None:
    raise ValueError(f"axis_name applies to scaling='tensor' and 'axis'; {spec.kind} groups "
                     "must lie within a shard and need no reduction across shards")
  if isinstance(axis_name, list):
    axis_name = tuple(axis_name)
  bits, q_scale, nan_count, tensor_scale = _quantize(x, key, scale, spec=spec,
                                                     axis_name=axis_name)
  return QArray(bits, q_scale, spec, np.dtype(x.dtype),
                bool(spec.pack and x.shape[-1] % 2), nan_count, tensor_scale)


def dequantize(q: QArray, dtype: Any = jnp.bfloat16) -> jax.Array:
  """The values of a `QArray`: `decode(bits) * scale`, in float32, then `dtype`.

  For NVFP4 the multiplier of each block combines its e4m3fn scale and the
  tensor scale as the rule's stack does (`nvfp4.block_multipliers`).

  Args:
    q: a QArray from `quantize`.
    dtype: bfloat16 (default), float16 or float32.

  Returns:
    An array of `dtype` and `q.shape`.

  Example:
    >>> dequantize(quantize(jnp.array([1.0, -2.0, 448.0])), jnp.float32)
    Array([  1.,  -2., 448.], dtype=float32)
  """
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray (got {type(q).__name__})")
  out_dtype, _ = checks.target_layout(dtype, "dtype")
  return _dequantize(q.bits, q.scale, q.tensor_scale, spec=q.spec, dtype=out_dtype, odd=q.odd)
