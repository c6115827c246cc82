"""Scaled quantization: `quantize`, `dequantize` and their granularities.

Every granularity is one computation over a grouped view of the input: the
grouped axes are padded with zeros to whole blocks and split into
(blocks, block length); the amax is a max over the block dimensions; the
scale is `amax / (max * 2^-margin)`; the codes are `encode(x / scale)`. XLA
fuses the amax reduction, the scale and the cast; there is no Python loop
over blocks. A per-tensor scale is one block covering every axis, a
per-axis scale one block covering `axis`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from fp8jax import _bits
from fp8jax import _checks
from fp8jax import _layout
from fp8jax import convert
from fp8jax import packing
from fp8jax.formats import FORMATS, Format, FormatLike, get_format
from fp8jax.qarray import AXIS, BLOCK, MX, STATIC, TENSOR, QArray

GRANULARITIES = (TENSOR, AXIS, BLOCK, MX)
MX_BLOCK = 32
MX_ELEMENTS = ("e4m3fn", "e5m2", "e2m3fn", "e3m2fn", "e2m1fn")
_E8M0 = FORMATS["e8m0fnu"]
_F32_BIAS = 127
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = 2.0**-126


# --- the grouped view ---------------------------------------------------------

def _blocks_for(shape: Sequence[int], axes: tuple[int, ...], block: tuple[int, ...] | None):
  """Block length per grouped axis: the given ones, or the whole axis."""
  if block is not None:
    return block
  return tuple(max(shape[a], 1) for a in axes)


def _spec(x: jax.Array) -> tuple | None:
  """The explicit sharding spec of x, one entry per dimension, or None.

  Under explicit sharding (meshes made with AxisType.Explicit, the default
  of `jax.make_mesh`), reshapes that split or merge sharded dimensions must
  say where the shards go; under automatic sharding XLA decides.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = tuple(getattr(sharding, "spec", ()) or ())
  spec = spec + (None,) * (x.ndim - len(spec))
  return spec if any(e is not None for e in spec) else None


def _reshape(x: jax.Array, shape: Sequence[int], spec: tuple | None) -> jax.Array:
  if spec is None:
    return x.reshape(tuple(shape))
  mesh = jax.typeof(x).sharding.mesh
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  return lax.reshape(x, tuple(shape), out_sharding=sharding)


def _shards(x: jax.Array, entry) -> int:
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(jax.typeof(x).sharding.mesh.shape[n] for n in names)


