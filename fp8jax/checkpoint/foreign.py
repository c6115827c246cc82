"""Checkpoints other stacks quantized, read back as plain floats exactly as each one dequantizes.

`detect` reads a model folder's `quantization_config` (in `config.json`; for
ModelOpt also `hf_quant_config.json`), matches it against the stored
tensors, and plans the dequantization of every quantized weight. A
`ForeignWeight` names the stored tensors it is built from and computes, from
their values, what the producer's own dequantization gives. Every check is
made by `detect`, before any tensor is read; a config fp8jax cannot read,
or one its tensors contradict (a missing scale, a scale of the wrong shape or
dtype, an unknown strategy), is one `CheckpointError` naming the tensor.

What is read, for a weight `X.weight` of shape [out, in] (`quant_method` is
the config's; fl() is float32 rounding, bf() bfloat16 rounding, rd_T()
rounding to the dtype T, code the element's value):

| producer | stored | dequantized value |
| --- | --- | --- |
| `compressed-tensors` FP8 (`float-quantized`, `naive-quantized`) | `X.weight` F8_E4M3, `X.weight_scale` in dtype T: tensor [1] or [], channel [out, 1], group [out, in/g], block [ceil(out/b0), ceil(in/b1)] | rd_T(code * s) |
| `compressed-tensors` `nvfp4-pack-quantized` | `X.weight_packed` U8 (two E2M1 codes a byte, the even element in the low nibble), `X.weight_scale` F8_E4M3 per 16, `X.weight_global_scale` F32 g | bf(fl(code * fl(s / g))); with g of shape [] bf(code * bf(fl(s / g))) |
| `compressed-tensors` `mxfp4-pack-quantized`, `mxfp6-pack-quantized`, `mxfp8-quantized` | `X.weight_packed` E2M1, or E2M3 four codes in three bytes, or `X.weight` F8_E4M3; `X.weight_scale` U8 exponents e per 32 | bf(code * 2^(e - 127)) |
| `modelopt` NVFP4 (or `hf_quant_config.json`) | `X.weight` U8 packed E2M1, `X.weight_scale` F8_E4M3 per 16, `X.weight_scale_2` F32 t | fl(code * fl(s * t)), code 0x8 read as +0 |
| `fp8` (vLLM, DeepSeek-V3) | `X.weight` F8_E4M3 with `X.weight_scale_inv` per `weight_block_size` tile (default 128x128; edge tiles partial) or one `X.weight_scale` | fl(code * s) |
| `mxfp4` (gpt-oss) | `P_blocks` U8 [E, R, G, B] and `P_scales` U8 [E, R, G] of the MoE experts | `P` [E, 2BG, R]: ldexp(code, e - 127), the last two axes swapped |

Where the producers differ:

- The NVFP4 tensor scale points both ways. compressed-tensors stores the
  encode multiplier g (about 2688 / amax) and divides: the block's decode
  multiplier is fl(s / g), in float32 (`scale / global_scale` of a bfloat16
  scale by a float32 [1] tensor). ModelOpt stores the decode multiplier t
  (amax / 2688) and multiplies: fl(s * t). The two are not reciprocal bit
  for bit, so each is read its own way. When g is a 0-d tensor (as
  compressed-tensors' own ModelOpt converter writes `1 / weight_scale_2`),
  torch's promotion keeps the bfloat16 scale's dtype and the multiplier is
  rounded to bfloat16 first.
- compressed-tensors dequantizes in a narrow dtype: FP8 weights in the
  scale's dtype (the weight's own, BF16 or F16 or F32), the packed and MX
  formats in bfloat16 (`unpack_fp4_from_uint8`'s default, and
  `decompress_mx_scale` computes `2.0 ** (e - 127)` in bfloat16). Its
  decompression then already is the rounded result, whatever dtype the
  model is cast to afterwards; `dequantize` returns those rounded values
  (as float32, exactly). The others dequantize in float32 and cast once at
  the end; `dequantize` returns the float32 values before that cast.
- The MX exponent 255: compressed-tensors computes the scale 2^(255 - 127)
  in bfloat16, which is infinite (and 0 times it NaN), where e8m0fnu
  decoding gives NaN; transformers scales gpt-oss's values with
  `torch.ldexp`, exactly (0.5 * 2^128 is 2^127, 0 stays 0). `F8_E8M0`
  scales of `fp8` checkpoints are decoded as e8m0fnu (255: NaN), as
  torch's cast does.
- E2M1 code 0x8 is -0.0 for compressed-tensors and gpt-oss, +0.0 in
  ModelOpt's table.
- gpt-oss stores each expert's [out, in] weight as rows of 32-element MX
  blocks; transformers' `convert_moe_packed_tensors` decodes them to [E, out,
  in] and swaps the last two axes: `experts.gate_up_proj` is [E, hidden, 2 *
  intermediate], `experts.down_proj` [E, intermediate, hidden], gate and up
  still interleaved along the last axis as gpt-oss's MLP reads them
  (`gate_up[..., ::2]`, `gate_up[..., 1::2]`).

Dropped with the quantization (`ForeignPlan.consumed`): every weight's
scales, the `input_*` / `output_*` scales and zero points of its module, and
the attention's KV-cache scales (`*.k_scale`, `*.v_scale`, `*.q_scale`),
which mean nothing once `quantization_config` is gone. Modules the config
leaves out (`ignore`, `modules_to_not_convert`, `exclude_modules`) keep
their float weights, copied as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import dataclasses
import functools
import os
import re
from typing import Any, BinaryIO, NamedTuple

import jax.numpy as jnp
import numpy as np

from fp8jax.checkpoint import chunks, safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.metadata import KEY
from fp8jax.checkpoint.safetensors_io import TensorInfo
from fp8jax.checkpoint.source import CONFIG, Checkpoint, read_json
from fp8jax.core import codec, packing

MODELOPT_CONFIG = "hf_quant_config.json"
"""ModelOpt's description of its quantization, beside `config.json`."""

