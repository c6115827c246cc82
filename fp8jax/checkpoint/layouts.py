"""The stored layouts of quantized weights, one per stack that reads them.

A weight's `WeightLayout` says how it is quantized (format, scaling); a
`Layout` says how a stack stores such a weight: which (format, scaling) it
can hold, the names, safetensors dtypes and shapes of the tensors of one
weight `X.weight`, how a `QArray` maps to those tensors and back, and the
`quantization_config` of the model folder's `config.json`.

| layout | read by | holds (2-D weights `[out, in]`) |
| --- | --- | --- |
| `compressed-tensors` | transformers, vLLM, compressed-tensors | e4m3fn per tensor, per output channel, in 1-D groups along `in` and in 2-D blocks (`float-quantized`); NVFP4 made by its own rule (`nvfp4-pack-quantized`); MX with e4m3fn, e2m1fn or e2m3fn elements (`mxfp8-quantized`, `mxfp4-pack-quantized`, `mxfp6-pack-quantized`) |
| `vllm` | vLLM (`fp8`), transformers (128x128 tiles only) | e4m3fn per tensor or in 128x128 tiles |
| `modelopt` | vLLM (`modelopt`), TensorRT-LLM | NVFP4 made by the ModelOpt or torchao rule (`W4A16_NVFP4`) |
| `fp8jax` | fp8jax only | everything: e5m2, FNUZ, E3M4, FP6, FP4, custom formats, every scaling |

The tensors of one weight `X.weight` of shape `[out, in]` (`fp8jax`: any shape):

| layout | (format, scaling) | tensors |
| --- | --- | --- |
| `compressed-tensors` | e4m3fn `tensor` | `X.weight` F8_E4M3 `[out, in]`, `X.weight_scale` F32 `[1]` |
| | e4m3fn `axis` | `X.weight_scale` F32 `[out, 1]` (strategy `channel`) |
| | e4m3fn `block:B` | `X.weight_scale` F32 `[out, ceil(in/B)]` (strategy `group`) |
| | e4m3fn `block:BxC` | `X.weight_scale` F32 `[ceil(out/B), ceil(in/C)]` (strategy `block`) |
| | e2m1fn NVFP4 | `X.weight_packed` U8 `[out, in/2]`, `X.weight_scale` F8_E4M3 `[out, in/16]`, `X.weight_global_scale` F32 `[1]` |
| | e4m3fn `mx` | `X.weight` F8_E4M3, `X.weight_scale` U8 (e8m0) `[out, ceil(in/32)]` |
| | e2m1fn / e2m3fn `mx` | `X.weight_packed` U8 `[out, in/2]` / `[out, 3*in/4]`, `X.weight_scale` U8 (e8m0) |
| `vllm` | e4m3fn `tensor` | `X.weight` F8_E4M3, `X.weight_scale` F32 `[]` |
| | e4m3fn `block:128x128` | `X.weight` F8_E4M3, `X.weight_scale_inv` F32 `[ceil(out/128), ceil(in/128)]` |
| `modelopt` | e2m1fn NVFP4 | `X.weight` U8 `[out, in/2]`, `X.weight_scale` F8_E4M3 `[out, in/16]`, `X.weight_scale_2` F32 `[]` |
| `fp8jax` | any | `X.weight_fp8jax_codes` (F8_E4M3, F8_E5M2 or U8, one code per byte), `X.weight_fp8jax_scale` (F32; U8 e8m0 for MX; F8_E4M3 for NVFP4), `X.weight_fp8jax_tensor_scale` F32 (NVFP4) |

Every scale holds the dequantizing multiplier (vLLM's `_scale_inv` too),
except compressed-tensors' `weight_global_scale`, which is NVFP4's encoding
scale 2688 / amax: the `tensor_scale` of fp8jax's "compressed-tensors" NVFP4
rule, stored as it is. Scales are float32 as fp8jax computes them;
compressed-tensors itself writes scales in the weight's dtype, and
transformers casts them to the model's dtype when it loads, so a bfloat16
model dequantizes with bfloat16-rounded scales there (float32 models, vLLM
and compressed-tensors' own decompression use them as they are).

compressed-tensors checkpoints of e4m3fn weights per tensor, per channel and
in 2-D blocks declare FP8 activations quantized dynamically (per token, or in
groups of the block's width), as llm-compressor's FP8_DYNAMIC and FP8_BLOCK
schemes do: that is what vLLM serves with FP8 matmuls, and its CPU build has
no weight-only FP8 kernel. transformers then rounds the activations of every
forward pass to e4m3fn. With `weight_only` (`--weight-only`) they are
weight-only (`input_activations` null, "W8A16"), and transformers computes
exactly with the dequantized weights. Other formats and 1-D groups are
weight-only.

The `fp8jax` layout keeps its codes away from the names loaders know, so no
loader takes raw codes for weights, and its `quantization_config` has no
`quant_method`, on which transformers refuses to load the model ("has no
`quant_method` attribute"); with an unknown `quant_method` it would load it
with the weights it cannot find randomly initialized, after a warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import dataclasses
import math
import re
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from fp8jax import __version__
from fp8jax.checkpoint.safetensors_io import Entry
from fp8jax.checkpoint.stored import WeightLayout
from fp8jax.core import packing
from fp8jax.core.formats import FORMATS, Format
from fp8jax.quant.qarray import QArray
from fp8jax.quant.spec import MX, MX_BLOCK, NVFP4, NVFP4_BLOCK, QuantSpec

LAYOUT_NAMES = ("compressed-tensors", "vllm", "modelopt", "fp8jax")
"""The layouts, in the order `default_layout` prefers them (but vllm first for e4m3fn
128x128 tiles)."""

ONLY_FP8JAX = "only `fp8jax dequantize` reads this layout"
"""The warning of a layout that no other stack reads."""

VLLM_BLOCK = (128, 128)
CODES_SUFFIX = "_fp8jax_codes"
SCALE_SUFFIX = "_fp8jax_scale"
TENSOR_SCALE_SUFFIX = "_fp8jax_tensor_scale"

_E4M3 = FORMATS["e4m3fn"]
# compressed-tensors' MX formats: element format -> (its format, num_bits).
_CT_MX = {"e4m3fn": ("mxfp8-quantized", 8), "e2m1fn": ("mxfp4-pack-quantized", 4),
          "e2m3fn": ("mxfp6-pack-quantized", 6)}
_NVFP4_ALGO = "W4A16_NVFP4"  # ModelOpt's weight-only NVFP4: no activation scales to calibrate


def module_name(tensor_name: str) -> str:
  """`model.layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj`.

  Example:
    >>> module_name("lm_head.weight"), module_name("lm_head")
    ('lm_head', 'lm_head')
  """
  base, dot, last = tensor_name.rpartition(".")
  return base if dot and last == "weight" else tensor_name


def ignored_modules(ignored: Iterable[str]) -> list[str]:
  """The sorted module names of the unquantized weights `ignored` (tensor names)."""
  return sorted({module_name(n) for n in ignored})


@dataclasses.dataclass(frozen=True)
class _Grid:
  """How a 2-D weight `[out, in]` is scaled, in the terms the stacks use.

  kind: "tensor", "channel" (one scale per output row), "group" (1-D blocks
  along `in`), "block" (2-D tiles), "mx", "nvfp4" (1-D blocks along `in`,
  one tensor scale).
  """

  kind: str
  block: tuple[int, ...] = ()


def _grid(wl: WeightLayout) -> _Grid | None:
  """`wl` as a 2-D weight's grid the stacks know, None for any other (scales along `out`, ...)."""
  spec = wl.spec
  try:
    axes, block = spec.grouping(2)
  except ValueError:  # an axis a 2-D weight does not have
    return None
  kind = spec.kind
  if kind == "tensor":
    return _Grid("tensor")
  if kind == "axis" and axes == (-1,):
    return _Grid("channel")
  if kind == "block" and axes == (-1,):
    return _Grid("group", block)
  if kind == "block" and axes == (-2, -1):
    return _Grid("block", block)
  if kind == MX.kind and axes == (-1,):
    return _Grid("mx", block)
  if kind == NVFP4.kind and axes == (-1,) and not spec.granularity.stacked:
    return _Grid("nvfp4", block)
  return None


