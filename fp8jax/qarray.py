"""`QArray`: codes and the scales that dequantize them, as one pytree."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from fp8jax.formats import Format

TENSOR = "tensor"
AXIS = "axis"
BLOCK = "block"
MX = "mx"
STATIC = "static"


@dataclasses.dataclass(frozen=True)
class QArray:
  """A quantized array: `x ≈ decode(bits, fmt) * scale`, scale expanded per group.

  A registered pytree: `bits`, `scale` (and `nan_count`) are its leaves, the rest is
  static, so a QArray passes through `jit`, `vmap`, `scan` and `shard_map`.

  Attributes:
    bits: uint8 codes, the shape of the original (FP4 with `packed`: two
      codes per byte along the last axis, low nibble first).
    scale: the dequantizing multiplier. float32, except for MX, where it is
      the uint8 `e8m0fnu` code of a power of two. Shapes: `()` per tensor; the
      input's shape with `axis` set to 1 per axis (a `[out, in]` weight with
      axis=-1 gives `[out, 1]`); the block grid, `ceil(n / block)` along each
      blocked axis, per block and for MX (128x128 tiles of `[out, in]` give
      `[ceil(out/128), ceil(in/128)]`); as given for a static scale.
    fmt: the element format.
    granularity: "tensor", "axis", "block", "mx" or "static".
    axes: the grouped axes, as negative indices (so leading batch axes added
      by `vmap` do not move them).
    block: block length along each of `axes` ("block" and "mx"), else None.
    dtype: dtype of the original array.
    packed: whether FP4 codes are packed two per byte.
    odd: with `packed`, whether the original last axis was odd.
    nan_count: for formats without NaN (FP6, FP4), the number of NaN inputs,
      which were encoded as zero codes (int32 scalar); None otherwise.
  """

  bits: jax.Array
  scale: jax.Array
  fmt: Format
  granularity: str
  axes: tuple[int, ...]
  block: tuple[int, ...] | None
  dtype: np.dtype
  packed: bool = False
  odd: bool = False
  nan_count: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    """Shape of the original array."""
    shape = tuple(self.bits.shape)
    if self.packed:
      shape = shape[:-1] + (2 * shape[-1] - int(self.odd),)
    return shape

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def nbytes(self) -> int:
    """Bytes held: codes plus scales."""
    return int(self.bits.size * self.bits.dtype.itemsize
               + self.scale.size * self.scale.dtype.itemsize)


jax.tree_util.register_dataclass(
    QArray, data_fields=["bits", "scale", "nan_count"],
    meta_fields=["fmt", "granularity", "axes", "block", "dtype", "packed", "odd"])