_KV_SCALES = ("k_scale", "v_scale", "q_scale")
_FLOATS = tuple(st.FLOAT_TAGS)  # BF16, F16, F32
_CONFIG_PLACES = (("quantization_config",), ("text_config", "quantization_config"),
                  ("compression_config",))  # where vLLM and compressed-tensors look, in order
_TORCH_DTYPES = {"bfloat16": "BF16", "float16": "F16", "half": "F16", "float32": "F32",
                 "float": "F32"}
_FP4_GROUP = 16  # NVFP4
_MX_GROUP = 32
_E8M0_BIAS = 127
_VLLM_BLOCK = (128, 128)


class TensorAt(NamedTuple):
  """A stored tensor and the safetensors file that holds it.

  A weight and its scales may lie in different shards of an index.
  """

  path: str
  info: TensorInfo


@dataclasses.dataclass(frozen=True)
class ForeignWeight:
  """One weight another stack quantized: where its pieces are, and how it dequantizes.

  Attributes:
    name: the output tensor's name (`X.weight`; gpt-oss: `...experts.gate_up_proj`).
    shape: the output shape.
    dtype: the output dtype tag when the user does not choose one: the
      model's dtype as `config.json` gives it (`dtype` or `torch_dtype`),
      else "BF16".
    inputs: the stored tensors it is built from, codes first, then its
      scales, each with the file that holds it.
  """

  name: str
  shape: tuple[int, ...]
  dtype: str
  inputs: tuple[TensorAt, ...]

  def dequantize(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The producer's dequantized values, as float32 (see the module's table).

    Args:
      arrays: the values of `inputs`, in order, as `safetensors_io.read_tensor`
        reads them (float8 tensors as their uint8 codes).

    Returns:
      A float32 array of `shape`. Where the producer computes in a narrower
      dtype, the values are already rounded to it; otherwise casting them to
      the output dtype gives the producer's result.
    """
    raise NotImplementedError(f"{type(self).__name__} does not dequantize")

  def read(self, f: BinaryIO | None = None) -> np.ndarray:
    """Reads the inputs (those in the open file `f` from it, the others from their own
    files) and returns `dequantize` of them."""
    return self.dequantize([read_stored(t, f) for t in self.inputs])

  def read_rows(self, f: BinaryIO | None = None) -> Iterator[np.ndarray]:
    """`read`'s values in pieces of whole rows, in order (here: all at once)."""
    yield self.read(f)


@dataclasses.dataclass(frozen=True)
class ForeignPlan:
  """Everything `detect` found: the weights to dequantize and the tensors to drop.

  Attributes:
    producer: what wrote the checkpoint, for messages and the summary
      ("compressed-tensors nvfp4-pack-quantized", "fp8 128x128 blocks", ...).
    weights: each weight to dequantize, keyed by the stored tensor holding
      its codes; its output is written where that tensor was.
    consumed: every other input tensor that is dropped (scales, global
      scales, activation and KV-cache scales). Tensors in neither are copied
      unchanged.
    dropped_files: top-level files of the model folder not to copy
      (ModelOpt's `hf_quant_config.json`, which would still announce the
      quantization).
    config_key: where the quantization config sits in `config.json`.
  """

  producer: str
  weights: dict[str, ForeignWeight]
  consumed: frozenset[str]
  dropped_files: frozenset[str] = frozenset()
  config_key: tuple[str, ...] = ("quantization_config",)

  def config(self, config: dict[str, Any]) -> dict[str, Any]:
    """What `config.json` becomes: the same, without its quantization config."""
    out = dict(config)
    *outer, last = self.config_key
    if outer and isinstance(out.get(outer[0]), dict):
      out[outer[0]] = {k: v for k, v in out[outer[0]].items() if k != last}
    elif not outer:
      out.pop(last, None)
    return out