def _nvfp4_rule(wl: WeightLayout) -> str:
  return wl.spec.granularity.rule


def _check(layout: Layout, wl: WeightLayout) -> None:
  why = layout.refusal(wl)
  if why is not None:
    raise ValueError(why)


def _codes_per_byte(q: QArray) -> np.ndarray:
  """The QArray's codes, one per byte (unpacked when the spec packs FP4)."""
  bits = np.asarray(q.bits)
  if q.packed:
    bits = np.asarray(packing.unpack_codes(jnp.asarray(bits), q.shape[-1]))
  return bits


def _pack_fp4(codes: np.ndarray) -> np.ndarray:
  return np.asarray(packing.pack_codes(jnp.asarray(codes)))


def _pack_fp6(codes: np.ndarray) -> np.ndarray:
  """Four 6-bit codes in three bytes, as a little-endian 24-bit word (compressed-tensors' mxfp6)."""
  c = (codes.astype(np.uint32) & 0x3F).reshape(codes.shape[:-1] + (-1, 4))
  word = c[..., 0] | c[..., 1] << 6 | c[..., 2] << 12 | c[..., 3] << 18
  packed = np.stack([word, word >> 8, word >> 16], axis=-1) & 0xFF
  return packed.astype(np.uint8).reshape(codes.shape[:-1] + (-1,))


