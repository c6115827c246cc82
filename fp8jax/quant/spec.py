"""`QuantSpec`: everything that decides the codes and scales of one quantized array.

A spec is a frozen, hashable value: the element format, the granularity of
the scales, rounding, overflow, and the dynamic-scale options. `quantize`
takes one, `QArray` carries one, and the checkpoint code and the command line
map it to and from their spellings. Scale shapes are derived here and
nowhere else (`QuantSpec.scale_shape`).

Granularities, for an array of shape `[..., out, in]`:

| granularity | scales | `scale_shape` |
| --- | --- | --- |
| `Tensor()` | one | `()` |
| `Axis(axis=-1)` | one per slice along `axis` | the shape with `axis` set to 1 |
| `Block((B,))` | one per B values along the last axis | `[..., out, ceil(in/B)]` |
| `Block((B, C))` | one per BxC tile of the last two axes | `[..., ceil(out/B), ceil(in/C)]` |
| `MX()` | one e8m0fnu power of two per 32 values along `axis` | `[..., out, ceil(in/32)]` |
| `NVFP4(rule)` | one e4m3fn scale per 16 values along `axis` (or 16x16 tile), one float32 per tensor | `[..., out, ceil(in/16)]` |
| `Static(shape)` | given by the caller | `shape` |
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import re
from typing import Any, ClassVar

import numpy as np

from fp8jax.core import checks
from fp8jax.core.formats import FORMATS, Format, FormatLike, get_format
from fp8jax.core.kernel import Overflow, Rounding

MX_BLOCK = 32
MX_ELEMENTS = ("e4m3fn", "e5m2", "e2m3fn", "e3m2fn", "e2m1fn")
MX_RULES = ("floor", "rceil", "ceil", "even")
"""MX shared-exponent rules: "floor" is OCP MX v1.0's; the others are torchao's
ScaleCalculationMode RCEIL, CEIL and EVEN, edge rules included (see `scales`)."""

NVFP4_BLOCK = 16
NVFP4_ELEMENT = "e2m1fn"
NVFP4_RULES = ("torchao", "te", "modelopt", "compressed-tensors")
"""NVFP4 scale formulas, one per stack (`fp8jax.quant.nvfp4`)."""


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _axis(axis: Any, nd: int) -> int:
  """`axis` as a negative index into `nd` dimensions (stable when vmap adds leading axes)."""
  if not _is_int(axis):
    raise TypeError(f"axis must be an int (got {type(axis).__name__})")
  if not -nd <= axis < nd:
    raise ValueError(f"axis {axis} is out of range for a {nd}-D x")
  return int(axis) % nd - nd


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One scale for the whole array."""

  kind: ClassVar[str] = "tensor"


@dataclasses.dataclass(frozen=True)
class Axis:
  """One scale per slice along `axis` (a row or channel scale).

  Attributes:
    axis: the axis the scales run along; it has size 1 in the scale.
  """

  axis: int = -1
  kind: ClassVar[str] = "axis"

  def __post_init__(self):
    if not _is_int(self.axis):
      raise TypeError(f"axis must be an int (got {type(self.axis).__name__})")
    object.__setattr__(self, "axis", int(self.axis))


@dataclasses.dataclass(frozen=True)
class Block:
  """One scale per block: runs of `sizes[i]` values along `axes[i]`.

  Attributes:
    sizes: block length along each blocked axis: `(128,)` for 1x128 blocks,
      `(128, 128)` for tiles. Edges need not divide: the last block is short.
    axes: the blocked axes, one per size, or None for the last `len(sizes)`.
  """

  sizes: tuple[int, ...]
  axes: tuple[int, ...] | None = None
  kind: ClassVar[str] = "block"

  def __post_init__(self):
    sizes = self.sizes if isinstance(self.sizes, (tuple, list)) else (self.sizes,)
    if not sizes or not all(_is_int(b) and b > 0 for b in sizes):
      raise ValueError(f"block_size must be a positive int or a tuple of them for "
                       f"scaling='block' (got {self.sizes!r})")
    object.__setattr__(self, "sizes", tuple(int(b) for b in sizes))
    if self.axes is not None:
      axes = self.axes if isinstance(self.axes, (tuple, list)) else (self.axes,)
      if len(axes) != len(sizes):
        raise ValueError(f"block_size {self.sizes} has {len(sizes)} entries but axis "
                         f"{self.axes!r} names {len(axes)} axes")
      for a in axes:
        if not _is_int(a):
          raise TypeError(f"axis must be an int (got {type(a).__name__})")
      object.__setattr__(self, "axes", tuple(int(a) for a in axes))