def detect(ckpt: Checkpoint) -> ForeignPlan | None:
  """Recognizes a checkpoint another stack quantized and plans its dequantization.

  Args:
    ckpt: an opened checkpoint; only a model folder has the `config.json`
      (and `hf_quant_config.json`) that say how it was quantized.

  Returns:
    The `ForeignPlan`, or None for a checkpoint that is not quantized by
    another stack: no quantization config, or quantized by fp8jax itself
    (its files carry `fp8jax` metadata).

  Raises:
    CheckpointError: a quantization method or scheme fp8jax does not read,
      or tensors that do not match the config (one line, naming the tensor
      and what was expected).

  Example:
    >>> import json, os, shutil, tempfile
    >>> from fp8jax.checkpoint.source import open_checkpoint
    >>> folder = tempfile.mkdtemp()
    >>> codes = np.array([[56, 184, 64]], np.uint8)  # e4m3fn 1, -1, 2
    >>> with st.Writer(os.path.join(folder, "model.safetensors"),
    ...                [st.Entry("fc.weight", "F8_E4M3", (1, 3)),
    ...                 st.Entry("fc.weight_scale", "F32", ())], {}) as w:
    ...   w.write("fc.weight", codes)
    ...   w.write("fc.weight_scale", np.array(0.5, np.float32))
    >>> with open(os.path.join(folder, "config.json"), "w") as f:
    ...   json.dump({"quantization_config": {"quant_method": "fp8"}}, f)
    >>> plan = detect(open_checkpoint(folder))
    >>> plan.producer, sorted(plan.consumed), plan.weights["fc.weight"].dtype
    ('fp8 per tensor', ['fc.weight_scale'], 'BF16')
    >>> plan.weights["fc.weight"].dequantize([codes, np.array(0.5, np.float32)])
    array([[ 0.5, -0.5,  1. ]], dtype=float32)
    >>> plan.config({"model_type": "llama", "quantization_config": {}})
    {'model_type': 'llama'}
    >>> shutil.rmtree(folder)
  """
  if any(KEY in h.metadata for h in ckpt.headers):
    return None  # fp8jax's own: its metadata says everything
  config = ckpt.config if ckpt.kind == "folder" else None
  where = os.path.join(ckpt.folder, CONFIG)
  found = _quantization_config(config, where) if config is not None else None
  modelopt_path = os.path.join(ckpt.folder, MODELOPT_CONFIG)
  modelopt_file = ckpt.kind == "folder" and os.path.isfile(modelopt_path)
  if found is None and not modelopt_file:
    return None
  tensors = _Tensors(ckpt)
  dtype = _default_dtype(config or {})
  if found is None:
    return _modelopt(tensors, _modelopt_algo(modelopt_path), dtype, modelopt_path,
                     frozenset({MODELOPT_CONFIG}), ("quantization_config",))
  key, qc = found
  method = qc.get("quant_method")
  if method == "fp8jax":
    return None
  if method == "compressed-tensors":
    return _compressed_tensors(tensors, qc, dtype, where, key)
  if method == "fp8":
    return _vllm_fp8(tensors, qc, dtype, where, key)
  if method == "mxfp4":
    return _gpt_oss(tensors, dtype, key)
  if method == "modelopt":
    dropped = frozenset({MODELOPT_CONFIG}) if modelopt_file else frozenset()
    algo = qc.get("quant_algo")
    if algo is None and modelopt_file:
      algo = _modelopt_algo(modelopt_path)
    return _modelopt(tensors, algo, dtype, where, dropped, key)
  raise CheckpointError(f"{where}: {'.'.join(key)}.quant_method {method!r} is not one fp8jax "
                        "reads (compressed-tensors, fp8, modelopt, mxfp4)")


# --- the stored tensors ----------------------------------------------------------

class _Tensors:
  """Every tensor of a checkpoint by name, with its file."""

  def __init__(self, ckpt: Checkpoint):
    self.by_name = {t.name: TensorAt(h.path, t) for h in ckpt.headers for t in h.tensors}

  def __contains__(self, name: str) -> bool:
    return name in self.by_name

  def items(self) -> Iterable[tuple[str, TensorAt]]:
    return self.by_name.items()

  def need(self, name: str, of: str, what: str) -> TensorAt:
    """The tensor `name`, which `of` needs as `what`."""
    t = self.by_name.get(name)
    if t is None:
      raise _fail(of, f"its {what} {name!r} is not in the checkpoint")
    return t

  def present(self, names: Iterable[str]) -> set[str]:
    return {n for n in names if n in self.by_name}

  def kv_scales(self) -> set[str]:
    return {n for n in self.by_name if n.rpartition(".")[2] in _KV_SCALES}


def _fail(name: str, why: str) -> CheckpointError:
  return CheckpointError(f"tensor {name!r}: {why}")


def _check(t: TensorAt, dtypes: Sequence[str], shapes: Sequence[tuple[int, ...]] | None,
           what: str) -> None:
  """Checks one stored tensor's dtype and shape; `what` says what it is for the message."""
  info = t.info
  if info.dtype not in dtypes:
    raise _fail(info.name, f"expected dtype {' or '.join(dtypes)} ({what}), got {info.dtype}")
  if shapes is not None and info.shape not in shapes:
    want = " or ".join(str(list(s)) for s in shapes)
    raise _fail(info.name, f"expected shape {want} ({what}), got {list(info.shape)}")


def _ndim(t: TensorAt, ndim: int, what: str, at_least: bool = False) -> None:
  n = len(t.info.shape)
  if n < ndim or (n > ndim and not at_least):
    want = f"{ndim}-D" + (" (or more)" if at_least else "")
    raise _fail(t.info.name, f"expected a {want} tensor ({what}), got shape {list(t.info.shape)}")


def _module(name: str) -> tuple[str, str]:
  """`a.b.weight` -> (`a.b`, `weight`)."""
  module, _, param = name.rpartition(".")
  return module, param


def _quantization_config(config: dict[str, Any], where: str
                         ) -> tuple[tuple[str, ...], dict[str, Any]] | None:
  for key in _CONFIG_PLACES:
    value: Any = config
    for k in key:
      value = value.get(k) if isinstance(value, dict) else None
    if value is not None:
      if not isinstance(value, dict):
        raise CheckpointError(f"{where}: {'.'.join(key)} is not a JSON object")
      return key, value
  return None