def _unpack_fp6(packed: np.ndarray) -> np.ndarray:
  b = packed.astype(np.uint32).reshape(packed.shape[:-1] + (-1, 3))
  word = b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16
  codes = np.stack([word >> s & 0x3F for s in (0, 6, 12, 18)], axis=-1)
  return codes.astype(np.uint8).reshape(packed.shape[:-1] + (-1,))


def _qarray(wl: WeightLayout, bits: np.ndarray, scale: np.ndarray, dtype: Any,
            tensor_scale: np.ndarray | None = None) -> QArray:
  """The QArray of one-code-per-byte `bits` (packed when the spec packs FP4)."""
  spec = wl.spec.resolved(bits.ndim)
  odd = bool(spec.pack and bits.shape[-1] % 2)
  if spec.pack:
    bits = _pack_fp4(bits)
  ts = None if tensor_scale is None else jnp.asarray(tensor_scale, jnp.float32)
  return QArray(jnp.asarray(bits, jnp.uint8), jnp.asarray(scale), spec, np.dtype(dtype), odd,
                None, ts)


@dataclasses.dataclass(frozen=True)
class Layout:
  """One stack's stored layout of quantized weights.

  Attributes:
    name: one of `LAYOUT_NAMES`.
    readers: who loads checkpoints in this layout, for messages.

  Example:
    >>> layout = get_layout("compressed-tensors")
    >>> wl = WeightLayout.parse("e4m3fn", "block:128x128")
    >>> [(e.name, e.dtype, e.shape) for e in layout.tensors("fc.weight", (300, 260), wl)]
    [('fc.weight', 'F8_E4M3', (300, 260)), ('fc.weight_scale', 'F32', (3, 3))]
    >>> get_layout("vllm").refusal(WeightLayout.parse("e5m2", "tensor"))
    'vllm holds e4m3fn per tensor or in 128x128 tiles (got e5m2 tensor)'
  """

  name: ClassVar[str]
  readers: ClassVar[str]

  @property
  def warning(self) -> str | None:
    """A warning for whoever writes this layout, None when stacks read it."""
    return None

  @property
  def note(self) -> str | None:
    """`warning`, naming the layout (what the command line prints), or None."""
    return None if self.warning is None else f"layout {self.name}: {self.warning}"

  def refusal(self, weight_layout: WeightLayout) -> str | None:
    """Why this layout cannot hold weights quantized as `weight_layout`; None when it can."""
    raise NotImplementedError

  def holds(self, weight_layout: WeightLayout) -> bool:
    """Whether this layout can hold weights quantized as `weight_layout`."""
    return self.refusal(weight_layout) is None

  def tensor_refusal(self, weight_name: str, shape: tuple[int, ...],
                     weight_layout: WeightLayout) -> str | None:
    """Why the weight `weight_name` of `shape` cannot be stored in this layout; None when it can.

    Besides `refusal`: the stacks' layouts name scales after `X.weight`,
    store 2-D weights, and their loaders need 1-D groups (MX and NVFP4
    blocks too) to divide the input axis; 2-D tiles need not divide the
    weight (compressed-tensors pads it, then cuts the padding off).
    """
    why = self.refusal(weight_layout)
    if why is not None:
      return why
    if not weight_name.endswith("weight"):
      return f"{self.name} stores weights named X.weight (got {weight_name!r})"
    if len(shape) != 2:
      return f"{self.name} stores 2-D weights (got {weight_name!r} of shape {list(shape)})"
    grid = _grid(weight_layout)
    if grid.kind in ("group", "mx", "nvfp4") and shape[-1] % grid.block[0]:
      return (f"{self.name} needs the input axis to be a multiple of {grid.block[0]} for "
              f"{weight_layout.describe()} (got {weight_name!r} of shape {list(shape)})")
    return None

  def tensors(self, weight_name: str, shape: tuple[int, ...],
              weight_layout: WeightLayout) -> list[Entry]:
    """The stored tensors of the weight `weight_name` of `shape`: names, dtype tags, shapes."""
    raise NotImplementedError

  def stored_tensors(self, weight_name: str, q: QArray) -> dict[str, np.ndarray]:
    """The arrays to store for the weight `weight_name` quantized as `q`, by name.

    Args:
      weight_name: the weight's name, `X.weight`.
      q: the weight quantized by `fp8jax.quantize` with a spec this layout holds.

    Returns:
      NumPy arrays in the order and shapes of `tensors`; float8 and packed
      codes are uint8 (their safetensors tags are `tensors`').

    Raises:
      ValueError: this layout cannot hold `q` (`refusal`).
    """
    raise NotImplementedError

  def qarray(self, weight_name: str, stored: Mapping[str, Any], weight_layout: WeightLayout,
             dtype: Any) -> QArray:
    """The `QArray` back from the stored arrays of `weight_name` (`stored_tensors`' inverse).

    Args:
      weight_name: the weight's name, `X.weight`.
      stored: arrays by name (at least this weight's); float8 codes as uint8.
      weight_layout: how the weight was quantized.
      dtype: the original weight's dtype.

    Returns:
      A QArray that dequantizes to the values of the one stored (codes
      packed as `weight_layout`'s spec packs them).
    """
    raise NotImplementedError

  def quantization_config(self, weight_layout: WeightLayout, ignored: Iterable[str],
                          weight_only: bool = False) -> dict[str, Any]:
    """The `quantization_config` of `config.json` for weights quantized as `weight_layout`.

    Args:
      weight_layout: the weights' layout.
      ignored: names of the floating-point weights with 2 or more dimensions
        left unquantized (embeddings, `lm_head`, routers, `--exclude`d).
      weight_only: declare no activation quantization. By default the
        compressed-tensors layout declares FP8 activations quantized
        dynamically (per token; in groups of the block's width for 2-D
        blocks) for e4m3fn weights per tensor, per channel and in 2-D
        blocks, as llm-compressor's FP8_DYNAMIC and FP8_BLOCK schemes do:
        what vLLM serves with FP8 matmuls on every backend (on CPU it has
        no weight-only FP8 kernel). The vllm layout always declares dynamic
        activations (its `fp8` method has no weight-only form).

    Returns:
      A JSON-ready dict.
    """
    raise NotImplementedError

  def side_files(self, weight_layout: WeightLayout, ignored: Iterable[str]) -> dict[str, Any]:
    """Other JSON files the model folder needs, by file name (ModelOpt's `hf_quant_config.json`)."""
    del weight_layout, ignored
    return {}


