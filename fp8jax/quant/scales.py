"""Scales from amaxes: the amax reduction, dynamic scales and MX shared exponents."""

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


def abs_max_bits(v: jax.Array, inner: tuple[int, ...], axis_name=None) -> jax.Array:
  """The largest finite magnitude per block, as float32, by integer max.

  Magnitude bit patterns order like the values, so an integer max is exact
  and immune to subnormal flushing; non-finite values count as 0. With
  `axis_name` (inside `shard_map`), the max also runs over those mesh axes.
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
  u = jnp.where(u < word.type(src.inf_magnitude), u, word.type(0))
  u = _fold_last(u, inner)
  if u.size:
    amax = grouping.reshape(jnp.max(u, axis=inner).astype(jnp.uint32), grid, grid_spec)
  else:
    amax = jnp.zeros(grid, jnp.uint32)
  if axis_name is not None:
    amax = lax.pmax(amax, axis_name)
  # Widen to float32 exactly with the kernel (no float arithmetic).
  wide = kernel.convert(amax, src, layout.FLOAT32, rounding=kernel.NEAREST, overflow=kernel.IEEE)
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
  spec = grouping.sharding_spec(u)
  entry = spec[-1] if spec else None
  if entry is not None and (n // _FOLD) % grouping.shards(u, entry):
    return u  # the fold would move data between shards
  w = grouping.reshape(u, u.shape[:-1] + (n // _FOLD, _FOLD),
               spec[:-1] + (entry, None) if spec else None)
  return functools.reduce(jnp.maximum, [w[..., i] for i in range(_FOLD)])




def dynamic_scale(amax: jax.Array, fmt: Format, pow2: bool, margin: int) -> jax.Array:
  target = fmt.max * 2.0 ** -margin  # exact: a power-of-two multiple
  # Scales stay normal floats, in [2^-126, float32 max]; past the top the
  # values saturate, below the bottom tiny blocks use fewer codes.
  scale = f32.clamp_positive(codec.divide_f32(amax, jnp.float32(target)), f32.TINY, f32.MAX)
  if pow2:
    scale = f32.clamp_positive(f32.pow2_up(scale), f32.TINY, 2.0**127)
  return jnp.where(f32.is_positive(amax), scale, jnp.float32(1))










def mx_scale_codes(amax: jax.Array, fmt: Format) -> jax.Array:
  """OCP MX v1.0 shared exponents as e8m0fnu codes.

  X = 2^(floor(log2(amax)) - emax), emax being the exponent of the element
  format's largest normal: the spec's choice, which keeps every element's
  exponent in range and clamps (saturates) the few whose significand then
  exceeds the element maximum. An all-zero block gets X = 1.
  """
  emax = math.floor(math.log2(fmt.max))
  e = f32.floor_log2(amax)
  code = jnp.clip(e - emax + f32.BIAS, 0, 254)
  return jnp.where(f32.is_positive(amax), code, f32.BIAS).astype(jnp.uint8)


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
  """A QArray's scale as the float32 multiplier: MX scales are e8m0fnu codes."""
  return f32.from_e8m0(scale) if kind == MX.kind else scale