def _default_dtype(config: dict[str, Any]) -> str:
  value = config.get("dtype", config.get("torch_dtype"))
  return _TORCH_DTYPES.get(value, "BF16") if isinstance(value, str) else "BF16"


# --- the arithmetic -------------------------------------------------------------

@functools.cache
def _values(fmt: str) -> np.ndarray:
  """The float32 value of every code of `fmt`, indexed by code (sub-byte formats: low bits)."""
  table = np.asarray(codec.decode(np.arange(256, dtype=np.uint8), fmt, jnp.float32))
  table.flags.writeable = False
  return table


@functools.cache
def _pow2_values() -> np.ndarray:
  """2^(e - 127) for every byte e, as compressed-tensors computes it.

  Its `2.0 ** (e - 127)` in bfloat16 (`decompress_mx_scale`) makes 255
  2^128, which is infinite; e8m0fnu reads it as NaN.
  """
  table = _values("e8m0fnu").copy()
  table[255] = np.inf
  table.flags.writeable = False
  return table


def _as_float(array: np.ndarray, tag: str) -> np.ndarray:
  """A stored scale's float32 values: floats widened, float8 codes decoded."""
  if tag == "F8_E4M3":
    return _values("e4m3fn")[array]
  if tag == "F8_E8M0":
    return _values("e8m0fnu")[array]
  return np.asarray(array, np.float32)


def _round(x: np.ndarray, tag: str) -> np.ndarray:
  """Float32 `x` rounded to the dtype `tag` (nearest even), kept as float32."""
  if tag == "F32":
    return x
  return x.astype(st.DTYPES[tag]).astype(np.float32)