def _ct_weights(wl: WeightLayout) -> dict[str, Any]:
  """compressed-tensors' `QuantizationArgs` of the weights, as JSON."""
  grid = _grid(wl)
  args: dict[str, Any] = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False}
  if grid.kind in ("tensor", "channel"):
    args["strategy"] = grid.kind
  elif grid.kind == "group":
    args.update(strategy="group", group_size=grid.block[0])
  elif grid.kind == "block":
    args.update(strategy="block", block_structure=list(grid.block))
  elif grid.kind == "mx":
    args.update(num_bits=_CT_MX[wl.fmt.name][1], strategy="group", group_size=MX_BLOCK,
                scale_dtype="torch.uint8", zp_dtype="torch.uint8")
  else:  # nvfp4
    args.update(num_bits=4, strategy="tensor_group", group_size=NVFP4_BLOCK,
                scale_dtype="torch.float8_e4m3fn", zp_dtype="torch.float8_e4m3fn")
  return args


def _ct_activations(wl: WeightLayout) -> dict[str, Any] | None:
  """The dynamic FP8 activations of llm-compressor's FP8 schemes, where one matches `wl`."""
  grid = _grid(wl)
  if wl.fmt != _E4M3 or grid.kind not in ("tensor", "channel", "block"):
    return None
  args: dict[str, Any] = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True,
                          "strategy": "token"}
  if grid.kind == "block":
    args.update(strategy="group", group_size=grid.block[1])
  return args