@dataclasses.dataclass(frozen=True)
class MX:
  """OCP MX block scaling: 32 values along `axis` share one e8m0fnu power of two.

  Attributes:
    axis: the axis the blocks run along.
    rule: how the shared exponent is chosen: "floor" (default), the OCP MX
      v1.0 rule `floor(log2(amax)) - emax`, with NaN and infinities left out
      of the amax; or torchao's ScaleCalculationMode, bit for bit, edge rules
      included: "rceil" (`ceil(log2(amax / max))`, as cuBLAS and
      TransformerEngine compute it), "ceil" (`ceil(log2(amax)) - emax`),
      "even" (amax rounded to the element's precision, then floor).

  Example:
    >>> QuantSpec("e4m3fn", MX(rule="rceil")).scale_shape((4, 64))
    (4, 2)
  """

  axis: int = -1
  rule: str = "floor"
  kind: ClassVar[str] = "mx"

  def __post_init__(self):
    if not _is_int(self.axis):
      raise TypeError(f"axis must be an int (got {type(self.axis).__name__})")
    object.__setattr__(self, "axis", int(self.axis))
    if self.rule not in MX_RULES:
      raise ValueError(f"the MX rule must be one of {', '.join(map(repr, MX_RULES))} "
                       f"(got {self.rule!r})")


def _nvfp4_block(block: Any) -> tuple[int, ...]:
  sizes = tuple(block) if isinstance(block, (tuple, list)) else (block,)
  if sizes not in ((NVFP4_BLOCK,), (NVFP4_BLOCK, NVFP4_BLOCK)):
    raise ValueError(f"scaling='nvfp4' uses blocks of {NVFP4_BLOCK} or tiles of "
                     f"{NVFP4_BLOCK}x{NVFP4_BLOCK} (got block_size={block!r})")
  return tuple(int(b) for b in sizes)


@dataclasses.dataclass(frozen=True)
class NVFP4:
  """NVFP4: E2M1 codes, an e4m3fn scale per 16 values, a float32 scale per tensor.

  The stacks that make NVFP4 disagree on the scale formulas and none
  reproduces another's bits; `rule` names the stack to reproduce
  (`fp8jax.quant.nvfp4` gives each formula): "torchao", "te"
  (TransformerEngine), "modelopt" (TensorRT Model Optimizer) or
  "compressed-tensors" (llm-compressor, vLLM checkpoints).

  Attributes:
    rule: the stack whose formulas to follow.
    axis: the axis 16-element blocks run along (1-D blocks).
    block: 16 (1-D blocks along `axis`) or (16, 16): tiles of the last two
      axes, TransformerEngine's NVFP4 weight recipe.
    stacked: one tensor scale per index of the axes before the last two
      (stacked experts, `[E, out, in]`) instead of one for the whole array.

  Example:
    >>> QuantSpec("e2m1fn", NVFP4("torchao")).scale_shape((4, 64))
    (4, 4)
    >>> QuantSpec("e2m1fn", NVFP4("te", stacked=True)).tensor_scale_shape((8, 4, 64))
    (8,)
  """

  rule: str
  axis: int = -1
  block: tuple[int, ...] = (NVFP4_BLOCK,)
  stacked: bool = False
  kind: ClassVar[str] = "nvfp4"

  def __post_init__(self):
    if self.rule not in NVFP4_RULES:
      raise ValueError(f"the NVFP4 rule must be one of {', '.join(map(repr, NVFP4_RULES))} "
                       f"(got {self.rule!r})")
    if not _is_int(self.axis):
      raise TypeError(f"axis must be an int (got {type(self.axis).__name__})")
    object.__setattr__(self, "axis", int(self.axis))
    object.__setattr__(self, "block", _nvfp4_block(self.block))
    if len(self.block) == 2 and self.axis != -1:
      raise ValueError(f"NVFP4 {NVFP4_BLOCK}x{NVFP4_BLOCK} tiles cover the last two axes; "
                       f"axis must be -1 (got {self.axis})")
    object.__setattr__(self, "stacked", bool(self.stacked))


@dataclasses.dataclass(frozen=True)
class Static:
  """A scale the caller gives (`quantize(x, spec, scale=...)`), of `shape`.

  Attributes:
    shape: the scale's shape, broadcastable to the array's.
  """

  shape: tuple[int, ...] = ()
  kind: ClassVar[str] = "static"

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))