def _times_grid(values: np.ndarray, m: np.ndarray, block: tuple[int, int]) -> np.ndarray:
  """`values` times a grid of multipliers, each over a `block` of the last two axes, in place.

  A grid axis of length 1 spans its whole axis; edge blocks are cut to fit.
  NumPy multiplies as IEEE float32 does, subnormals included (XLA on CPU
  flushes them). The grid is spread over the rows only (it stays small) and
  over whole column blocks by a reshaped view, so that no multiplier array
  of the weight's size is made unless the columns end in a partial block.
  """
  if m.size == 1:
    values *= m.reshape(())
    return values
  rows, cols = values.shape[-2:]
  b0, b1 = block
  if m.shape[-2] != 1 and b0 != 1:
    m = np.repeat(m, b0, axis=-2)[..., :rows, :]
  if m.shape[-1] == 1 or b1 == 1:
    values *= m
  elif cols % b1 == 0:
    grouped = values.reshape(*values.shape[:-1], cols // b1, b1)
    grouped *= m[..., None]
    values = grouped.reshape(values.shape)
  else:
    values *= np.repeat(m, b1, axis=-1)[..., :cols]
  return values


def _unpack6(packed: np.ndarray) -> np.ndarray:
  """compressed-tensors' FP6 packing: four 6-bit codes in three bytes, little-endian,
  the first code in the lowest bits (`pack_fp6_to_uint8`)."""
  b = packed.reshape(*packed.shape[:-1], -1, 3).astype(np.uint32)
  word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
  codes = np.stack([(word >> (6 * i)) & 0x3F for i in range(4)], axis=-1)
  return codes.reshape(*packed.shape[:-1], -1).astype(np.uint8)


def read_stored(t: TensorAt, f: BinaryIO | None, start: int = 0,
          shape: tuple[int, ...] | None = None) -> np.ndarray:
  """The stored tensor `t` (or `prod(shape)` of its elements from `start`), from the open
  file `f` when it is `t`'s, else from its own file."""
  def read(g: BinaryIO) -> np.ndarray:
    if shape is None:
      return st.read_tensor(g, t.info)
    return st.read_part(g, t.info, start, shape)

  if f is not None and os.path.samefile(t.path, f.name):
    return read(f)
  with open(t.path, "rb") as g:  # a scale in another shard
    return read(g)


def _codes(array: np.ndarray, elements: str) -> np.ndarray:
  """One code per element, from the stored bytes."""
  if elements == "e2m1fn":
    return np.asarray(packing.unpack_codes(jnp.asarray(array), 2 * array.shape[-1]))
  if elements == "e2m3fn":
    return _unpack6(array)
  return array


# How each producer turns the stored scales (raw arrays, dtype tags) into the float32
# number a block's codes are multiplied by.
_Arrays = Sequence[np.ndarray]
_Multiplier = Callable[[_Arrays, Sequence[str]], np.ndarray]


def _scale(a: _Arrays, tags: Sequence[str]) -> np.ndarray:  # CT FP8, vLLM FP8
  return _as_float(a[0], tags[0])


def _pow2(a: _Arrays, tags: Sequence[str]) -> np.ndarray:  # CT MX exponents
  del tags
  return _pow2_values()[a[0]]


def _over_global(a: _Arrays, tags: Sequence[str]) -> np.ndarray:  # CT NVFP4
  return _as_float(a[0], tags[0]) / _as_float(a[1], tags[1]).reshape(())


def _over_global_bf16(a: _Arrays, tags: Sequence[str]) -> np.ndarray:
  # By a 0-d global scale torch keeps the bfloat16 scale's dtype: the quotient is rounded.
  return _round(_over_global(a, tags), "BF16")


def _times_global(a: _Arrays, tags: Sequence[str]) -> np.ndarray:  # ModelOpt NVFP4
  return _as_float(a[0], tags[0]) * _as_float(a[1], tags[1]).reshape(())


_MULTIPLIERS: dict[str, _Multiplier] = {
    "scale": _scale,
    "pow2": _pow2,
    "scale / global": _over_global,
    "scale / global in bfloat16": _over_global_bf16,
    "scale * global": _times_global,
}


@dataclasses.dataclass(frozen=True)
class _BlockScaled(ForeignWeight):
  """Codes times a multiplier per block of the last two axes, rounded to `compute`.

  Attributes:
    elements: the codes' format: "e4m3fn" (a byte each), "e2m1fn" (two a
      byte, low nibble first), "e2m3fn" (four in three bytes).
    block: the extent of one scale over the last two axes (a scale axis of
      length 1 spans its whole axis).
    multiplier: how the scales become the multiplier (`_MULTIPLIERS`).
    compute: the dtype the producer's product is rounded to ("F32", "BF16", "F16").
    signed_zero: False where the producer reads the code of -0 as +0 (ModelOpt).
  """

  elements: str
  block: tuple[int, int]
  multiplier: str
  compute: str
  signed_zero: bool = True

  def read_rows(self, f: BinaryIO | None = None) -> Iterator[np.ndarray]:
    """`read`'s values of a 2-D weight in pieces of about `chunks.CHUNK_BYTES` of float32,
    whole block rows each, with the scale rows they need: memory holds a piece, not the
    weight. The values are the same as `read`'s (the edge block of a piece is a whole one)."""
    codes, scale, *rest = self.inputs
    grid_rows = scale.info.shape[-2] if len(scale.info.shape) == 2 else 1
    if len(self.shape) != 2 or len(codes.info.shape) != 2:
      yield self.read(f)
      return
    rows, cols = self.shape
    unit = self.block[0] if grid_rows != 1 else 1
    step = max(unit, chunks.CHUNK_BYTES // (4 * cols) // unit * unit)
    if step >= rows:
      yield self.read(f)
      return
    others = [read_stored(t, f) for t in rest]
    whole_scale = read_stored(scale, f) if grid_rows == 1 else None
    stored_cols = codes.info.shape[1]
    for r in range(0, rows, step):
      n = min(step, rows - r)
      piece = [read_stored(codes, f, r * stored_cols, (n, stored_cols))]
      if whole_scale is None:
        first, last = r // unit, -(-(r + n) // unit)
        grid_cols = scale.info.shape[1]
        piece.append(read_stored(scale, f, first * grid_cols, (last - first, grid_cols)))
      else:
        piece.append(whole_scale)
      yield self.dequantize(piece + others)

  def dequantize(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
    values = _values(self.elements)[_codes(arrays[0], self.elements)]
    if not self.signed_zero:
      values = np.where(values == 0, np.float32(0), values)
    tags = [t.info.dtype for t in self.inputs[1:]]
    m = _MULTIPLIERS[self.multiplier](arrays[1:], tags)
    return _round(_times_grid(values, m, self.block), self.compute)


@dataclasses.dataclass(frozen=True)
class _GptOssExperts(ForeignWeight):
  """gpt-oss MoE experts: MX blocks [E, R, G, B] and exponents [E, R, G] -> [E, 2BG, R].

  transformers' `convert_moe_packed_tensors`: the E2M1 value (FP4_VALUES, -0
  for code 8) scaled by 2^(e - 127) with `torch.ldexp`, which scales exactly
  (0.5 * 2^128 is 2^127, 0 stays 0), the rows of 2BG elements then transposed.
  """

  def dequantize(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
    blocks, exps = arrays
    e, r, g, b = blocks.shape
    values = _values("e2m1fn")[_codes(blocks, "e2m1fn")]
    values = np.ldexp(values, (exps.astype(np.int32) - _E8M0_BIAS)[..., None])
    return np.ascontiguousarray(values.reshape(e, r, g * 2 * b).transpose(0, 2, 1))


# --- compressed-tensors -----------------------------------------------------------

_CT_QPARAMS = tuple(f"{base}_{suffix}" for base in ("input", "weight", "output")
                    for suffix in ("global_scale", "scale", "shape", "zero_point"))
_CT_STRATEGIES = ("tensor", "channel", "group", "block")


@dataclasses.dataclass(frozen=True)
class _CtScheme:
  """One config group's weights, as compressed-tensors reads them without a model.

  Attributes:
    group: the config group's name.
    targets: module names ("re:" regular expressions; "Linear" or none: every module).
    kind: "fp8", "nvfp4", "mxfp4", "mxfp6", "mxfp8", or None for a scheme
      fp8jax does not read (`unsupported` says what it is).
    strategy: the weights' strategy (FP8).
    size: group_size, or the block_structure.
    codes_param: the codes tensor's parameter name: "weight" for 8-bit
      codes, "weight_packed" for narrower ones packed into bytes.
  """

  group: str
  targets: tuple[str, ...]
  kind: str | None
  strategy: str
  size: tuple[int, ...]
  codes_param: str
  unsupported: str = ""

  def targets_module(self, module: str) -> bool:
    return not self.targets or "Linear" in self.targets or any(
        _ct_match(module, t) for t in self.targets)

  def describe(self) -> str:
    if self.kind == "fp8":
      return f"float-quantized ({self.strategy})"
    return {"nvfp4": "nvfp4-pack-quantized", "mxfp4": "mxfp4-pack-quantized",
            "mxfp6": "mxfp6-pack-quantized", "mxfp8": "mxfp8-quantized"}[str(self.kind)]


def _ct_match(name: str, target: str) -> bool:
  """compressed-tensors' `match_name`: "re:" a regular expression from the start, else equal."""
  if target.startswith("re:"):
    try:
      return re.match(target[3:], name) is not None
    except re.error as e:
      raise CheckpointError(f"quantization_config: {target!r} is not a regular expression "
                            f"({e})") from None
  return target == name


def _ct_scheme(group: str, spec: Any, where: str) -> _CtScheme | None:
  """Reads one config group (None: it quantizes no weights)."""
  at = f"{where}: quantization_config.config_groups.{group}"
  if not isinstance(spec, dict):
    raise CheckpointError(f"{at} is not a JSON object")
  targets = spec.get("targets") or []
  if isinstance(targets, str):
    targets = [targets]
  if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
    raise CheckpointError(f"{at}.targets must be a list of names (got {targets!r})")
  w = spec.get("weights")
  if w is None:
    return None
  if not isinstance(w, dict):
    raise CheckpointError(f"{at}.weights is not a JSON object")
  num_bits, kind_of, group_size = w.get("num_bits"), w.get("type"), w.get("group_size")
  strategy, block = w.get("strategy"), w.get("block_structure")
  if strategy is None:  # as compressed-tensors infers it
    strategy = "tensor" if group_size is None else "channel" if group_size == -1 else "group"
  if isinstance(block, str):  # the older spelling, "128x128"
    block = [int(b) if b.isdigit() else b for b in block.split("x")]
  scale_dtype = str(w.get("scale_dtype")).removeprefix("torch.")
  what = f"{kind_of} {num_bits}-bit"
  kind = None
  unsupported = what
  if w.get("symmetric", True) is not True:
    unsupported = f"asymmetric {what}"
  elif kind_of == "float" and num_bits == 4 and group_size == _MX_GROUP:
    kind = "mxfp4"
  elif kind_of == "float" and num_bits == 6 and group_size == _MX_GROUP:
    kind = "mxfp6"
  elif (kind_of == "float" and num_bits == 8 and group_size == _MX_GROUP
        and scale_dtype == "uint8"):
    kind = "mxfp8"
  elif kind_of == "float" and num_bits == 4 and group_size == _FP4_GROUP:
    kind = "nvfp4"
  elif kind_of == "float" and num_bits == 8:
    kind = "fp8"
    if strategy not in _CT_STRATEGIES:
      raise CheckpointError(f"{at}.weights.strategy {strategy!r} is not one fp8jax reads for "
                            f"FP8 weights ({', '.join(_CT_STRATEGIES)})")
  size: tuple[int, ...] = ()
  if kind == "fp8" and strategy == "group":
    if not _positive_ints([group_size], 1):
      raise CheckpointError(f"{at}.weights.group_size must be a positive integer for the group "
                            f"strategy (got {group_size!r})")
    size = (group_size,)
  if kind == "fp8" and strategy == "block":
    if not _positive_ints(block, 2):
      raise CheckpointError(f"{at}.weights.block_structure must be two positive integers for "
                            f"the block strategy (got {block!r})")
    size = tuple(block)
  packed = isinstance(num_bits, int) and num_bits < 8
  return _CtScheme(group, tuple(targets), kind, str(strategy), size,
                   "weight_packed" if packed else "weight", "" if kind else unsupported)


def _positive_ints(value: Any, n: int) -> bool:
  return (isinstance(value, list) and len(value) == n and all(
      isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _compressed_tensors(tensors: _Tensors, qc: dict[str, Any], dtype: str, where: str,
                        key: tuple[str, ...]) -> ForeignPlan:
  for extra in ("transform_config", "sparsity_config"):
    if qc.get(extra):
      raise CheckpointError(f"{where}: fp8jax cannot undo a compressed-tensors {extra} "
                            "(rotations or sparsity applied at load)")
  groups = qc.get("config_groups") or {}
  if not isinstance(groups, dict):
    raise CheckpointError(f"{where}: quantization_config.config_groups is not a JSON object")
  schemes = [s for g, spec in groups.items() if (s := _ct_scheme(g, spec, where)) is not None]
  ignore = qc.get("ignore") or []
  if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
    raise CheckpointError(f"{where}: quantization_config.ignore must be a list of names")
  weights: dict[str, ForeignWeight] = {}
  consumed: set[str] = tensors.kv_scales()
  used: list[str] = []
  for name, t in tensors.items():
    module, param = _module(name)
    if param not in ("weight", "weight_packed") or module.endswith("norm"):
      continue
    plain = param == "weight" and t.info.dtype in _FLOATS
    if plain and f"{module}.weight_scale" not in tensors:
      continue  # a float weight left as it is
    if any(_ct_match(module, i) for i in ignore):
      continue
    # As compressed-tensors' own dequantizer: the first group that targets the module and
    # whose codes tensor is this one.
    scheme = next((s for s in schemes if s.targets_module(module) and s.codes_param == param),
                  None)
    if scheme is None:
      if plain:
        continue  # a float weight no group targets, with some scale of its own: kept
      raise _fail(name, "stored quantized, but no config group of quantization_config in "
                  f"{where} targets module {module!r}")
    if scheme.kind is None:
      raise _fail(name, f"config group {scheme.group!r} quantizes it as {scheme.unsupported} "
                  "weights, which fp8jax does not read (it reads FP8, NVFP4, MXFP4, MXFP6, "
                  "MXFP8)")
    weights[name] = _ct_weight(scheme, module, t, tensors, dtype)
    consumed |= tensors.present(f"{module}.{p}" for p in _CT_QPARAMS)
    if scheme.describe() not in used:
      used.append(scheme.describe())
  return ForeignPlan("compressed-tensors " + (", ".join(used) or "(no quantized weights)"),
                     weights, frozenset(consumed), config_key=key)


def _ct_weight(scheme: _CtScheme, module: str, codes: TensorAt, tensors: _Tensors,
               dtype: str) -> ForeignWeight:
  name = codes.info.name
  what = f"compressed-tensors {scheme.describe()}"
  scale = tensors.need(f"{module}.weight_scale", name, "scale")
  _ndim(codes, 2, what)
  if scheme.kind == "fp8":
    _check(codes, ("F8_E4M3",), None, what)
    out, inn = codes.info.shape
    if scheme.strategy == "tensor":
      shapes, block = [(1,), ()], (out, inn)
    elif scheme.strategy == "channel":
      shapes, block = [(out, 1)], (1, inn)
    elif scheme.strategy == "group":
      (g,) = scheme.size
      if inn % g:
        raise _fail(name, f"{inn} columns are not a multiple of group_size {g} ({what}, as "
                    "compressed-tensors requires)")
      shapes, block = [(out, inn // g)], (1, g)
    else:
      b0, b1 = scheme.size
      shapes, block = [(-(-out // b0), -(-inn // b1))], (b0, b1)
    _check(scale, _FLOATS, shapes, f"the scales of {name} {list(codes.info.shape)}, {what}")
    return _BlockScaled(f"{module}.weight", codes.info.shape, dtype, (codes, scale), "e4m3fn",
                        block, "scale", scale.info.dtype)
  if scheme.kind == "mxfp8":
    _check(codes, ("F8_E4M3",), None, what)
    rows, n = codes.info.shape
  else:
    _check(codes, ("U8",), None, what)
    rows, stored = codes.info.shape
    if scheme.kind == "mxfp6" and stored % 3:
      raise _fail(name, f"{stored} bytes a row do not hold whole groups of four 6-bit codes "
                  f"(three bytes each) ({what})")
    n = stored * 4 // 3 if scheme.kind == "mxfp6" else 2 * stored
  g = _FP4_GROUP if scheme.kind == "nvfp4" else _MX_GROUP
  if n % g:
    raise _fail(name, f"{n} columns are not a multiple of {g} ({what}, as compressed-tensors "
                "requires)")
  elements = {"nvfp4": "e2m1fn", "mxfp4": "e2m1fn", "mxfp6": "e2m3fn"}.get(str(scheme.kind),
                                                                         "e4m3fn")
  if scheme.kind != "nvfp4":
    _check(scale, ("U8",), [(rows, n // g)], f"the exponents of {name}, {what}")
    return _BlockScaled(f"{module}.weight", (rows, n), dtype, (codes, scale), elements,
                        (1, g), "pow2", "BF16")
  _check(scale, ("F8_E4M3",), [(rows, n // g)], f"the block scales of {name}, {what}")
  gs = tensors.need(f"{module}.weight_global_scale", name, "global scale")
  _check(gs, ("F32",), [(1,), ()], f"the global scale of {name}, {what}")
  rule = "scale / global" if gs.info.shape else "scale / global in bfloat16"
  return _BlockScaled(f"{module}.weight", (rows, n), dtype, (codes, scale, gs), elements,
                      (1, g), rule, "BF16")


# --- vLLM / DeepSeek FP8 ------------------------------------------------------------

def _vllm_fp8(tensors: _Tensors, qc: dict[str, Any], dtype: str, where: str,
              key: tuple[str, ...]) -> ForeignPlan:
  size = qc.get("weight_block_size")
  if size is not None and not _positive_ints(size, 2):
    raise CheckpointError(f"{where}: quantization_config.weight_block_size must be two "
                          f"positive integers (got {size!r})")
  block = tuple(size) if size is not None else _VLLM_BLOCK
  weights: dict[str, ForeignWeight] = {}
  consumed: set[str] = tensors.kv_scales()
  kinds: set[str] = set()
  for name, t in tensors.items():
    module, param = _module(name)
    if param != "weight":
      continue
    inv, per_tensor = f"{module}.weight_scale_inv", f"{module}.weight_scale"
    if t.info.dtype in _FLOATS and inv not in tensors and per_tensor not in tensors:
      continue
    what = "fp8 (vLLM)"
    _check(t, ("F8_E4M3",), None, what)
    shape = t.info.shape
    if inv in tensors:
      if per_tensor in tensors:
        raise _fail(name, f"has both {inv!r} and {per_tensor!r}; expected one scale ({what})")
      scale = tensors.by_name[inv]
      _ndim(t, 2, f"{what}, {block[0]}x{block[1]} blocks", at_least=True)
      grid = shape[:-2] + (-(-shape[-2] // block[0]), -(-shape[-1] // block[1]))
      _check(scale, (*_FLOATS, "F8_E8M0"), [grid],
             f"the {block[0]}x{block[1]} block scales of {name} {list(shape)}")
      kinds.add(f"{block[0]}x{block[1]} blocks")
      spread = block
    elif per_tensor in tensors:
      scale = tensors.by_name[per_tensor]
      _check(scale, (*_FLOATS, "F8_E8M0"), [(), (1,)], f"the scale of {name}, one per tensor")
      kinds.add("per tensor")
      spread = (1, 1)
    else:
      raise _fail(name, f"F8_E4M3 codes without a scale: expected {inv!r} (blocks) or "
                  f"{per_tensor!r} (one per tensor) ({what})")
    weights[name] = _BlockScaled(name, shape, dtype, (t, scale), "e4m3fn", spread, "scale",
                                 "F32")
    consumed |= {scale.info.name} | tensors.present([f"{module}.input_scale"])
  return ForeignPlan(" ".join(["fp8", " and ".join(sorted(kinds))]).strip(), weights,
                     frozenset(consumed), config_key=key)


# --- ModelOpt NVFP4 -------------------------------------------------------------------

_MODELOPT_ALGOS = ("NVFP4", "W4A16_NVFP4")


def _modelopt_algo(path: str) -> Any:
  """The `quant_algo` of an `hf_quant_config.json`."""
  hf_quant = read_json(path)
  q = hf_quant.get("quantization") if isinstance(hf_quant, dict) else None
  if not isinstance(q, dict):
    raise CheckpointError(f"{path}: expected a JSON object with a \"quantization\" object")
  return q.get("quant_algo")


def _modelopt(tensors: _Tensors, algo: Any, dtype: str, where: str, dropped: frozenset[str],
              key: tuple[str, ...]) -> ForeignPlan:
  if algo not in _MODELOPT_ALGOS:
    raise CheckpointError(f"{where}: ModelOpt quant_algo {algo!r} is not one fp8jax reads "
                          f"({', '.join(_MODELOPT_ALGOS)})")
  what = f"ModelOpt {algo}"
  weights: dict[str, ForeignWeight] = {}
  consumed: set[str] = tensors.kv_scales()
  for name, t in tensors.items():
    module, param = _module(name)
    if param != "weight":
      continue
    scale_name = f"{module}.weight_scale"
    if t.info.dtype != "U8":
      if scale_name in tensors:
        raise _fail(name, f"expected dtype U8, two E2M1 codes a byte ({what}), got "
                    f"{t.info.dtype}")
      continue  # excluded from quantization
    if f"{module}.pre_quant_scale" in tensors:
      raise _fail(name, f"has a pre_quant_scale (AWQ), which fp8jax does not undo ({what})")
    _ndim(t, 2, what, at_least=True)
    *lead, rows, stored = t.info.shape
    n = 2 * stored
    if n % _FP4_GROUP:
      raise _fail(name, f"{n} columns are not a multiple of {_FP4_GROUP} ({what})")
    scale = tensors.need(scale_name, name, "block scale")
    _check(scale, ("F8_E4M3",), [(*lead, rows, n // _FP4_GROUP)],
           f"the block scales of {name}, {what}")
    scale_2 = tensors.need(f"{module}.weight_scale_2", name, "per-tensor scale")
    _check(scale_2, ("F32",), [(), (1,)], f"the per-tensor scale of {name}, {what}")
    weights[name] = _BlockScaled(name, (*lead, rows, n), dtype, (t, scale, scale_2), "e2m1fn",
                                 (1, _FP4_GROUP), "scale * global", "F32", signed_zero=False)
    consumed |= {scale.info.name, scale_2.info.name} | tensors.present(
        [f"{module}.input_scale"])
  return ForeignPlan(what, weights, frozenset(consumed), dropped, key)


# --- gpt-oss MXFP4 --------------------------------------------------------------------

def _gpt_oss(tensors: _Tensors, dtype: str, key: tuple[str, ...]) -> ForeignPlan:
  what = "gpt-oss MXFP4 experts"
  weights: dict[str, ForeignWeight] = {}
  consumed: set[str] = tensors.kv_scales()
  for name, t in tensors.items():
    if name.endswith("_scales") and name.removesuffix("_scales") + "_blocks" not in tensors:
      raise _fail(name, f"MX exponents without their blocks "
                  f"{name.removesuffix('_scales') + '_blocks'!r} ({what})")
    if not name.endswith("_blocks"):
      continue
    base = name.removesuffix("_blocks")
    _check(t, ("U8",), None, what)
    _ndim(t, 4, f"{what}: [experts, rows, blocks, bytes]")
    scales = tensors.need(base + "_scales", name, "exponents")
    _check(scales, ("U8",), [t.info.shape[:3]], f"the exponents of {name}, {what}")
    e, r, g, b = t.info.shape
    weights[name] = _GptOssExperts(base, (e, 2 * b * g, r), dtype, (t, scales))
    consumed.add(scales.info.name)
  return ForeignPlan(what, weights, frozenset(consumed), config_key=key)
