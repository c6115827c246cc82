"""How one quantized weight is stored in a checkpoint: format, scaling, dtypes, shapes.

A `WeightLayout` is the command line's `--format` and `--scaling` as a value.
It knows the `quantize` arguments that produce the codes, the shape and
safetensors dtype of the codes and of the scale, and how to rebuild the
`QArray` from the stored tensors, so that writing and reading agree by
construction.

Scalings, for a weight of shape `[..., out, in]` (2-D weights are `[out, in]`):

| `--scaling` | `quantize` call | scale shape |
| --- | --- | --- |
| `tensor` | `scaling="tensor"` | `[]` |
| `channel` | `scaling="axis", axis=-1` | `[..., out, 1]` |
| `block:B` | `scaling="block", block_size=B` (along the last axis) | `[..., out, ceil(in/B)]` |
| `block:BxC` | `scaling="block", block_size=(B, C)` (tiles) | `[..., ceil(out/B), ceil(in/C)]` |
| `mx` | `scaling="mx"` (32 along the last axis) | `[..., out, ceil(in/32)]`, uint8 e8m0fnu codes |
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import numpy as np

from fp8jax import scaling as _scaling
from fp8jax.formats import FORMATS, Format
from fp8jax.qarray import AXIS, BLOCK, MX, TENSOR, QArray
from fp8jax.safetensors_io import CheckpointError

SCALINGS = ("tensor", "channel", "block:B", "block:BxC", "mx")
"""The spellings `--scaling` accepts (B, C positive integers)."""

# Formats with a safetensors float8 dtype that every float8-aware reader
# knows; the codes are bit-identical to torch's / the OCP layout.
_F8_TAGS = {"e4m3fn": "F8_E4M3", "e5m2": "F8_E5M2"}
_BLOCK_RE = re.compile(r"block:([1-9][0-9]*)(?:x([1-9][0-9]*))?")


@dataclasses.dataclass(frozen=True)
class WeightLayout:
  """A quantized weight's storage: element format and scaling granularity.

  Attributes:
    fmt: the element format.
    scaling: "tensor", "channel", "mx", or "block:B" / "block:BxC".

  Example:
    >>> layout = WeightLayout.parse("e4m3fn", "block:128x128")
    >>> layout.scale_shape((300, 260)), layout.bits_dtype
    ((3, 3), 'F8_E4M3')
  """

  fmt: Format
  scaling: str

  @classmethod
  def parse(cls, fmt: str, scaling: str) -> WeightLayout:
    """Checks a format name and a `--scaling` spelling.

    Raises:
      CheckpointError: an unknown or unsigned format, an unknown scaling, or
        `mx` with a format that is not an MX element format.
    """
    f = FORMATS.get(fmt)
    if f is None or not f.signed:
      names = ", ".join(n for n, v in FORMATS.items() if v.signed)
      raise CheckpointError(f"--format must be one of {names} (got {fmt!r})")
    if scaling not in ("tensor", "channel", "mx") and not _BLOCK_RE.fullmatch(scaling):
      raise CheckpointError("--scaling must be tensor, channel, block:B, block:BxC or mx, "
                            f"B and C positive integers (got {scaling!r})")
    if scaling == "mx" and fmt not in _scaling.MX_ELEMENTS:
      raise CheckpointError(f"--scaling mx needs an MX element format, one of "
                            f"{', '.join(_scaling.MX_ELEMENTS)} (got {fmt!r})")
    return cls(f, scaling)

  @property
  def block(self) -> tuple[int, ...] | None:
    """Block lengths for block and MX scaling, else None."""
    if self.scaling == "mx":
      return (_scaling.MX_BLOCK,)
    m = _BLOCK_RE.fullmatch(self.scaling)
    if m is None:
      return None
    return tuple(int(g) for g in m.groups() if g is not None)

  @property
  def min_ndim(self) -> int:
    """Dimensions a weight needs: 2 for 2-D tiles, else 1."""
    block = self.block
    return 2 if block is not None and len(block) == 2 else 1

  def quantize_kwargs(self) -> dict[str, Any]:
    """The keyword arguments of `fp8jax.quantize` for this layout."""
    if self.scaling == "tensor":
      return {"scaling": "tensor"}
    if self.scaling == "channel":
      return {"scaling": "axis", "axis": -1}
    if self.scaling == "mx":
      return {"scaling": "mx"}
    block = self.block
    return {"scaling": "block", "block_size": block if len(block) == 2 else block[0]}

  def quantize(self, x: jax.Array, *, rounding: str = "nearest",
               key: jax.Array | None = None) -> QArray:
    """`fp8jax.quantize(x, fmt, **quantize_kwargs())`."""
    return _scaling.quantize(x, self.fmt, rounding=rounding, key=key, **self.quantize_kwargs())

  def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the stored scale of a weight of `shape`."""
    shape = tuple(shape)
    if self.scaling == "tensor":
      return ()
    if self.scaling == "channel":
      return shape[:-1] + (1,)
    block = self.block
    k = len(block)
    return shape[:-k] + tuple(math.ceil(n / b) for n, b in zip(shape[-k:], block))

  def qarray(self, bits: Any, scale: Any, dtype: Any) -> QArray:
    """Rebuilds the `QArray` that `quantize` returned, from stored codes and scale.

    Args:
      bits: the uint8 codes, the weight's shape.
      scale: the stored scale (`scale_shape`), float32 or e8m0fnu codes.
      dtype: the original weight's dtype.
    """
    nd = np.ndim(bits)
    if self.scaling == "tensor":
      granularity, axes, block = TENSOR, tuple(range(-nd, 0)), None
    elif self.scaling == "channel":
      granularity, axes, block = AXIS, (-1,), None
    elif self.scaling == "mx":
      granularity, axes, block = MX, (-1,), self.block
    else:
      block = self.block
      granularity, axes = BLOCK, tuple(range(-len(block), 0))
    return QArray(bits, scale, self.fmt, granularity, axes, block, np.dtype(dtype))

  @property
  def bits_dtype(self) -> str:
    """The safetensors dtype of the codes: F8_E4M3 / F8_E5M2, else U8."""
    return _F8_TAGS.get(self.fmt.name, "U8")

  @property
  def scale_dtype(self) -> str:
    """The safetensors dtype of the scale: F32, or U8 e8m0fnu codes for MX."""
    return "U8" if self.scaling == "mx" else "F32"

  @property
  def vllm_fp8(self) -> bool:
    """Whether vLLM's `fp8` method loads this layout: e4m3fn, per tensor or 128x128 tiles."""
    return self.fmt.name == "e4m3fn" and self.scaling in ("tensor", "block:128x128")

  @property
  def scale_suffix(self) -> str:
    """Appended to a weight's name to name its scale.

    `_scale_inv` for 128x128 tiles, the name vLLM's and transformers' block
    FP8 loaders expect (it holds the dequantizing multiplier all the same);
    `_scale` otherwise (`X.weight` -> `X.weight_scale`).
    """
    return "_scale_inv" if self.vllm_fp8 and self.scaling != "tensor" else "_scale"

  def describe(self) -> str:
    return f"{self.fmt.name} {self.scaling}"