Granularity = Tensor | Axis | Block | MX | NVFP4 | Static
GRANULARITIES = (Tensor, Axis, Block, MX, NVFP4, Static)
KINDS = tuple(g.kind for g in GRANULARITIES if g is not Static)
_SPELLING = re.compile(r"block:([1-9][0-9]*)(?:x([1-9][0-9]*))?")
_MX_SPELLING = re.compile(r"mx:([a-z]+)")
_NVFP4_SPELLING = re.compile(r"nvfp4(?::([a-z-]+))?(?::(16x16))?")
NVFP4_DEFAULT_RULE = "compressed-tensors"
"""The NVFP4 rule of the spelling "nvfp4": compressed-tensors', whose checkpoints
transformers and vLLM load."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """How to quantize: `x ≈ decode(bits, format) * scale`, one scale per group.

  Attributes:
    format: the element format (a name, `Format` or float8 dtype; stored as
      a `Format`). Must be signed.
    granularity: `Tensor()`, `Axis(axis)`, `Block(sizes, axes)`, `MX(axis,
      rule)`, `NVFP4(rule, axis, block, stacked)` or `Static(shape)`.
    rounding: "nearest", "toward_zero" or "stochastic" (which needs a key).
    overflow: "saturate", "satfinite" or "ieee": what values beyond the
      range become (non-finite inputs, values over a static or MX scale).
    pow2: round each dynamic scale up to a power of two.
    margin: headroom: scale = amax / max * 2^margin, a non-negative int.
    pack: FP4 only: store two codes per byte along the last axis.

  Example:
    >>> spec = QuantSpec("e4m3fn", Block((128, 128)))
    >>> spec.scale_shape((300, 260))
    (3, 3)
  """

  format: Format
  granularity: Granularity = Tensor()
  rounding: Rounding = "nearest"
  overflow: Overflow = "saturate"
  pow2: bool = False
  margin: int = 0
  pack: bool = False

  def __post_init__(self):
    f = get_format(self.format, "fmt")
    object.__setattr__(self, "format", f)
    if not isinstance(self.granularity, GRANULARITIES):
      raise TypeError("granularity must be Tensor(), Axis(...), Block(...), MX(...), "
                      f"NVFP4(...) or Static(...) (got {self.granularity!r})")
    checks.rounding_name(self.rounding)
    checks.overflow(self.overflow)
    if not _is_int(self.margin) or self.margin < 0:
      raise ValueError(f"margin must be a non-negative int (got {self.margin!r})")
    object.__setattr__(self, "margin", int(self.margin))
    if not f.signed:
      raise ValueError(f"fmt {f.name!r} is unsigned (a scale format); quantize needs a signed "
                       "element format")
    if self.pack and f.bits != 4:
      raise ValueError(f"pack=True packs 4-bit formats; fmt {f.name!r} has {f.bits} bits")
    kind = self.granularity.kind
    if self.pow2 and kind == Static.kind:
      raise ValueError("pow2 rounds dynamic scales; a static scale is used as given")
    if kind == MX.kind:
      if f.name not in MX_ELEMENTS or f != FORMATS[f.name]:
        raise ValueError(f"scaling='mx' needs an MX element format, one of "
                         f"{', '.join(MX_ELEMENTS)} (got {f.name!r})")
      if self.pow2:
        raise ValueError("pow2 does not apply to scaling='mx': its scales are powers of two")
    if kind == NVFP4.kind:
      if f != FORMATS[NVFP4_ELEMENT]:
        raise ValueError(f"scaling='nvfp4' needs fmt {NVFP4_ELEMENT!r} (got {f.name!r})")
      if self.pow2 or self.margin:
        raise ValueError("pow2 and margin do not apply to scaling='nvfp4': each rule fixes "
                         "its scale formula")
    object.__setattr__(self, "pow2", bool(self.pow2))
    object.__setattr__(self, "pack", bool(self.pack))

  @property
  def kind(self) -> str:
    """The granularity's name: "tensor", "axis", "block", "mx", "nvfp4" or "static"."""
    return self.granularity.kind

  def grouping(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The grouped axes (negative, ascending) and block lengths for an `ndim`-D array.

    Blocks are None where a group spans its whole axis (per tensor, per axis).
    """
    g = self.granularity
    if isinstance(g, Tensor):
      return tuple(range(-ndim, 0)), None
    if isinstance(g, Axis):
      return (_axis(g.axis, ndim),), None
    if isinstance(g, MX):
      return (_axis(g.axis, ndim),), (MX_BLOCK,)
    if isinstance(g, NVFP4):
      if len(g.block) == 2:
        if ndim < 2:
          raise ValueError(f"NVFP4 {NVFP4_BLOCK}x{NVFP4_BLOCK} tiles need x with at least "
                           f"two axes (got {ndim}-D)")
        return (-2, -1), g.block
      axis = _axis(g.axis, ndim)
      if g.stacked and axis < -2:
        raise ValueError(f"stacked NVFP4 blocks run along one of the last two axes "
                         f"(got axis {g.axis} of a {ndim}-D x)")
      return (axis,), g.block
    if isinstance(g, Block):
      k = len(g.sizes)
      axes = g.axes if g.axes is not None else tuple(range(-k, 0))
      axes = tuple(_axis(a, ndim) for a in axes)
      if len(set(axes)) != k:
        raise ValueError(f"axis must name distinct axes (got {g.axes!r})")
      order = sorted(range(k), key=lambda i: axes[i])
      return tuple(axes[i] for i in order), tuple(g.sizes[i] for i in order)
    return (), None

  def resolved(self, ndim: int) -> QuantSpec:
    """This spec with its axes as negative indices for an `ndim`-D array (checked)."""
    axes, block = self.grouping(ndim)
    g = self.granularity
    if isinstance(g, Axis):
      g = Axis(axes[0])
    elif isinstance(g, MX):
      g = MX(axes[0], g.rule)
    elif isinstance(g, NVFP4) and len(g.block) == 1:
      g = NVFP4(g.rule, axes[0], g.block, g.stacked)
    elif isinstance(g, Block):
      g = Block(block, axes)
    return self if g == self.granularity else dataclasses.replace(self, granularity=g)

  def scale_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of the scale of an array of `shape` (the QArray's and the stored one).

    Example:
      >>> QuantSpec("e4m3fn", Axis(-1)).scale_shape((4, 6))
      (4, 1)
    """
    shape = tuple(int(n) for n in shape)
    g = self.granularity
    if isinstance(g, Tensor):
      return ()
    if isinstance(g, Static):
      return g.shape
    return self.grid_shape(shape)

  def tensor_scale_shape(self, shape: Sequence[int]) -> tuple[int, ...] | None:
    """The shape of NVFP4's per-tensor scale (`QArray.tensor_scale`); None for the others.

    `()`, or the axes before the last two for `NVFP4(..., stacked=True)`:
    one scale per expert of an `[E, out, in]` array.

    Example:
      >>> QuantSpec("e2m1fn", NVFP4("torchao")).tensor_scale_shape((4, 64))
      ()
    """
    g = self.granularity
    if not isinstance(g, NVFP4):
      return None
    shape = tuple(int(n) for n in shape)
    return shape[:-2] if g.stacked else ()

  def grid_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """The scales as a grid of the array's rank: 1 along an axis one group spans."""
    shape = tuple(int(n) for n in shape)
    if isinstance(self.granularity, Static):
      g = self.granularity.shape
      return (1,) * (len(shape) - len(g)) + g
    axes, block = self.grouping(len(shape))
    nd = len(shape)
    if block is None:
      grouped = {a % nd for a in axes}
      return tuple(1 if d in grouped else n for d, n in enumerate(shape))
    sizes = {a % nd: b for a, b in zip(axes, block, strict=False)}
    return tuple(math.ceil(n / sizes[d]) if d in sizes else n for d, n in enumerate(shape))

  def spelling(self) -> str:
    """The command line's spelling of the granularity: "tensor", "axis", "block:BxC", "mx",
    "mx:RULE" (MX rules other than floor), "nvfp4:RULE" ("nvfp4:RULE:16x16" for tiles)."""
    g = self.granularity
    if isinstance(g, Block):
      return "block:" + "x".join(map(str, g.sizes))
    if isinstance(g, MX) and g.rule != MX_RULES[0]:
      return f"mx:{g.rule}"
    if isinstance(g, NVFP4):
      tile = "x".join(map(str, g.block))
      return f"nvfp4:{g.rule}" + (f":{tile}" if len(g.block) == 2 else "")
    return g.kind

  @classmethod
  def parse(cls, fmt: FormatLike, scaling: str, **options: Any) -> QuantSpec:
    """A spec from a format and a granularity spelling (`spelling`'s inverse).

    Spellings: "tensor", "axis" (also "channel": per output channel, along
    the last axis), "block:B" (along the last axis), "block:BxC" (tiles of
    the last two axes), "mx", "mx:RULE" (RULE one of `MX_RULES`), "nvfp4",
    "nvfp4:RULE", "nvfp4:RULE:16x16" (RULE one of `NVFP4_RULES`; "nvfp4"
    alone is `NVFP4_DEFAULT_RULE`'s).
    """
    mx = _MX_SPELLING.fullmatch(scaling) if isinstance(scaling, str) else None
    nv = _NVFP4_SPELLING.fullmatch(scaling) if isinstance(scaling, str) else None
    if scaling == "tensor":
      g: Granularity = Tensor()
    elif scaling in ("axis", "channel"):
      g = Axis(-1)
    elif scaling == "mx":
      g = MX()
    elif mx is not None:
      g = MX(rule=mx.group(1))
    elif nv is not None:
      rule, tiles = nv.group(1) or NVFP4_DEFAULT_RULE, nv.group(2)
      g = NVFP4(rule, block=(16, 16) if tiles else 16)
    else:
      m = _SPELLING.fullmatch(scaling) if isinstance(scaling, str) else None
      if m is None:
        raise ValueError("scaling must be tensor, axis, block:B, block:BxC, mx, mx:RULE, nvfp4 "
                         f"or nvfp4:RULE, B and C positive integers (got {scaling!r})")
      g = Block(tuple(int(s) for s in m.groups() if s is not None))
    return cls(fmt, g, **options)

  @classmethod
  def from_options(cls, fmt: FormatLike, scaling: Any = "tensor", *, axis: Any = -1,
                   block_size: Any = None, scale_rounding: str | None = None,
                   nvfp4_rule: str | None = None, stacked: bool = False,
                   **options: Any) -> QuantSpec:
    """The spec of `quantize`'s keyword form; a static scale gives `Static(its shape)`.

    `scale_rounding` (MX only) names the MX rule; `nvfp4_rule` (required with
    scaling="nvfp4") and `stacked` go to `NVFP4`.
    """
    kind = scaling if isinstance(scaling, str) else Static.kind
    if scale_rounding is not None and kind != MX.kind:
      raise ValueError(f"scale_rounding applies to scaling='mx' (got scaling={scaling!r})")
    if (nvfp4_rule is not None or stacked) and kind != NVFP4.kind:
      name = "nvfp4_rule" if nvfp4_rule is not None else "stacked"
      raise ValueError(f"{name} applies to scaling='nvfp4' (got scaling={scaling!r})")
    if not isinstance(scaling, str):
      return cls(fmt, Static(np.shape(scaling)), **options)
    if scaling not in KINDS:
      raise ValueError(f"scaling must be one of {', '.join(map(repr, KINDS))} or a "
                       f"static scale (got {scaling!r})")
    if scaling == Tensor.kind:
      return cls(fmt, Tensor(), **options)
    if scaling == MX.kind:
      if block_size not in (None, MX_BLOCK):
        raise ValueError(f"scaling='mx' uses blocks of {MX_BLOCK} (got block_size={block_size!r})")
      return cls(fmt, MX(axis, MX_RULES[0] if scale_rounding is None else scale_rounding),
                 **options)
    if scaling == NVFP4.kind:
      if nvfp4_rule is None:
        raise ValueError("scaling='nvfp4' needs nvfp4_rule=, one of "
                         f"{', '.join(map(repr, NVFP4_RULES))}")
      block = _nvfp4_block(NVFP4_BLOCK if block_size is None else block_size)
      return cls(fmt, NVFP4(nvfp4_rule, axis, block, stacked), **options)
    if scaling == Axis.kind:
      if block_size is not None:
        raise ValueError("block_size applies to scaling='block' (got scaling='axis')")
      return cls(fmt, Axis(axis), **options)
    block = Block(block_size)
    k = len(block.sizes)
    if isinstance(axis, (tuple, list)):
      axes = tuple(axis)
    elif k == 1:
      axes = (axis,)
    elif axis == -1:
      axes = None  # tiles over the last k axes
    else:
      raise ValueError(f"block_size {block.sizes} tiles {k} axes; axis must be a tuple of {k} "
                       f"axes (got {axis!r})")
    return cls(fmt, Block(block.sizes, axes), **options)