def _grouped(x: jax.Array, axes: tuple[int, ...], block: tuple[int, ...], fill=0):
  """Pads `axes` to whole blocks and splits each into (n_blocks, block).

  Returns the view and the positions of the block-length dimensions. A
  sharded dimension keeps its shards on the blocks when they do not
  straddle shards, and on the block itself when one block spans the axis.
  """
  nd = x.ndim
  pos = {a % nd: b for a, b in zip(axes, block)}
  spec = _spec(x)
  pads, shape, inner, out_spec = [], [], [], []
  for d, n in enumerate(x.shape):
    entry = spec[d] if spec else None
    if d in pos:
      b = pos[d]
      nb = -(-n // b)
      pads.append((0, nb * b - n))
      shape += [nb, b]
      inner.append(len(shape) - 1)
      if entry is None:
        out_spec += [None, None]
      elif nb % _shards(x, entry) == 0:
        out_spec += [entry, None]
      elif nb == 1:
        out_spec += [None, entry]
      else:
        raise ValueError(f"blocks of {b} along axis {d - nd} straddle its {_shards(x, entry)} "
                         f"shards of {n // _shards(x, entry)}; choose a block size that divides "
                         "the shard, or reshard x first")
    else:
      pads.append((0, 0))
      shape.append(n)
      out_spec.append(entry)
  if any(p[1] for p in pads):
    x = jnp.pad(x, pads, constant_values=fill)
  return _reshape(x, shape, tuple(out_spec) if spec else None), tuple(inner)


def _merged(v: jax.Array, pairs: set[int]) -> jax.Array:
  """Merges each dimension in `pairs` with the one after it."""
  spec = _spec(v)
  shape, out_spec, i = [], [], 0
  while i < v.ndim:
    if i in pairs:
      shape.append(v.shape[i] * v.shape[i + 1])
      if spec:
        out_spec.append(spec[i] if spec[i] is not None else spec[i + 1])
      i += 2
    else:
      shape.append(v.shape[i])
      if spec:
        out_spec.append(spec[i])
      i += 1
  return _reshape(v, shape, tuple(out_spec) if spec else None)


def _pair_starts(nd: int, axes: tuple[int, ...]) -> set[int]:
  """Positions, in the grouped view, of the n_blocks dimension of each grouped axis."""
  grouped = {a % nd for a in axes}
  starts, i = set(), 0
  for d in range(nd):
    if d in grouped:
      starts.add(i)
      i += 2
    else:
      i += 1
  return starts


def _ungrouped(v: jax.Array, shape: Sequence[int], axes: tuple[int, ...]) -> jax.Array:
  """Inverse of `_grouped`: merge each (n_blocks, block) pair, cut the padding.

  Kept apart from the computation of `v`: fused into it, the merge makes
  XLA:CPU run that loop over the merged shape, indexing the per-block
  scales through it, about four times slower.
  """
  def merge(v):
    v = _merged(v, _pair_starts(len(shape), axes))
    if tuple(v.shape) != tuple(shape):
      v = v[tuple(slice(0, n) for n in shape)]
    return v

  return _apart(merge, v) if v.size else merge(v)


def _apart(f: Callable[[jax.Array], jax.Array], v: jax.Array) -> jax.Array:
  """`f(v)`, computed where XLA cannot fuse it with the computation of `v`.

  Both branches of the conditional are `f`, so the result is `f(v)` either
  way; the predicate passes through an optimization barrier so that XLA
  cannot fold the conditional (a fusion boundary) away.
  """
  one = lax.optimization_barrier(jnp.float32(1))
  return lax.cond(one == one, f, f, v)


def _keepdims(grid: jax.Array, view_shape: Sequence[int], inner: tuple[int, ...]) -> jax.Array:
  """The block grid reshaped to broadcast against the grouped view."""
  spec = _spec(grid)
  shape, out_spec, g = [], [], 0
  for d, n in enumerate(view_shape):
    if d in inner:
      shape.append(1)
      out_spec.append(None)
    else:
      shape.append(n)
      out_spec.append(spec[g] if spec else None)
      g += 1
  return _reshape(grid, shape, tuple(out_spec) if spec else None)


# --- scales ------------------------------------------------------------------

def _abs_max_bits(v: jax.Array, inner: tuple[int, ...], axis_name=None) -> jax.Array:
  """The largest finite magnitude per block, as float32, by integer max.

  Magnitude bit patterns order like the values, so an integer max is exact
  and immune to subnormal flushing; non-finite values count as 0. With
  `axis_name` (inside `shard_map`), the max also runs over those mesh axes.
  """
  src = _checks.FLOAT_LAYOUTS[np.dtype(v.dtype)]
  spec = _spec(v)
  grid = tuple(1 if d in inner else n for d, n in enumerate(v.shape))
  grid_spec = tuple(None if d in inner else e for d, e in enumerate(spec)) if spec else None
  # Unit dimensions (one block spanning a whole axis) make XLA:CPU lay the
  # reduction out with the data transposed, a full copy: drop them first.
  dims = [d for d, n in enumerate(v.shape) if n != 1]
  if len(dims) < v.ndim and v.size:
    v = _reshape(v, [v.shape[d] for d in dims], tuple(spec[d] for d in dims) if spec else None)
    inner = tuple(i for i, d in enumerate(dims) if d in inner)
  if v.ndim == 1 and inner == (0,) and v.size % _ROW == 0 and v.size > _ROW and not spec:
    # A long 1-D reduction is slower than the same one over rows.
    v, inner = v.reshape(-1, _ROW), (0, 1)
  word = jnp.dtype(f"uint{src.bits}")
  u = lax.bitcast_convert_type(v, word) & word.type(src.magnitude_mask)
  u = jnp.where(u < word.type(src.inf_magnitude), u, word.type(0))
  u = _fold_last(u, inner)
  if u.size:
    amax = _reshape(jnp.max(u, axis=inner).astype(jnp.uint32), grid, grid_spec)
  else:
    amax = jnp.zeros(grid, jnp.uint32)
  if axis_name is not None:
    amax = lax.pmax(amax, axis_name)
  # Widen to float32 exactly with the kernel (no float arithmetic).
  wide = _bits.convert(amax, src, _layout.FLOAT32, rounding=_bits.NEAREST, overflow=_bits.IEEE)
  return lax.bitcast_convert_type(wide, jnp.float32)


# XLA:CPU reduces integers through a tree of reduce-windows whose first level
# materializes the elementwise producer (the masked magnitudes) in memory: a
# second full pass. An elementwise max of 8 strided slices fuses with the
# producer and leaves an eighth of the data for the reduction.
_FOLD = 8
_ROW = 1024


def _fold_last(u: jax.Array, inner: tuple[int, ...]) -> jax.Array:
  """Max over runs of _FOLD along the last axis, when that axis is reduced."""
  n = u.shape[-1] if u.ndim else 0
  if u.ndim - 1 not in inner or n % _FOLD or n < 4 * _FOLD:
    return u
  spec = _spec(u)
  entry = spec[-1] if spec else None
  if entry is not None and (n // _FOLD) % _shards(u, entry):
    return u  # the fold would move data between shards
  w = _reshape(u, u.shape[:-1] + (n // _FOLD, _FOLD),
               spec[:-1] + (entry, None) if spec else None)
  return functools.reduce(jnp.maximum, [w[..., i] for i in range(_FOLD)])


def _pow2_up(s: jax.Array) -> jax.Array:
  """The smallest power of two >= s, for positive finite float32 s."""
  u = lax.bitcast_convert_type(s, jnp.uint32)
  mant_mask = jnp.uint32((1 << 23) - 1)
  normal = (u + mant_mask) & ~mant_mask  # a carry moves into the exponent
  # Subnormal: the next power of two of the integer significand.
  m = jnp.maximum(u, jnp.uint32(1)) - jnp.uint32(1)
  sub = jnp.where(u <= 1, u, jnp.uint32(1) << (jnp.uint32(32) - lax.clz(m)))
  return lax.bitcast_convert_type(jnp.where(u > mant_mask, normal, sub), jnp.float32)


def _dynamic_scale(amax: jax.Array, fmt: Format, pow2: bool, margin: int) -> jax.Array:
  target = fmt.max * 2.0 ** -margin  # exact: a power-of-two multiple
  # Scales stay normal floats, in [2^-126, float32 max]; past the top the
  # values saturate, below the bottom tiny blocks use fewer codes.
  scale = _clamp_positive(convert.divide_f32(amax, jnp.float32(target)), _F32_TINY, _F32_MAX)
  if pow2:
    scale = _clamp_positive(_pow2_up(scale), _F32_TINY, 2.0**127)
  return jnp.where(_is_positive(amax), scale, jnp.float32(1))


# Scales and amaxes may be float32 subnormals, which XLA:CPU flushes in float
# comparisons; non-negative floats order like their bit patterns, so compare those.
def _is_positive(a: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(a, jnp.uint32) != 0


def _clamp_positive(a: jax.Array, lo: float, hi: float) -> jax.Array:
  lo_bits, hi_bits = np.array([lo, hi], np.float32).view(np.uint32)
  u = jnp.clip(lax.bitcast_convert_type(a, jnp.uint32), jnp.uint32(lo_bits), jnp.uint32(hi_bits))
  return lax.bitcast_convert_type(u, jnp.float32)


def max_positive(a: jax.Array, axis=None) -> jax.Array:
  """The max of non-negative float32 values, exact for subnormals."""
  return lax.bitcast_convert_type(
      jnp.max(lax.bitcast_convert_type(a, jnp.uint32), axis=axis), jnp.float32)


def _floor_log2(amax: jax.Array) -> jax.Array:
  """floor(log2(a)) for positive float32 a, from the bits."""
  u = lax.bitcast_convert_type(amax, jnp.uint32)
  exp = (u >> 23).astype(jnp.int32)
  sub = (31 - lax.clz(u).astype(jnp.int32)) - 149
  return jnp.where(exp > 0, exp - _F32_BIAS, sub)


def mx_scale_codes(amax: jax.Array, fmt: Format) -> jax.Array:
  """OCP MX v1.0 shared exponents as e8m0fnu codes.

  X = 2^(floor(log2(amax)) - emax), emax being the exponent of the element
  format's largest normal: the spec's choice, which keeps every element's
  exponent in range and clamps (saturates) the few whose significand then
  exceeds the element maximum. An all-zero block gets X = 1.
  """
  emax = math.floor(math.log2(fmt.max))
  e = _floor_log2(amax)
  code = jnp.clip(e - emax + _F32_BIAS, 0, 254)
  return jnp.where(_is_positive(amax), code, _F32_BIAS).astype(jnp.uint8)


def amax(x: Any, axis_name: Any = None) -> jax.Array:
  """The largest finite |x| as a float32 scalar (0 if there is none).

  Args:
    x: bfloat16, float16 or float32 array.
    axis_name: inside `shard_map`, the mesh axes x is split over: the max
      then covers the whole array (one all-reduce).

  Example:
    >>> amax(jnp.array([1.0, -3.0, jnp.inf]))
    Array(3., dtype=float32)
  """
  _checks.float_layout(x, "x")
  return _amax_all(x, axis_name)


@functools.partial(jax.jit, static_argnums=1)
def _amax_all(x, axis_name):
  return _abs_max_bits(x, tuple(range(x.ndim)), axis_name).reshape(())


def scale_from_amax(amax: Any, fmt: FormatLike = "e4m3fn", *, pow2: bool = False,
                    margin: int = 0) -> jax.Array:
  """The dynamic scale for an amax: amax / max * 2^margin, or 1 where amax is 0.

  Example:
    >>> scale_from_amax(jnp.float32(448.0), "e4m3fn")
    Array(1., dtype=float32)
  """
  return _dynamic_scale(jnp.asarray(amax, jnp.float32), get_format(fmt), pow2, margin)


def _scale_f32(q_scale: jax.Array, granularity: str) -> jax.Array:
  if granularity == MX:
    return convert.decode_array(q_scale, _E8M0.layout, np.dtype(np.float32))
  return q_scale


# --- quantize / dequantize ---------------------------------------------------

# From this many elements on, a 16-bit input divided by one scale is encoded
# through a table of all 65,536 codes: 65,536 exact divisions and one gather
# instead of a float32 division per element (XLA:CPU's vector division costs
# more than the rest of the cast).
_TABLE_MIN_SIZE = 1 << 18


def _encode_divided(x: jax.Array, dst: _layout.Layout, scale: jax.Array, rounding: str,
                    overflow: str, key: jax.Array | None) -> jax.Array:
  """`encode(x / scale)`, through a code table where that is exact and pays."""
  if (rounding == _bits.STOCHASTIC or np.dtype(x.dtype).itemsize != 2 or scale.size != 1
      or x.size < _TABLE_MIN_SIZE or _spec(x) is not None):
    return convert.encode_array(x, dst, rounding=rounding, overflow=overflow, key=key,
                                scale=scale, divide=True)
  def build(s):
    every = lax.bitcast_convert_type(lax.iota(jnp.uint16, 1 << 16), x.dtype)
    return convert.encode_array(every, dst, rounding=rounding, overflow=overflow, scale=s,
                                divide=True)

  # Apart, or XLA fuses the table into the gather and redoes it per element.
  table = _apart(build, scale.reshape(()))
  return table[lax.bitcast_convert_type(x, jnp.uint16)]


@functools.partial(jax.jit, static_argnames=(
    "fmt", "granularity", "axes", "block", "pow2", "margin", "rounding", "overflow", "pack",
    "axis_name"))
def _quantize(x, key, static_scale, *, fmt, granularity, axes, block, pow2, margin, rounding,
              overflow, pack, axis_name):
  dst = fmt.layout
  if granularity == STATIC:
    bits = _encode_divided(x, dst, static_scale, rounding, overflow, key)
    scale = static_scale
  elif x.size == 0 and granularity in (TENSOR, AXIS):
    # No values: the scale of an all-zero group, in the layout's shape.
    bits = jnp.zeros(x.shape, jnp.uint8)
    shape = () if granularity == TENSOR else tuple(
        1 if d - x.ndim in axes else n for d, n in enumerate(x.shape))
    scale = jnp.ones(shape, jnp.float32)
  else:
    blocks = _blocks_for(x.shape, axes, block)
    view, inner = _grouped(x, axes, blocks)
    amax = _abs_max_bits(view, inner, axis_name)
    if granularity == MX:
      scale_kd = mx_scale_codes(amax, fmt)
      divisor = _scale_f32(scale_kd, MX)
    else:
      scale_kd = divisor = _dynamic_scale(amax, fmt, pow2, margin)
    if granularity == TENSOR:
      scale = scale_kd.reshape(())
      bits = _encode_divided(x, dst, scale, rounding, overflow, key)
    else:
      codes = convert.encode_array(view, dst, rounding=rounding, overflow=overflow, key=key,
                                   scale=divisor, divide=True)
      bits = _ungrouped(codes, x.shape, axes)
      scale = _merged(scale_kd, _pair_starts(x.ndim, axes))
  if pack:
    bits = packing._pack(bits)
  # Formats without NaN encode NaN as a zero: count them, so none vanish unseen.
  nan_count = None if fmt.has_nan else jnp.sum(jnp.isnan(x), dtype=jnp.int32)
  return bits, scale, nan_count


@functools.partial(jax.jit, static_argnames=("fmt", "granularity", "axes", "block", "dtype",
                                             "packed", "odd"))
def _dequantize(bits, scale, *, fmt, granularity, axes, block, dtype, packed, odd):
  if packed:
    bits = packing._unpack(bits, 2 * bits.shape[-1] - int(odd))
  if bits.size == 0:
    return jnp.zeros(bits.shape, dtype)
  scale = _scale_f32(scale, granularity)
  if granularity == STATIC:
    return convert.decode_array(bits, fmt.layout, dtype, scale=scale)
  if granularity == TENSOR:
    # A per-tensor scale may carry leading batch axes from vmap.
    scale = scale.reshape(scale.shape + (1,) * (bits.ndim - scale.ndim))
    return convert.decode_array(bits, fmt.layout, dtype, scale=scale)
  if granularity == AXIS and scale.ndim == bits.ndim:
    # The scales already broadcast against the codes: no grouped view.
    return convert.decode_array(bits, fmt.layout, dtype, scale=scale)
  blocks = _blocks_for(bits.shape, axes, block)
  view, inner = _grouped(bits, axes, blocks)
  vals = convert.decode_array(view, fmt.layout, dtype, scale=_keepdims(scale, view.shape, inner))
  return _ungrouped(vals, bits.shape, axes)


def quantize(x: Any, fmt: FormatLike = "e4m3fn", *, scaling: Any = "tensor",
             axis: int | Sequence[int] = -1, block_size: int | Sequence[int] | None = None,
             pow2: bool = False, margin: int = 0, rounding: str = "nearest",
             overflow: str = "saturate", key: jax.Array | None = None,
             pack: bool = False, axis_name: Any = None) -> QArray:
  """Quantizes `x` to a small float format with scales: `x ≈ decode(bits) * scale`.

  Args:
    x: bfloat16, float16 or float32 array.
    fmt: element format (name, `Format` or float8 dtype).
    scaling: "tensor" (one scale), "axis" (one scale per slice along `axis`),
      "block" (blocks of `block_size` along `axis`, or 2-D tiles), "mx" (OCP
      MX: 32-element blocks along `axis`, e8m0fnu power-of-two scales), or a
      static scale: a positive finite number or float32 array broadcastable
      to `x`, the multiplier that dequantizes.
    axis: the axis the groups run along (per axis, block, MX); for 2-D tiles
      a tuple of two axes (default: the last two).
    block_size: block length for "block": an int, or a tuple such as
      (128, 128) for tiles. Edges need not divide: the last block is short.
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

  Returns:
    A `QArray`.

  Example:
    >>> q = quantize(jnp.array([[1.0, -2.0], [300.0, 4.0]]), "e4m3fn", scaling="axis")
    >>> q.scale.shape
    (2, 1)
  """
  _checks.float_layout(x, "x")
  f = get_format(fmt)
  _checks.rounding(rounding, key)
  _checks.overflow(overflow)
  if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
    raise ValueError(f"margin must be a non-negative int (got {margin!r})")
  if not f.signed:
    raise ValueError(f"fmt {f.name!r} is unsigned (a scale format); quantize needs a signed "
                     "element format")
  if pack and f.bits != 4:
    raise ValueError(f"pack=True packs 4-bit formats; fmt {f.name!r} has {f.bits} bits")
  if pack and x.ndim == 0:
    raise ValueError("pack=True needs x with at least one axis")
  granularity, axes, block, static = _plan(x, f, scaling, axis, block_size, pow2)
  if axis_name is not None and granularity not in (TENSOR, AXIS):
    raise ValueError(f"axis_name applies to scaling='tensor' and 'axis'; {granularity} groups "
                     "must lie within a shard and need no reduction across shards")
  if isinstance(axis_name, list):
    axis_name = tuple(axis_name)
  bits, scale, nan_count = _quantize(
      x, key, static, fmt=f, granularity=granularity, axes=axes, block=block, pow2=bool(pow2),
      margin=int(margin), rounding=rounding, overflow=overflow, pack=bool(pack),
      axis_name=axis_name)
  return QArray(bits, scale, f, granularity, axes, block, np.dtype(x.dtype), bool(pack),
                bool(pack and x.shape[-1] % 2), nan_count)


def dequantize(q: QArray, dtype: Any = jnp.bfloat16) -> jax.Array:
  """The values of a `QArray`: `decode(bits) * scale`, in float32, then `dtype`.

  Args:
    q: a QArray from `quantize`.
    dtype: bfloat16 (default), float16 or float32.

  Returns:
    An array of `dtype` and `q.shape`.

  Example:
    >>> dequantize(quantize(jnp.array([1.0, -2.0, 3.0])), jnp.float32)
    Array([ 1., -2.,  3.], dtype=float32)
  """
  if not isinstance(q, QArray):
    raise TypeError(f"q must be a QArray (got {type(q).__name__})")
  out_dtype, _ = _checks.target_layout(dtype, "dtype")
  return _dequantize(q.bits, q.scale, fmt=q.fmt, granularity=q.granularity, axes=q.axes,
                     block=q.block, dtype=out_dtype, packed=q.packed, odd=q.odd)


def _plan(x, fmt: Format, scaling, axis, block_size, pow2):
  """Checks the granularity arguments; returns (granularity, axes, block, static)."""
  nd = x.ndim
  if not isinstance(scaling, str):
    static = _static_scale(scaling, x.shape)
    if pow2:
      raise ValueError("pow2 rounds dynamic scales; a static scale is used as given")
    return STATIC, (), None, static
  if scaling not in GRANULARITIES:
    raise ValueError(f"scaling must be one of {', '.join(map(repr, GRANULARITIES))} or a "
                     f"static scale (got {scaling!r})")
  if scaling == TENSOR:
    return TENSOR, tuple(range(-nd, 0)), None, None
  if scaling == MX:
    if fmt.name not in MX_ELEMENTS or fmt != FORMATS[fmt.name]:
      raise ValueError(f"scaling='mx' needs an MX element format, one of "
                       f"{', '.join(MX_ELEMENTS)} (got {fmt.name!r})")
    if block_size not in (None, MX_BLOCK):
      raise ValueError(f"scaling='mx' uses blocks of {MX_BLOCK} (got block_size={block_size!r})")
    if pow2:
      raise ValueError("pow2 does not apply to scaling='mx': its scales are powers of two")
    return MX, (_axis(axis, nd),), (MX_BLOCK,), None
  if scaling == AXIS:
    if block_size is not None:
      raise ValueError("block_size applies to scaling='block' (got scaling='axis')")
    return AXIS, (_axis(axis, nd),), None, None
  # BLOCK
  sizes = (block_size,) if not isinstance(block_size, (tuple, list)) else tuple(block_size)
  if (block_size is None or not sizes or any(isinstance(b, bool) or not isinstance(
      b, (int, np.integer)) or b <= 0 for b in sizes)):
    raise ValueError("block_size must be a positive int or a tuple of them for "
                     f"scaling='block' (got {block_size!r})")
  k = len(sizes)
  if isinstance(axis, (tuple, list)):
    axes = tuple(axis)
  elif k == 1:
    axes = (axis,)
  elif axis == -1:
    axes = tuple(range(-k, 0))  # tiles over the last k axes
  else:
    raise ValueError(f"block_size {tuple(sizes)} tiles {k} axes; axis must be a tuple of {k} "
                     f"axes (got {axis!r})")
  if len(axes) != k:
    raise ValueError(f"block_size {tuple(sizes)} has {k} entries but axis {axis!r} names "
                     f"{len(axes)} axes")
  axes = tuple(_axis(a, nd) for a in axes)
  if len(set(axes)) != k:
    raise ValueError(f"axis must name distinct axes (got {axis!r})")
  order = sorted(range(k), key=lambda i: axes[i])
  return BLOCK, tuple(axes[i] for i in order), tuple(int(sizes[i]) for i in order), None


def _axis(axis: Any, nd: int) -> int:
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    raise TypeError(f"axis must be an int (got {type(axis).__name__})")
  if not -nd <= axis < nd:
    raise ValueError(f"axis {axis} is out of range for a {nd}-D x")
  return int(axis) % nd - nd  # negative: stable when vmap adds leading axes


def _static_scale(scale: Any, shape: Sequence[int]) -> jax.Array:
  return _checks.scale_factor(scale, "scaling", tuple(shape), positive=True)