@dataclasses.dataclass(frozen=True)
class _CompressedTensors(Layout):
  name: ClassVar[str] = "compressed-tensors"
  readers: ClassVar[str] = "transformers, vLLM and compressed-tensors"

  def refusal(self, weight_layout: WeightLayout) -> str | None:
    wl, grid = weight_layout, _grid(weight_layout)
    got = f"(got {wl.describe()})"
    if grid is None:
      return ("compressed-tensors holds scales per tensor, per output channel, in 1-D groups "
              f"along the input axis, in 2-D blocks, MX or NVFP4 {got}")
    if grid.kind == "nvfp4":
      if _nvfp4_rule(wl) != "compressed-tensors":
        return ("compressed-tensors holds NVFP4 made with nvfp4_rule 'compressed-tensors', whose "
                f"tensor scale it stores {got}")
      return None
    if grid.kind == "mx":
      if wl.fmt not in [FORMATS[n] for n in _CT_MX]:
        return f"compressed-tensors holds MX elements e4m3fn, e2m1fn or e2m3fn {got}"
      return None
    if wl.fmt != _E4M3:
      return f"compressed-tensors holds FP8 weights as e4m3fn {got}"
    return None

  def format(self, weight_layout: WeightLayout) -> str:
    """compressed-tensors' `format` for `weight_layout`: "float-quantized", ...

    Example:
      >>> get_layout("compressed-tensors").format(WeightLayout.parse("e2m1fn", "mx"))
      'mxfp4-pack-quantized'
    """
    _check(self, weight_layout)
    kind = _grid(weight_layout).kind
    if kind == "mx":
      return _CT_MX[weight_layout.fmt.name][0]
    return "nvfp4-pack-quantized" if kind == "nvfp4" else "float-quantized"

  def _packed(self, wl: WeightLayout) -> bool:
    return wl.fmt.bits < 8

  def tensors(self, weight_name, shape, weight_layout):
    _check(self, weight_layout)
    wl, grid = weight_layout, _grid(weight_layout)
    shape = tuple(shape)
    scale_shape = (1,) if grid.kind == "tensor" else wl.scale_shape(shape)
    if not self._packed(wl):
      return [Entry(weight_name, "F8_E4M3", shape),
              Entry(weight_name + "_scale", "U8" if grid.kind == "mx" else "F32", scale_shape)]
    per_byte = 8 / wl.fmt.bits
    packed = shape[:-1] + (math.ceil(shape[-1] / per_byte),)
    entries = [Entry(weight_name + "_packed", "U8", packed)]
    if grid.kind == "mx":
      return entries + [Entry(weight_name + "_scale", "U8", scale_shape)]
    return entries + [Entry(weight_name + "_scale", "F8_E4M3", scale_shape),
                      Entry(weight_name + "_global_scale", "F32", (1,))]

  def stored_tensors(self, weight_name, q):
    wl = WeightLayout(q.spec)
    _check(self, wl)
    kind = _grid(wl).kind
    codes = _codes_per_byte(q)
    scale = np.asarray(q.scale)
    if kind == "tensor":
      scale = scale.reshape(1)  # transformers' compressed-tensors loader refuses a shape []
    if not self._packed(wl):
      return {weight_name: codes, weight_name + "_scale": scale}
    packed = _pack_fp6(codes) if wl.fmt.bits == 6 else _pack_fp4(codes)
    out = {weight_name + "_packed": packed, weight_name + "_scale": scale}
    if kind == "nvfp4":
      # compressed-tensors' own rule: its tensor scale is the weight_global_scale it stores.
      out[weight_name + "_global_scale"] = np.asarray(q.tensor_scale, np.float32).reshape(1)
    return out

  def qarray(self, weight_name, stored, weight_layout, dtype):
    _check(self, weight_layout)
    wl, kind = weight_layout, _grid(weight_layout).kind
    scale = np.asarray(stored[weight_name + "_scale"])
    if not self._packed(wl):
      codes = np.asarray(stored[weight_name])
      return _qarray(wl, codes, scale.reshape(()) if kind == "tensor" else scale, dtype)
    packed = np.asarray(stored[weight_name + "_packed"])
    if wl.fmt.bits == 6:
      codes = _unpack_fp6(packed)
    else:
      codes = np.asarray(packing.unpack_codes(jnp.asarray(packed), 2 * packed.shape[-1]))
    ts = None
    if kind == "nvfp4":
      ts = np.asarray(stored[weight_name + "_global_scale"], np.float32).reshape(())
    return _qarray(wl, codes, scale, dtype, ts)

  def quantization_config(self, weight_layout, ignored, weight_only=False):
    fmt = self.format(weight_layout)
    scheme = {"targets": ["Linear"], "weights": _ct_weights(weight_layout),
              "input_activations": None if weight_only else _ct_activations(weight_layout),
              "output_activations": None, "format": fmt}
    return {"quant_method": "compressed-tensors", "format": fmt,
            "quantization_status": "compressed", "config_groups": {"group_0": scheme},
            "ignore": ignored_modules(ignored), "kv_cache_scheme": None}


