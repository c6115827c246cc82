"""The grouped view: every granularity as blocks along some axes, sharding-aware.

The grouped axes are padded with zeros to whole blocks and split into
(blocks, block length); a reduction over the block-length dimensions gives
one value per group. A per-tensor group is one block covering every axis, a
per-axis group one block covering its axis. Under explicit sharding, the
reshapes say where the shards go.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import jax
from jax import lax
import jax.numpy as jnp

from fp8jax.core.fusion import apart


def blocks_for(shape: Sequence[int], axes: tuple[int, ...], block: tuple[int, ...] | None):
  """Block length per grouped axis: the given ones, clipped to the axis, or the whole axis.

  A block longer than its axis is one block spanning the axis either way;
  clipped, it is never padded (a block of 2^30 on a 4x4 array would be).
  """
  if block is None:
    return tuple(max(shape[a], 1) for a in axes)
  return tuple(min(b, max(shape[a], 1)) for a, b in zip(axes, block, strict=True))


def sharding_spec(x: jax.Array) -> tuple | None:
  """The explicit sharding spec of x, one entry per dimension, or None.

  Under explicit sharding (meshes made with AxisType.Explicit, the default
  of `jax.make_mesh`), reshapes that split or merge sharded dimensions must
  say where the shards go; under automatic sharding XLA decides.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = tuple(getattr(sharding, "spec", ()) or ())
  spec = spec + (None,) * (x.ndim - len(spec))
  return spec if any(e is not None for e in spec) else None


def reshape(x: jax.Array, shape: Sequence[int], spec: tuple | None) -> jax.Array:
  if spec is None:
    return x.reshape(tuple(shape))
  mesh = jax.typeof(x).sharding.mesh
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  return lax.reshape(x, tuple(shape), out_sharding=sharding)


def shards(x: jax.Array, entry) -> int:
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(jax.typeof(x).sharding.mesh.shape[n] for n in names)


def grouped(x: jax.Array, axes: tuple[int, ...], block: tuple[int, ...], fill=0):
  """Pads `axes` to whole blocks and splits each into (n_blocks, block).

  Returns the view and the positions of the block-length dimensions. A
  sharded dimension keeps its shards on the blocks when they do not
  straddle shards, and on the block itself when one block spans the axis.
  """
  nd = x.ndim
  pos = {a % nd: b for a, b in zip(axes, block, strict=False)}
  spec = sharding_spec(x)
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
      elif nb % shards(x, entry) == 0:
        out_spec += [entry, None]
      elif nb == 1:
        out_spec += [None, entry]
      else:
        raise ValueError(f"blocks of {b} along axis {d - nd} straddle its {shards(x, entry)} "
                         f"shards of {n // shards(x, entry)}; choose a block size that divides "
                         "the shard, or reshard x first")
    else:
      pads.append((0, 0))
      shape.append(n)
      out_spec.append(entry)
  if any(p[1] for p in pads):
    x = jnp.pad(x, pads, constant_values=fill)
  return reshape(x, shape, tuple(out_spec) if spec else None), tuple(inner)


def merged(v: jax.Array, pairs: set[int]) -> jax.Array:
  """Merges each dimension in `pairs` with the one after it."""
  spec = sharding_spec(v)
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
  return reshape(v, shape, tuple(out_spec) if spec else None)


def pair_starts(nd: int, axes: tuple[int, ...]) -> set[int]:
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


def ungrouped(v: jax.Array, shape: Sequence[int], axes: tuple[int, ...]) -> jax.Array:
  """Inverse of `grouped`: merge each (n_blocks, block) pair, cut the padding.

  Kept apart from the computation of `v`: fused into it, the merge makes
  XLA:CPU run that loop over the merged shape, indexing the per-block
  scales through it, about four times slower.
  """
  def merge(v):
    v = merged(v, pair_starts(len(shape), axes))
    if tuple(v.shape) != tuple(shape):
      v = v[tuple(slice(0, n) for n in shape)]
    return v

  return apart(merge, v) if v.size else merge(v)


def keepdims(grid: jax.Array, view_shape: Sequence[int], inner: tuple[int, ...]) -> jax.Array:
  """The block grid reshaped to broadcast against the grouped view."""
  spec = sharding_spec(grid)
  shape, out_spec, g = [], [], 0
  for d, n in enumerate(view_shape):
    if d in inner:
      shape.append(1)
      out_spec.append(None)
    else:
      shape.append(n)
      out_spec.append(spec[g] if spec else None)
      g += 1
  return reshape(grid, shape, tuple(out_spec) if spec else None)
