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

  A registered pytree: `bits`, `scale` (and `nan_count`, `tensor_scale`) are its
  leaves, the rest is static, so a QArray passes through `jit`, `vmap`, `scan` and
  `shard_map`.

  Attributes:
    bits: uint8 codes, the shape of the original (FP4 with `spec.pack`: two
      codes per byte along the last axis, low nibble first).
    scale: the dequantizing multiplier, of shape `spec.scale_shape(shape)`
      (plus any leading axes `vmap` added). float32, except for MX, where it
      is the uint8 `e8m0fnu` code of a power of two, and NVFP4, where it is
      the uint8 `e4m3fn` code of each block's scale.
    spec: the `QuantSpec` that made it, its axes as negative indices (so
      leading batch axes added by `vmap` do not move them).
    dtype: dtype of the original array.
    odd: with packed codes, whether the original last axis was odd.
    nan_count: for formats without NaN (FP6, FP4), the number of NaN inputs,
      which were encoded as zero codes (int32 scalar); None otherwise.
    tensor_scale: NVFP4 only: the float32 per-tensor scale (shape
      `spec.tensor_scale_shape(shape)`), the number the rule's stack stores:
      a decode multiplier (amax / 2688) for "torchao" and "modelopt", its
      inverse, an encode multiplier (2688 / amax), for
      "compressed-tensors", the tensor's amax for "te". The dequantized
      values are `decode(bits) * m`, m each block's multiplier as the rule
      combines the two scales (`nvfp4.block_multipliers`). None otherwise.
  """

  bits: jax.Array
  scale: jax.Array
  spec: QuantSpec
  dtype: np.dtype
  odd: bool = False
  nan_count: jax.Array | None = None
  tensor_scale: jax.Array | None = None

  @property
  def fmt(self) -> Format:
    """The element format."""
    return self.spec.format

  @property
  def granularity(self) -> str:
    """"tensor", "axis", "block", "mx", "nvfp4" or "static"."""
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
    """Block length along each of `axes` (block, MX and NVFP4), else None."""
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
    extra = 0 if self.tensor_scale is None else self.tensor_scale.size * 4
    return int(self.bits.size * self.bits.dtype.itemsize
               + self.scale.size * self.scale.dtype.itemsize + extra)


jax.tree_util.register_dataclass(
    QArray, data_fields=["bits", "scale", "nan_count", "tensor_scale"],
    meta_fields=["spec", "dtype", "odd"])