@dataclasses.dataclass(frozen=True)
class _Vllm(Layout):
  name: ClassVar[str] = "vllm"
  readers: ClassVar[str] = "vLLM (and transformers, for 128x128 tiles only)"

  def refusal(self, weight_layout):
    grid = _grid(weight_layout)
    if weight_layout.fmt == _E4M3 and grid is not None and (
        grid.kind == "tensor" or (grid.kind == "block" and grid.block == VLLM_BLOCK)):
      return None
    return f"vllm holds e4m3fn per tensor or in 128x128 tiles (got {weight_layout.describe()})"

  def _scale_name(self, weight_name: str, wl: WeightLayout) -> str:
    # vLLM's and transformers' block loaders read `_scale_inv`; it holds the multiplier all the same.
    return weight_name + ("_scale" if _grid(wl).kind == "tensor" else "_scale_inv")

  def tensors(self, weight_name, shape, weight_layout):
    _check(self, weight_layout)
    shape = tuple(shape)
    return [Entry(weight_name, "F8_E4M3", shape),
            Entry(self._scale_name(weight_name, weight_layout), "F32",
                  weight_layout.scale_shape(shape))]

  def stored_tensors(self, weight_name, q):
    wl = WeightLayout(q.spec)
    _check(self, wl)
    return {weight_name: _codes_per_byte(q), self._scale_name(weight_name, wl): np.asarray(q.scale)}

  def qarray(self, weight_name, stored, weight_layout, dtype):
    _check(self, weight_layout)
    scale = np.asarray(stored[self._scale_name(weight_name, weight_layout)], np.float32)
    return _qarray(weight_layout, np.asarray(stored[weight_name]), scale, dtype)

  def quantization_config(self, weight_layout, ignored, weight_only=False):
    del weight_only
    _check(self, weight_layout)
    modules = ignored_modules(ignored)
    config: dict[str, Any] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    if _grid(weight_layout).kind == "block":
      config["weight_block_size"] = list(VLLM_BLOCK)
    # `modules_to_not_convert` is the key transformers reads, `ignored_layers` vLLM's.
    config["ignored_layers"] = modules
    config["modules_to_not_convert"] = list(modules)
    return config


@dataclasses.dataclass(frozen=True)
class _ModelOpt(Layout):
  name: ClassVar[str] = "modelopt"
  readers: ClassVar[str] = "vLLM and TensorRT-LLM (not transformers)"

  def refusal(self, weight_layout):
    grid = _grid(weight_layout)
    if grid is not None and grid.kind == "nvfp4" and _nvfp4_rule(weight_layout) in (
        "modelopt", "torchao"):
      return None
    return ("modelopt holds NVFP4 in 16-element blocks along the input axis made with "
            f"nvfp4_rule 'modelopt' or 'torchao' (got {weight_layout.describe()})")

  def tensors(self, weight_name, shape, weight_layout):
    _check(self, weight_layout)
    shape = tuple(shape)
    return [Entry(weight_name, "U8", shape[:-1] + (math.ceil(shape[-1] / 2),)),
            Entry(weight_name + "_scale", "F8_E4M3", weight_layout.scale_shape(shape)),
            Entry(weight_name + "_scale_2", "F32", ())]

  def stored_tensors(self, weight_name, q):
    _check(self, WeightLayout(q.spec))
    # Both rules store amax / 2688, the decode multiplier ModelOpt's weight_scale_2 holds.
    return {weight_name: _pack_fp4(_codes_per_byte(q)), weight_name + "_scale": np.asarray(q.scale),
            weight_name + "_scale_2": np.asarray(q.tensor_scale, np.float32).reshape(())}

  def qarray(self, weight_name, stored, weight_layout, dtype):
    _check(self, weight_layout)
    packed = np.asarray(stored[weight_name])
    codes = np.asarray(packing.unpack_codes(jnp.asarray(packed), 2 * packed.shape[-1]))
    ts = np.asarray(stored[weight_name + "_scale_2"], np.float32).reshape(())
    return _qarray(weight_layout, codes, np.asarray(stored[weight_name + "_scale"]), dtype, ts)

  def quantization_config(self, weight_layout, ignored, weight_only=False):
    del weight_only
    _check(self, weight_layout)
    return {"quant_method": "modelopt", "quant_algo": _NVFP4_ALGO, "group_size": NVFP4_BLOCK,
            "ignore": ignored_modules(ignored), "kv_cache_scheme": None}

  def side_files(self, weight_layout, ignored):
    _check(self, weight_layout)
    quantization = {"quant_algo": _NVFP4_ALGO, "kv_cache_quant_algo": None,
                    "group_size": NVFP4_BLOCK, "exclude_modules": ignored_modules(ignored)}
    return {"hf_quant_config.json": {"producer": {"name": "fp8jax", "version": __version__},
                                     "quantization": quantization}}


