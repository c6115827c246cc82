"""How one quantized weight is stored in a checkpoint: format, scaling, dtypes, shapes.

A `WeightLayout` is a `QuantSpec` with the dtypes and names it is stored under.
It knows the `quantize` arguments that produce the codes, the shape and
safetensors dtype of the codes and of the scale, and how to rebuild the
`QArray` from the stored tensors, so that writing and reading agree by
construction.

Scalings, for a weight of shape `[..., out, in]` (2-D weights are `[out, in]`):

| `--scaling` | `quantize` call | scale shape |
| --- | --- | --- |
| `tensor` | `scaling="tensor"` | `[]` |
| `axis` (or `channel`) | `scaling="axis", axis=-1` | `[..., out, 1]` |
| `block:B` | `scaling="block", block_size=B` (along the last axis) | `[..., out, ceil(in/B)]` |
| `block:BxC` | `scaling="block", block_size=(B, C)` (tiles) | `[..., ceil(out/B), ceil(in/C)]` |
| `mx` | `scaling="mx"` (32 along the last axis) | `[..., out, ceil(in/32)]`, uint8 e8m0fnu codes |
| `nvfp4[:RULE]` | `scaling="nvfp4", nvfp4_rule=RULE` (16 along the last axis) | `[..., out, in/16]`, e4m3fn codes, and a float32 tensor scale |

How each stack lays these out on disk (names, packing, `config.json`) is `layouts`'.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.core.formats import EXTERNAL_NAMES, FORMATS, Format, get_format
from fp8jax.quant.qarray import QArray
from fp8jax.quant.scaled import quantize
from fp8jax.quant.spec import MX, MX_ELEMENTS, NVFP4, QuantSpec

SCALINGS = ("tensor", "axis", "block:B", "block:BxC", "mx")
"""The spellings `--scaling` accepts (B, C positive integers; "channel" is "axis")."""

# Formats with a safetensors float8 dtype that every float8-aware reader
# knows; the codes are bit-identical to torch's / the OCP layout.
_F8_TAGS = {name: EXTERNAL_NAMES[name].safetensors for name in ("e4m3fn", "e5m2")}


def signed_format(name: Any, param: str, expected: str = "one of") -> Format:
  """The signed format `name` names (as `get_format` reads names), else a `CheckpointError`.

  Its message is `{param} must be {expected} {the names} (got {name!r})`.
  """
  try:
    f = get_format(name) if isinstance(name, str) else None
  except ValueError:
    f = None
  if f is None or not f.signed:
    names = ", ".join(n for n, v in FORMATS.items() if v.signed)
    raise CheckpointError(f"{param} must be {expected} {names} (got {name!r})", param=param)
  return f


@dataclasses.dataclass(frozen=True)
class WeightLayout:
  """A quantized weight's storage: the `QuantSpec` of its codes and scale, and their dtypes.

  Attributes:
    spec: how the weight is quantized (per tensor, per output channel along
      the last axis, blocks along the last axis or tiles of the last two, MX).

  Example:
    >>> layout = WeightLayout.parse("e4m3fn", "block:128x128")
    >>> layout.scale_shape((300, 260)), layout.bits_dtype
    ((3, 3), 'F8_E4M3')
  """

  spec: QuantSpec

  @classmethod
  def parse(cls, fmt: str, scaling: str) -> WeightLayout:
    """Checks a format name and a scaling spelling (`QuantSpec.parse`).

    The format may be named as `get_format` accepts it: in any case, or by
    its ml_dtypes name (`E4M3FN`, `float8_e4m3fn`).

    Raises:
      CheckpointError: an unknown or unsigned format, an unknown scaling, or
        `mx` with a format that is not an MX element format; its `param`
        is "fmt" or "scaling".
    """
    f = signed_format(fmt, "fmt")
    if isinstance(scaling, str) and scaling.startswith(NVFP4.kind) and f.name != "e2m1fn":
      raise CheckpointError(f"scaling {scaling} needs the format e2m1fn (got {fmt!r})",
                            param="scaling")
    if scaling == MX.kind and f.name not in MX_ELEMENTS:
      # Said here rather than by QuantSpec, whose message is about its own `scaling='mx'`.
      raise CheckpointError(f"scaling mx needs an MX element format, one of "
                            f"{', '.join(MX_ELEMENTS)} (got {fmt!r})", param="scaling")
    try:
      return cls(QuantSpec.parse(f, scaling))
    except (TypeError, ValueError) as e:  # the spelling: "scaling must be tensor, axis, ..."
      raise CheckpointError(str(e), param="scaling") from None

  @property
  def fmt(self) -> Format:
    return self.spec.format

  @property
  def scaling(self) -> str:
    """The scaling's spelling: "tensor", "axis", "block:B", "block:BxC" or "mx"."""
    return self.spec.spelling()

  @property
  def block(self) -> tuple[int, ...] | None:
    """Block lengths for block and MX scaling, else None."""
    return self.spec.grouping(2)[1]

  @property
  def min_ndim(self) -> int:
    """Dimensions a weight needs: 2 for 2-D tiles, else 1."""
    block = self.block
    return 2 if block is not None and len(block) == 2 else 1

  def quantize(self, x: jax.Array, *, rounding: str = "nearest",
               key: jax.Array | None = None) -> QArray:
    """`fp8jax.quantize(x, spec)`, with `rounding`."""
    return quantize(x, dataclasses.replace(self.spec, rounding=rounding), key=key)

  def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the stored scale of a weight of `shape`."""
    return self.spec.scale_shape(shape)

  def qarray(self, bits: Any, scale: Any, dtype: Any) -> QArray:
    """Rebuilds the `QArray` that `quantize` returned, from stored codes and scale.

    Args:
      bits: the uint8 codes, the weight's shape.
      scale: the stored scale (`scale_shape`), float32 or e8m0fnu codes.
      dtype: the original weight's dtype.
    """
    return QArray(bits, scale, self.spec.resolved(np.ndim(bits)), np.dtype(dtype))

  @property
  def bits_dtype(self) -> str:
    """The safetensors dtype of the codes: F8_E4M3 / F8_E5M2, else U8."""
    return _F8_TAGS.get(self.fmt.name, "U8")

  @property
  def scale_dtype(self) -> str:
    """The safetensors dtype of the scale: F32, or U8 e8m0fnu codes for MX."""
    return "U8" if self.spec.kind == MX.kind else "F32"

  def describe(self) -> str:
    return f"{self.fmt.name} {self.scaling}"
