"""`QArray`: codes and the scales that dequantize them, as one pytree."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from fp8jax.core.formats import Format
from fp8jax.quant.spec import QuantSpec


@dataclasses.dataclass(frozen=True)
class QArray:
  """A quantized array: `x ≈ decode(bits, fmt) * scale`, scale expanded per group.

  A registered pytree: `bits`, `scale` (and `nan_count`) are its leaves, the rest is
  static, so a QArray passes through `jit`, `vmap`, `scan` and `shard_map`.

  Attributes:
    bits: uint8 codes, the shape of the original (FP4 with `spec.pack`: two
      codes per byte along the last axis, low nibble first).
    scale: the dequantizing multiplier, of shape `spec.scale_shape(shape)`
      (plus any leading axes `vmap` added). float32, except for MX, where it
      is the uint8 `e8m0fnu` code of a power of two.
    spec: the `QuantSpec` that made it, its axes as negative indices (so
      leading batch axes added by `vmap` do not move them).
    dtype: dtype of the original array.
    odd: with packed codes, whether the original last axis was odd.
    nan_count: for formats without NaN (FP6, FP4), the number of NaN inputs,
      which were encoded as zero codes (int32 scalar); None otherwise.
  """

  bits: jax.Array
  scale: jax.Array
  spec: QuantSpec
  dtype: np.dtype
  odd: bool = False
  nan_count: jax.Array | None = None

  @property
  def fmt(self) -> Format:
    """The element format."""
    return self.spec.format

  @property
  def granularity(self) -> str:
    """"tensor", "axis", "block", "mx" or "static"."""
    return self.spec.kind

  @property
  def packed(self) -> bool:
    """Whether FP4 codes are packed two per byte."""
    return self.spec.pack

  @property
  def axes(self) -> tuple[int, ...]:
    """The grouped axes, as negative indices."""
    return self.spec.grouping(self.ndim)[0]

  @property
  def block(self) -> tuple[int, ...] | None:
    """Block length along each of `axes` (block and MX), else None."""
    return self.spec.grouping(self.ndim)[1]

  @property
  def shape(self) -> tuple[int, ...]:
    """Shape of the original array."""
    shape = tuple(self.bits.shape)
    if self.packed:
      shape = shape[:-1] + (2 * shape[-1] - int(self.odd),)
    return shape

  @property
  def ndim(self) -> int:
    return len(self.bits.shape)

  @property
  def nbytes(self) -> int:
    """Bytes held: codes plus scales."""
    return int(self.bits.size * self.bits.dtype.itemsize
               + self.scale.size * self.scale.dtype.itemsize)


jax.tree_util.register_dataclass(
    QArray, data_fields=["bits", "scale", "nan_count"], meta_fields=["spec", "dtype", "odd"])