def _scale_tag(wl: WeightLayout) -> str:
  if wl.spec.kind == NVFP4.kind:
    return "F8_E4M3"
  return wl.scale_dtype


@dataclasses.dataclass(frozen=True)
class _Fp8jax(Layout):
  name: ClassVar[str] = "fp8jax"
  readers: ClassVar[str] = "fp8jax only"

  @property
  def warning(self) -> str | None:
    return ONLY_FP8JAX

  def refusal(self, weight_layout):
    del weight_layout
    return None

  def tensor_refusal(self, weight_name, shape, weight_layout):
    del weight_name, shape, weight_layout
    return None

  def tensors(self, weight_name, shape, weight_layout):
    shape = tuple(shape)
    entries = [Entry(weight_name + CODES_SUFFIX, weight_layout.bits_dtype, shape),
               Entry(weight_name + SCALE_SUFFIX, _scale_tag(weight_layout),
                     weight_layout.scale_shape(shape))]
    ts = weight_layout.spec.tensor_scale_shape(shape)
    if ts is not None:
      entries.append(Entry(weight_name + TENSOR_SCALE_SUFFIX, "F32", ts))
    return entries

  def stored_tensors(self, weight_name, q):
    out = {weight_name + CODES_SUFFIX: _codes_per_byte(q), weight_name + SCALE_SUFFIX:
           np.asarray(q.scale)}
    if q.tensor_scale is not None:
      out[weight_name + TENSOR_SCALE_SUFFIX] = np.asarray(q.tensor_scale, np.float32)
    return out

  def qarray(self, weight_name, stored, weight_layout, dtype):
    ts = stored.get(weight_name + TENSOR_SCALE_SUFFIX)
    return _qarray(weight_layout, np.asarray(stored[weight_name + CODES_SUFFIX]),
                   np.asarray(stored[weight_name + SCALE_SUFFIX]), dtype,
                   None if ts is None else np.asarray(ts))

  def quantization_config(self, weight_layout, ignored, weight_only=False):
    del weight_only
    wl = weight_layout
    config: dict[str, Any] = {
        "layout": "fp8jax", "note": ONLY_FP8JAX, "format": wl.fmt.name, "scaling": wl.scaling,
        "codes_suffix": CODES_SUFFIX, "codes_dtype": wl.bits_dtype,
        "scale_suffix": SCALE_SUFFIX, "scale_dtype": _scale_tag(wl)}
    if wl.spec.kind == MX.kind:
      config["scale_format"] = "e8m0fnu"
    if wl.spec.kind == NVFP4.kind:
      config.update(scale_format="e4m3fn", stacked=wl.spec.granularity.stacked,
                    tensor_scale_suffix=TENSOR_SCALE_SUFFIX, tensor_scale_dtype="F32")
    g = wl.spec.granularity
    if getattr(g, "axis", -1) != -1:  # the spelling says the last axis
      config["axis"] = g.axis
    if getattr(g, "axes", None) is not None:
      config["axes"] = list(g.axes)
    if FORMATS.get(wl.fmt.name) != wl.fmt:
      config["format_fields"] = _format_fields(wl.fmt)
    # No quant_method, on purpose: transformers refuses to load such a model.
    config["ignore"] = ignored_modules(ignored)
    return config


def _format_fields(fmt: Format) -> dict[str, Any]:
  """A custom format's defining fields, so that a reader can rebuild it."""
  return {"exponent_bits": fmt.exponent_bits, "mantissa_bits": fmt.mantissa_bits,
          "bias": fmt.bias, "convention": fmt.convention}


LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (_CompressedTensors(), _Vllm(), _ModelOpt(), _Fp8jax())}
"""Every layout, by name."""


def get_layout(name: str) -> Layout:
  """The layout called `name`, one of `LAYOUT_NAMES`.

  Raises:
    ValueError: an unknown name.

  Example:
    >>> get_layout("fp8jax").warning
    'only `fp8jax dequantize` reads this layout'
  """
  layout = LAYOUTS.get(name) if isinstance(name, str) else None
  if layout is None:
    raise ValueError(f"layout must be one of {', '.join(LAYOUT_NAMES)} (got {name!r})")
  return layout


