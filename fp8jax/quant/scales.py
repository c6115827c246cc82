"""Scales from amaxes: the amax reduction, dynamic scales and MX shared exponents.

MX shared exponents (`mx_scale_codes`), per rule, for an element format with
largest normal exponent emax (8 e4m3fn, 15 e5m2, 2 e2m3fn, 4 e3m2fn, 2 e2m1fn)
and mbits mantissa bits; amax is the block's largest |x|:

| rule | code (e8m0, 2^(code - 127)) | amax of | encode divides by |
| --- | --- | --- | --- |
| floor (OCP MX v1.0) | clip(floor(log2 amax) - emax + 127, 0, 254); 127 if amax = 0 | finite values | 2^(code - 127) |
| ceil (torchao CEIL) | clip(e + (mantissa != 0) - emax, -127, 128) + 127, e the biased exponent field - 127 | every value | 2^(code - 127), 2^-126 for code 0, inf for 255 |
| even (torchao EVEN) | clip(e - emax, -127, 128) + 127, e the exponent of amax's bits + 2^(22 - mbits) (amax rounded half up to the element's precision) | every value | as ceil |
| rceil (torchao RCEIL, cuBLAS) | clip(ceil(log2(amax / max)), -127, 127) + 127, the quotient rounded to float32 | every value | 2^(code - 127), 1 for code 0 |

For ceil, even and rceil a NaN in the block gives code 255 (NaN); an
infinity gives 255 - emax (ceil, even) or 254 (rceil); an all-zero block code
0. The divisor quirks are torchao's: a code-0 block is encoded against 2^-126
(ceil, even) or 1 (rceil) while its scale stands for 2^-127. rceil's ceiling
is exact, as cuBLAS and cvt.rp.satfinite.ue8m0x2.f32 compute it; torchao's
CPU fallback takes the ceiling of a float32 log2, which comes out one lower
when amax / max lies a few float32 steps above a power of two far from 1.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from fp8jax.core import checks, codec, f32, kernel, layout
from fp8jax.core.formats import Format, FormatLike, get_format
from fp8jax.quant import grouping
from fp8jax.quant.spec import MX


def abs_max_bits(v: jax.Array, inner: tuple[int, ...], axis_name=None,
                 finite: bool = True, blocks: bool = False) -> jax.Array:
  """The largest finite magnitude per block, as float32, by integer max.

  Magnitude bit patterns order like the values, so an integer max is exact
  and immune to subnormal flushing; non-finite values count as 0. With
  `finite=False` they count as themselves, as `torch.amax(torch.abs(x))`
  does: any NaN gives NaN, else any infinity gives infinity. With
  `axis_name` (inside `shard_map`), the max also runs over those mesh axes.
  `blocks` says the reduced dimensions are blocks, which lie within a shard
  (block and MX scaling): only then are they reduced by halves
  (`_max_last`), whose slices would move data between the shards of an
  axis split by automatic sharding.
  """
  src = layout.FLOAT_LAYOUTS[np.dtype(v.dtype)]
  spec = grouping.sharding_spec(v)
  grid = tuple(1 if d in inner else n for d, n in enumerate(v.shape))
  grid_spec = tuple(None if d in inner else e for d, e in enumerate(spec)) if spec else None
  # Unit dimensions (one block spanning a whole axis) make XLA:CPU lay the
  # reduction out with the data transposed, a full copy: drop them first.
  dims = [d for d, n in enumerate(v.shape) if n != 1]
  if len(dims) < v.ndim and v.size:
    v = grouping.reshape(v, [v.shape[d] for d in dims], tuple(spec[d] for d in dims) if spec else None)
    inner = tuple(i for i, d in enumerate(dims) if d in inner)
  if v.ndim == 1 and inner == (0,) and v.size % _ROW == 0 and v.size > _ROW and not spec:
    # A long 1-D reduction is slower than the same one over rows.
    v, inner = v.reshape(-1, _ROW), (0, 1)
  word = jnp.dtype(f"uint{src.bits}")
  u = lax.bitcast_convert_type(v, word) & word.type(src.magnitude_mask)
  inf = word.type(src.inf_magnitude)
  # Non-finite magnitudes already order as the NaN-first max wants; the select
  # (which sets a bit they all have) keeps XLA:CPU's fast reduction layout.
  u = jnp.where(u < inf, u, word.type(0) if finite else u | word.type(1 << (src.bits - 2)))
  if blocks and u.size and not spec and u.ndim - 1 in inner and _fast_last(u):
    u = _max_last(u)
    inner = tuple(d for d in inner if d < u.ndim)
    # The rows of a tile, likewise by halves (a reduction there is 7x slower).
    for d in inner:
      while 1 < u.shape[d] <= _ROW and u.shape[d] % 2 == 0:
        half = u.shape[d] // 2
        u = jnp.maximum(lax.slice_in_dim(u, 0, half, axis=d),
                        lax.slice_in_dim(u, half, 2 * half, axis=d))
  else:
    u = _fold_last(u, inner)
  if u.size:
    amax = u if not inner else jnp.max(u, axis=inner)
    amax = grouping.reshape(amax.astype(jnp.uint32), grid, grid_spec)
  else:
    amax = jnp.zeros(grid, jnp.uint32)
  if axis_name is not None:
    amax = lax.pmax(amax, axis_name)
  # Widen to float32 exactly with the kernel (no float arithmetic).
  wide = kernel.convert(amax, src, layout.FLOAT32, rounding=kernel.NEAREST, overflow=kernel.IEEE)
  return lax.bitcast_convert_type(wide, jnp.float32)


# XLA:CPU reduces integers through a tree of reduce-windows whose first level
# materializes the elementwise producer (the masked magnitudes) in memory: a
# second full pass. An elementwise max (or sum) of 8 strided slices fuses with
# the producer and leaves an eighth of the data for the reduction: a NaN count
# of 16M bfloat16 values takes 2 ms this way against 37 ms without.
_FOLD = 8
_ROW = 1024


def _fold_last(u: jax.Array, inner: tuple[int, ...], op=jnp.maximum) -> jax.Array:
  """`op` (max, or add) over runs of _FOLD along the last axis, when that axis is reduced."""
  n = u.shape[-1] if u.ndim else 0
  if u.ndim - 1 not in inner or n % _FOLD or n < 4 * _FOLD:
    return u
  spec = grouping.sharding_spec(u)
  entry = spec[-1] if spec else None
  if entry is not None and (n // _FOLD) % grouping.shards(u, entry):
    return u  # the fold would move data between shards
  w = grouping.reshape(u, u.shape[:-1] + (n // _FOLD, _FOLD),
               spec[:-1] + (entry, None) if spec else None)
  return functools.reduce(op, [w[..., i] for i in range(_FOLD)])


def _fast_last(u: jax.Array) -> bool:
  n = u.shape[-1]
  return u.dtype == jnp.uint16 and n >= 32 and n & (n - 1) == 0


def _max_last(u: jax.Array) -> jax.Array:
  """The max over the last axis of 16-bit magnitudes, its length a power of two >= 32.

  XLA:CPU (JAX 0.10) lays a reduction over a long minor axis out one element
  at a time, 15x slower than this: elementwise maxima of halves down to 32
  elements (8 from 512 on), then a reduction; 32 itself reduces twice as
  fast in 32-bit lanes (`benchmarks/phrasings.py`). Blocks of 16 reduce as
  fast as written.
  """
  n = u.shape[-1]
  if n == 32:
    return jnp.max(u.astype(jnp.int32), axis=-1).astype(u.dtype)
  stop = 8 if n >= 512 else 32
  while u.shape[-1] > stop:
    half = u.shape[-1] // 2
    u = jnp.maximum(u[..., :half], u[..., half:])
  return jnp.max(u, axis=-1)


def nan_count(x: jax.Array, block: int | None = None) -> jax.Array:
  """The number of NaNs in a bfloat16/float16/float32 array (int32), from the bits.

  `block`: the length of the blocks along the last axis, which lie within a
  shard (block and MX scaling), if any: then the count runs over chunks of 32
  (or 16) elements of a block in 16-bit lanes first, which XLA:CPU sums two
  to three times faster than the whole array (`benchmarks/phrasings.py`).
  """
  src = layout.FLOAT_LAYOUTS[np.dtype(x.dtype)]
  word = jnp.dtype(f"uint{src.bits}")
  u = lax.bitcast_convert_type(x, word) & word.type(src.magnitude_mask)
  is_nan = u > word.type(src.inf_magnitude)
  n = x.shape[-1] if x.ndim else 0
  chunk = next((c for c in (32, 16) if block and block % c == 0), None)
  if src.bits == 16 and chunk and n % chunk == 0 and not grouping.sharding_spec(x):
    c = is_nan.astype(jnp.uint16).reshape(x.shape[:-1] + (n // chunk, chunk))
    return jnp.sum(jnp.sum(c, axis=-1, dtype=jnp.uint16), dtype=jnp.int32)
  return jnp.sum(_fold_last(is_nan.astype(jnp.int32), tuple(range(x.ndim)), jnp.add),
                 dtype=jnp.int32)


def dynamic_scale(amax: jax.Array, fmt: Format, pow2: bool, margin: int) -> jax.Array:
  target = fmt.max * 2.0 ** -margin  # exact: a power-of-two multiple
  # Scales stay normal floats, in [2^-126, float32 max]; past the top the
  # values saturate, below the bottom tiny blocks use fewer codes.
  scale = f32.clamp_positive(codec.divide_f32(amax, jnp.float32(target)), f32.TINY, f32.MAX)
  if pow2:
    scale = f32.clamp_positive(f32.pow2_up(scale), f32.TINY, 2.0**127)
  return jnp.where(f32.is_positive(amax), scale, jnp.float32(1))


def mx_scale_codes(amax: jax.Array, fmt: Format, rule: str = "floor") -> jax.Array:
  """MX shared exponents as e8m0fnu codes, by `rule` (the module's table).

  floor: X = 2^(floor(log2(amax)) - emax), emax being the exponent of the
  element format's largest normal: the OCP MX v1.0 choice, which keeps every
  element's exponent in range and clamps (saturates) the few whose
  significand then exceeds the element maximum. An all-zero block gets X = 1.
  The other rules are torchao's `to_mx` (ScaleCalculationMode), from the bits
  of an amax that includes NaN and infinities.
  """
  emax = math.floor(math.log2(fmt.max))
  if rule == "floor":
    e = f32.floor_log2(amax)
    code = jnp.clip(e - emax + f32.BIAS, 0, 254)
    return jnp.where(f32.is_positive(amax), code, f32.BIAS).astype(jnp.uint8)
  u = lax.bitcast_convert_type(amax, jnp.uint32)
  if rule == "rceil":
    # ceil(log2(amax / max)), the quotient correctly rounded in float32.
    d = f32.div(amax, jnp.float32(fmt.max))
    k = f32.floor_log2(d) + (~f32.is_pow2(d)).astype(jnp.int32)
    code = jnp.clip(k, -f32.BIAS, f32.BIAS) + f32.BIAS
    code = jnp.where(f32.is_positive(d), code, 0)
    code = jnp.where(f32.is_inf(d), 254, code)
  else:
    if rule == "even":
      # Round amax to the element's precision (ties away), then take the floor.
      mant_bits = fmt.mantissa_bits
      u = (u + jnp.uint32(1 << (f32.MANTISSA_BITS - mant_bits - 1))) & jnp.uint32(0x7F800000)
    e = (u >> f32.MANTISSA_BITS).astype(jnp.int32) - f32.BIAS
    if rule == "ceil":
      e = e + ((u & jnp.uint32((1 << f32.MANTISSA_BITS) - 1)) != 0).astype(jnp.int32)
    code = jnp.clip(e - emax, -f32.BIAS, f32.BIAS + 1) + f32.BIAS
  return jnp.where(f32.is_nan(amax), 255, code).astype(jnp.uint8)


def mx_exponent(codes: jax.Array, rule: str) -> jax.Array:
  """The block's divisor under `rule`, as e with x / divisor = x * 2^e (int32).

  The divisor is 2^(code - 127), except for torchao's quirks: ceil and even
  build it from the code's bits (code 255 is infinity) and clamp it to
  2^-126; rceil multiplies by 2^(127 - code), by 1 for code 0 and by NaN for
  code 255. An infinite divisor is `kernel.POW2_ZERO`, a NaN one
  `kernel.POW2_NAN`: the encode moves exponents in the input's lanes
  (`kernel.convert`'s pow2) instead of dividing in float32.
  """
  e = f32.BIAS - codes.astype(jnp.int32)
  if rule == "floor":
    return e
  if rule == "rceil":
    e = jnp.where(codes == 0, 0, e)
    return jnp.where(codes == 255, kernel.POW2_NAN, e)
  e = jnp.where(codes == 0, f32.BIAS - 1, e)
  return jnp.where(codes == 255, kernel.POW2_ZERO, e)


def e8m0_exponent(codes: jax.Array) -> jax.Array:
  """e8m0fnu codes as the exponents of the powers of two they stand for
  (int32; `kernel.POW2_NAN` for the NaN code 255)."""
  e = codes.astype(jnp.int32) - f32.BIAS
  return jnp.where(codes == 255, kernel.POW2_NAN, e)


def amax(x: ArrayLike, axis_name: Any = None) -> jax.Array:
  """The largest finite |x| as a float32 scalar (0 if there is none).

  Args:
    x: bfloat16, float16 or float32 array.
    axis_name: inside `shard_map`, the mesh axes x is split over: the max
      then covers the whole array (one all-reduce).

  Example:
    >>> amax(jnp.array([1.0, -3.0, jnp.inf]))
    Array(3., dtype=float32)
  """
  checks.float_layout(x, "x")
  return _amax_all(x, axis_name)


@functools.partial(jax.jit, static_argnums=1)
def _amax_all(x, axis_name):
  return abs_max_bits(x, tuple(range(x.ndim)), axis_name).reshape(())


def scale_from_amax(amax: ArrayLike, fmt: FormatLike = "e4m3fn", *, pow2: bool = False,
                    margin: int = 0) -> jax.Array:
  """The dynamic scale for an amax: amax / max * 2^margin, or 1 where amax is 0.

  Example:
    >>> scale_from_amax(jnp.float32(448.0), "e4m3fn")
    Array(1., dtype=float32)
  """
  return dynamic_scale(jnp.asarray(amax, jnp.float32), get_format(fmt), pow2, margin)


def scale_f32(scale: jax.Array, kind: str) -> jax.Array:
  """A QArray's scale as the float32 multiplier: MX scales are e8m0fnu codes.

  NVFP4 block scales (e4m3fn codes) need the tensor scale too:
  `nvfp4.block_multipliers`.
  """
  return f32.from_e8m0(scale) if kind == MX.kind else scale