def default_layout(weight_layout: WeightLayout) -> str:
  """The layout fp8jax writes `weight_layout` in by default: the first that holds it.

  vllm for e4m3fn 128x128 tiles (DeepSeek-V3's layout, which transformers
  and vLLM both load, on every vLLM backend, its CPU one included), then
  compressed-tensors (transformers and vLLM both read it; vllm's per-tensor
  layout transformers misreads), then modelopt (NVFP4 of the ModelOpt and
  torchao rules, which vLLM reads), fp8jax for the rest.

  Example:
    >>> default_layout(WeightLayout.parse("e4m3fn", "axis"))
    'compressed-tensors'
    >>> default_layout(WeightLayout.parse("e4m3fn", "block:128x128"))
    'vllm'
    >>> default_layout(WeightLayout.parse("e5m2", "tensor"))
    'fp8jax'
  """
  grid = _grid(weight_layout)
  if grid is not None and grid.kind == "block" and LAYOUTS["vllm"].holds(weight_layout):
    return "vllm"
  for name in ("compressed-tensors", "modelopt"):
    if LAYOUTS[name].holds(weight_layout):
      return name
  return "fp8jax"


_NVFP4_SPELLING = re.compile(r"nvfp4:([a-z-]+)(:16x16)?")


def _spec(fmt: Format, config: Mapping[str, Any]) -> QuantSpec:
  """The spec of the fp8jax layout's config: its scaling's spelling, then the axes it records."""
  scaling, axis, axes = config["scaling"], config.get("axis", -1), config.get("axes")
  m = _NVFP4_SPELLING.fullmatch(scaling)
  if m is not None:
    block = (NVFP4_BLOCK, NVFP4_BLOCK) if m.group(2) else (NVFP4_BLOCK,)
    return QuantSpec(fmt, NVFP4(m.group(1), axis, block, bool(config.get("stacked"))))
  spec = QuantSpec.parse(fmt, scaling)
  g = spec.granularity
  if axes is not None:
    g = dataclasses.replace(g, axes=tuple(axes))
  elif axis != -1:
    g = dataclasses.replace(g, axis=axis)
  return dataclasses.replace(spec, granularity=g)


def read_config(config: Mapping[str, Any]) -> tuple[Layout, WeightLayout]:
  """The layout and weight layout of a `quantization_config` this module writes.

  compressed-tensors' MX layouts do not record the shared-exponent rule,
  which decides codes, not values: they read back with the OCP rule.

  Raises:
    ValueError: a configuration no layout here writes.

  Example:
    >>> wl = WeightLayout.parse("e4m3fn", "block:32")
    >>> layout, back = read_config(get_layout("compressed-tensors").quantization_config(wl, []))
    >>> layout.name, back == wl
    ('compressed-tensors', True)
  """
  method = config.get("quant_method")
  if method == "fp8":
    block = config.get("weight_block_size")
    if block is not None and list(block) != list(VLLM_BLOCK):
      raise ValueError(f"weight_block_size {block!r}: fp8jax converts vLLM's fp8 layout in "
                       "128x128 tiles only")
    scaling = "block:128x128" if block is not None else "tensor"
    return LAYOUTS["vllm"], WeightLayout(QuantSpec.parse("e4m3fn", scaling))
  if method == "modelopt" and config.get("quant_algo") == _NVFP4_ALGO:
    return LAYOUTS["modelopt"], WeightLayout(QuantSpec("e2m1fn", NVFP4("modelopt")))
  if method is None and config.get("layout") == "fp8jax":
    fields = config.get("format_fields")
    if fields is not None:
      fmt = Format(fields["exponent_bits"], fields["mantissa_bits"], fields["bias"],
                   fields["convention"])
    else:
      fmt = FORMATS[config["format"]]
    return LAYOUTS["fp8jax"], WeightLayout(_spec(fmt, config))
  if method == "compressed-tensors":
    return LAYOUTS["compressed-tensors"], _read_ct(config)
  raise ValueError(f"not a quantization_config fp8jax writes (quant_method {method!r})")


def _read_ct(config: Mapping[str, Any]) -> WeightLayout:
  groups = list(config.get("config_groups", {}).values())
  if len(groups) != 1:
    raise ValueError(f"fp8jax writes one compressed-tensors config group (got {len(groups)})")
  w = groups[0]["weights"]
  fmt = config.get("format")
  if fmt == "nvfp4-pack-quantized":
    return WeightLayout(QuantSpec("e2m1fn", NVFP4("compressed-tensors")))
  mx = {v[0]: k for k, v in _CT_MX.items()}
  if fmt in mx:
    return WeightLayout(QuantSpec(mx[fmt], MX()))
  strategy = w.get("strategy")
  if strategy == "group":
    return WeightLayout(QuantSpec.parse("e4m3fn", f"block:{w['group_size']}"))
  if strategy == "block":
    return WeightLayout(QuantSpec.parse("e4m3fn", "block:{}x{}".format(*w["block_structure"])))
  return WeightLayout(QuantSpec.parse("e4m3fn", "axis" if strategy == "channel" else "tensor"))
