"""Quantize and dequantize whole safetensors checkpoints, one tensor at a time.

Both directions run through one driver: the input is opened and checked
(`source.open_checkpoint`), a conversion is planned (which tensors change,
into what) with every check that can be made before writing, then each
output file is written tensor by tensor into a staged output
(`output.staged_output`; memory holds one tensor and its codes, never the
file), and one side-file writer writes the index, `config.json` and the
folder's other files. OUT appears only when everything is complete; the
input is only ever opened for reading.

A conversion (`_Quantize`, `_Dequantize`) says what each input tensor
becomes (`outputs`: its output tensors, none for a scale read with its
weight) and writes it (`convert`), what each file's metadata becomes
(`metadata`; quantized files record themselves as `metadata.py` describes),
and what `config.json` becomes (`config`).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import itertools
import math
import os
import time
from typing import Any, BinaryIO, ClassVar, Protocol
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from fp8jax.checkpoint import chunks, foreign, interrupts, layouts, safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.files import write_json
from fp8jax.checkpoint.metadata import KEY, QuantizedTensor, QuantMetadata
from fp8jax.checkpoint.output import copy_others, other_files, staged_output
from fp8jax.checkpoint.report import Summary, TensorReport
from fp8jax.checkpoint.safetensors_io import Header, TensorInfo
from fp8jax.checkpoint.selection import Selection
from fp8jax.checkpoint.source import CONFIG, Checkpoint, open_checkpoint
from fp8jax.checkpoint.staging import Staging
from fp8jax.checkpoint.stored import WeightLayout
from fp8jax.core.layout import FLOATS
from fp8jax.quant import stats
from fp8jax.quant.qarray import QArray
from fp8jax.quant.scaled import dequantize, quantize
from fp8jax.quant.scales import amax, scale_from_amax
from fp8jax.quant.spec import NVFP4

ROUNDINGS = ("nearest", "stochastic")
"""The roundings a checkpoint can be quantized with."""
DTYPE_TAGS = {f.short: f.safetensors for f in FLOATS}
"""`dequantize_checkpoint`'s dtype names and their safetensors tags: bf16 -> BF16, ..."""

Progress = Callable[[str, int], None]
"""Called after each tensor with its name and its size in bytes."""


# --- the driver ----------------------------------------------------------------

class _Conversion(Protocol):
  verb: str
  dropped_files: frozenset[str]  # a folder's top-level files not to copy
  note: str | None  # for `Summary.note`

  def outputs(self, t: TensorInfo) -> list[st.Entry]:
    """The output tensors `t` becomes (none for a tensor written with another)."""

  def metadata(self, h: Header) -> dict[str, str]:
    """The output file's metadata."""

  def convert(self, f: BinaryIO, t: TensorInfo, writer: st.Writer,
              staging: Staging) -> TensorReport | None:
    """Reads `t` from `f` and writes its outputs (some may wait in `staging`); None for a
    tensor written with another."""

  def config(self, config: dict[str, Any]) -> dict[str, Any]:
    """What a model folder's `config.json` becomes."""

  def side_files(self) -> dict[str, Any]:
    """Other JSON files a model folder gains, by name."""


def _convert(ckpt: Checkpoint, out: str, force: bool, conversion: _Conversion,
             progress: Progress | None, start: float) -> Summary:
  """Writes every output file of `ckpt`, then the side files, into a staged `out`.

  Everything that can be checked is checked first: each output header
  against the safetensors size limit, and a folder's other files.
  """
  files = [(h, [e for t in h.tensors for e in conversion.outputs(t)], conversion.metadata(h))
           for h in ckpt.headers]
  for h, entries, metadata in files:
    target = out if ckpt.kind == "file" else os.path.join(out, os.path.basename(h.path))
    st.check_header(target, entries, metadata)
  skip = _written_names(ckpt) | conversion.dropped_files
  others = other_files(ckpt, skip) if ckpt.kind == "folder" else []
  reports: list[TensorReport] = []
  weight_map: dict[str, str] = {}
  total = sizes = 0
  with staged_output(ckpt, out, force) as path:
    for h, entries, metadata in files:
      shard = os.path.basename(h.path)
      sizes += _write_file(h, path(shard), entries, metadata, conversion, reports, progress,
                           final=ckpt.kind == "file")
      weight_map.update(dict.fromkeys([e.name for e in entries], shard))
      total += sum(e.nbytes for e in entries)
    if ckpt.kind != "file":
      _write_side_files(ckpt, path, weight_map, total, conversion)
      copy_others(ckpt.folder, others, path)
  return Summary(tuple(reports), ckpt.nbytes, sizes, time.perf_counter() - start,
                 conversion.verb, conversion.note)


def _written_names(ckpt: Checkpoint) -> set[str]:
  """The top-level names of a folder that the conversion writes itself."""
  names = {os.path.basename(h.path) for h in ckpt.headers}
  if ckpt.index_name is not None:
    names.add(ckpt.index_name)
  if ckpt.config is not None:
    names.add(CONFIG)
  return names


def _write_file(h: Header, path: str, entries: list[st.Entry], metadata: dict[str, str],
                conversion: _Conversion, reports: list[TensorReport], progress: Progress | None,
                final: bool) -> int:
  """Writes `path` tensor by tensor from `h`; returns its size.

  On any error the partial file is removed. `final`: `path` is OUT itself.
  """
  writer = st.Writer(path, entries, metadata)
  staging = Staging()
  try:
    with open(h.path, "rb") as f:
      for t in h.tensors:
        interrupts.check()
        report = conversion.convert(f, t, writer, staging)
        if report is not None:
          reports.append(report)
        if progress is not None:
          progress(t.name, t.nbytes)
      staging.flush()
  except BaseException:
    staging.discard()
    writer.abort()
    raise
  writer.close(final=final)
  return os.path.getsize(path)


def _write_side_files(ckpt: Checkpoint, path: Callable[[str], str], weight_map: dict[str, str],
                      total: int, conversion: _Conversion) -> None:
  """The index (names to shards, total tensor bytes) and, for a folder, its `config.json`
  and other JSON files as `conversion` makes them."""
  if ckpt.index_name is not None:
    index = dict(ckpt.index or {})
    index["metadata"] = dict(index.get("metadata") or {}, total_size=total)
    index["weight_map"] = dict(sorted(weight_map.items()))
    write_json(path(ckpt.index_name), index)
  if ckpt.kind == "folder" and ckpt.config is not None:
    write_json(path(CONFIG), conversion.config(ckpt.config))
    for name, content in conversion.side_files().items():
      write_json(path(name), content)


# --- quantize ----------------------------------------------------------------

def quantize_checkpoint(src: str, out: str, layout: WeightLayout, *,
                        selection: Selection | None = None, rounding: str = "nearest",
                        seed: int | None = None, force: bool = False,
                        progress: Progress | None = None, sqnr: bool = False,
                        stored: str | None = None, weight_only: bool = False) -> Summary:
  """Quantizes a checkpoint's selected weights and writes the result to `out`.

  Args:
    src: a `.safetensors` file, an index, or a folder (see `open_checkpoint`).
    out: a file for a single-file input, else a folder.
    layout: the format and scaling of the quantized weights.
    selection: which tensors to quantize (default: `Selection()`, the default rule).
    rounding: "nearest" or "stochastic" (needs `seed`).
    seed: the stochastic-rounding seed; each tensor's key is
      `fold_in(key(seed), crc32(name))`, independent of sharding and order.
    force: replace an existing `out`.
    progress: called after each tensor.
    sqnr: report each weight's SQNR (a dequantize and a sum per weight, in
      the same pass; it costs about as much time again as quantizing).
    stored: the layout the weights are stored in, one of
      `layouts.LAYOUT_NAMES`. Default: for a model folder,
      `layouts.default_layout` (vllm for e4m3fn 128x128 tiles, else the first
      of compressed-tensors, modelopt and fp8jax that holds `layout`); for a
      file or an index without `config.json`, fp8jax (the stacks' layouts
      live in `config.json`).
    weight_only: declare no activation quantization in `config.json`
      (`layouts.Layout.quantization_config`).

  Returns:
    The `Summary`.

  Raises:
    CheckpointError: bad input or arguments (its `param` names the
      argument); nothing is written.

  Example:
    >>> import os, shutil, tempfile
    >>> from fp8jax.checkpoint.safetensors_io import write_file
    >>> folder = tempfile.mkdtemp()
    >>> src = os.path.join(folder, "model.safetensors")
    >>> write_file(src, {"layer.weight": np.ones((4, 8), np.float32),
    ...                  "layer.bias": np.zeros(4, np.float32)})
    >>> summary = quantize_checkpoint(src, os.path.join(folder, "model-fp8.safetensors"),
    ...                               WeightLayout.parse("e4m3fn", "axis"))
    >>> [t.action for t in summary.tensors]
    ['quantized e4m3fn axis', 'kept (1-D)']
    >>> shutil.rmtree(folder)
  """
  start = time.perf_counter()
  if rounding not in ROUNDINGS:
    raise CheckpointError(f"rounding must be nearest or stochastic (got {rounding!r})",
                          param="rounding")
  if (rounding == "stochastic") != (seed is not None):
    raise CheckpointError("seed is needed for stochastic rounding, and applies only to it",
                          param="seed")
  if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                           or not -2**63 <= seed < 2**63):
    got = repr(seed) if not isinstance(seed, int) or seed.bit_length() < 200 else "a longer one"
    raise CheckpointError(f"seed must be an integer from -2^63 to 2^63 - 1, the range of "
                          f"jax.random.key (got {got})", param="seed")
  ckpt = open_checkpoint(src)
  if QuantMetadata.merged(ckpt.headers) is not None:
    raise CheckpointError(f"{src} is already quantized by fp8jax; dequantize it first")
  if ckpt.config is not None and "quantization_config" in ckpt.config:
    raise CheckpointError(f"{src}: config.json already has a quantization_config")
  plan = foreign.detect(ckpt)
  if plan is not None:
    raise CheckpointError(f"{src} is already quantized ({plan.producer}); dequantize it first")
  target = _stored_layout(ckpt, layout, stored)
  _check_weight_only(target, weight_only)
  conversion = _plan_quantize(ckpt, layout, target, selection or Selection(), rounding, seed,
                              sqnr, weight_only)
  return _convert(ckpt, out, force, conversion, progress, start)


def _stored_layout(ckpt: Checkpoint, layout: WeightLayout, name: str | None) -> layouts.Layout:
  """The layout `quantize_checkpoint`'s `stored` names, checked against `layout` and `ckpt`."""
  folder = ckpt.kind == "folder" and ckpt.config is not None
  if name is None:
    name = layouts.default_layout(layout) if folder else "fp8jax"
  stored = layouts.LAYOUTS.get(name) if isinstance(name, str) else None
  if stored is None:
    raise CheckpointError(f"stored must be one of {', '.join(layouts.LAYOUT_NAMES)} "
                          f"(got {name!r})", param="stored")
  _check_holds(stored, layout, f"{layout.describe()}")
  if stored.name != "fp8jax" and not folder:
    raise CheckpointError(f"stored must be fp8jax for a file or an index without config.json "
                          f"(the {name} layout is described in a model folder's config.json)",
                          param="stored")
  return stored


def _check_holds(stored: layouts.Layout, layout: WeightLayout, what: str) -> None:
  """Raises `CheckpointError` (`param` "stored") unless `stored` can hold `layout`'s weights."""
  why = stored.refusal(layout)
  if why is None and stored.name == "fp8jax" and layout.spec.kind == NVFP4.kind:
    # The fp8jax layout's metadata and dequantize have no place for the tensor scale.
    why = ("fp8jax's own layout does not hold NVFP4: compressed-tensors does (rule "
           "compressed-tensors), modelopt too (rules modelopt and torchao)")
  if why is not None:
    raise CheckpointError(f"stored must be a layout that holds {what}: {why}", param="stored")


def _check_weight_only(stored: layouts.Layout, weight_only: bool) -> None:
  if weight_only and stored.name == "vllm":
    raise CheckpointError("weight_only does not apply to the vllm layout: vLLM's fp8 method "
                          "always quantizes activations dynamically", param="weight_only")


@dataclasses.dataclass(frozen=True)
class _Quantize:
  """Quantizes the planned weights, each with its scale beside it; copies the rest.

  Attributes:
    layout: how the weights are quantized.
    stored: the layout they are stored in (names, dtypes, config).
    scales: each weight to quantize and its scale's name.
    kept: each other tensor and why it is kept.
    rounding, seed, sqnr, weight_only: as `quantize_checkpoint` takes them.
    ignored: the float weights with 2 or more dimensions left as they are.
  """

  layout: WeightLayout
  stored: layouts.Layout
  scales: dict[str, str]
  kept: dict[str, str]
  rounding: str
  seed: int | None
  sqnr: bool
  weight_only: bool
  ignored: list[str]
  verb: ClassVar[str] = "quantized"

  @property
  def note(self) -> str | None:
    return self.stored.note

  @property
  def dropped_files(self) -> frozenset[str]:
    return frozenset(self.stored.side_files(self.layout, self.ignored))  # written anew

  def outputs(self, t: TensorInfo) -> list[st.Entry]:
    if t.name not in self.scales:
      return [st.Entry(t.name, t.dtype, t.shape)]
    return self.stored.tensors(t.name, t.shape, self.layout)

  def metadata(self, h: Header) -> dict[str, str]:
    if self.stored.name != "fp8jax":
      return dict(h.metadata)  # the stacks read config.json
    tensors = {}
    for t in h.tensors:
      if t.name in self.scales:
        codes, scale, *_ = self.stored.tensors(t.name, t.shape, self.layout)
        tensors[codes.name] = QuantizedTensor(t.dtype, scale.name, t.name)
    meta = QuantMetadata(self.layout, tensors)
    return dict(h.metadata, **{KEY: meta.dump()})  # the input's own metadata is kept

  def convert(self, f: BinaryIO, t: TensorInfo, writer: st.Writer,
              staging: Staging) -> TensorReport:
    if t.name in self.scales:
      return quantize_tensor(f, t, writer, staging, self.layout, self.stored, self.rounding,
                             self.seed, self.sqnr)
    writer.copy(t.name, f, t)
    return TensorReport(t.name, t.dtype, t.shape, self.kept[t.name], t.nbytes, t.nbytes)

  def config(self, config: dict[str, Any]) -> dict[str, Any]:
    qc = self.stored.quantization_config(self.layout, self.ignored, self.weight_only)
    return dict(config, quantization_config=qc)

  def side_files(self) -> dict[str, Any]:
    return self.stored.side_files(self.layout, self.ignored)


def _plan_quantize(ckpt: Checkpoint, layout: WeightLayout, stored: layouts.Layout,
                   selection: Selection, rounding: str, seed: int | None, sqnr: bool,
                   weight_only: bool) -> _Quantize:
  """Decides what becomes of each tensor, checking everything that can be checked before writing."""
  all_names = {t.name for t in ckpt.tensors}
  selection.check_globs(sorted(all_names))
  scales: dict[str, str] = {}
  kept: dict[str, str] = {}
  taken: set[str] = set()
  for t in ckpt.tensors:
    reason = selection.reason(t)
    if not reason.startswith("quantized"):
      kept[t.name] = reason
      continue
    if t.dtype not in st.FLOAT_TAGS:
      raise CheckpointError(f"tensor {t.name!r} has unsupported dtype {t.dtype} (fp8jax "
                            "quantizes BF16, F16 and F32); exclude it to keep it as it is")
    if math.prod(t.shape) == 0:
      kept[t.name] = "kept (empty)"
      continue
    if len(t.shape) < layout.min_ndim:
      raise CheckpointError(f"scaling {layout.scaling} needs weights of {layout.min_ndim} or "
                            f"more dimensions (tensor {t.name!r} has shape {list(t.shape)})",
                            param="scaling")
    why = stored.tensor_refusal(t.name, t.shape, layout)
    if why is not None:  # a 3-D expert stack, a ragged group: the loaders read it unquantized
      kept[t.name] = f"kept ({why})"
      continue
    codes, scale, *rest = stored.tensors(t.name, t.shape, layout)
    for e in (codes, scale, *rest):
      if e.name != t.name and (e.name in all_names or e.name in taken):
        raise CheckpointError(f"tensor {t.name!r}: the name of its stored {e.name!r} is taken")
      taken.add(e.name)
    scales[t.name] = scale.name
  # Named in quantization_config, so that loaders keep these in high precision.
  ignored = [t.name for t in ckpt.tensors if t.name not in scales
             and t.dtype in st.FLOAT_TAGS and len(t.shape) >= 2]
  return _Quantize(layout, stored, scales, kept, rounding, seed, sqnr, weight_only, ignored)


def _tensor_key(seed: int, name: str) -> jax.Array:
  """The stochastic-rounding key of one tensor: the seed folded with its name's CRC-32."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode("utf-8")))


def quantize_tensor(f: BinaryIO, t: TensorInfo, writer: st.Writer, staging: Staging,
                    layout: WeightLayout, stored: layouts.Layout, rounding: str,
                    seed: int | None, sqnr: bool) -> TensorReport:
  """Reads one weight, writes its codes and scales as `stored` lays them out.

  A large weight is read, quantized and written in pieces of rows (`chunks`),
  which give the same codes and scale as the whole weight at once: per
  tensor, a first pass takes the amax, and each piece is then encoded with
  the scale of that amax. Stochastic rounding draws each element's bits
  from its index in the whole weight, so such weights are done whole. The
  writes run behind the computation (`staging`). `sqnr`: report the
  round trip's SQNR (it waits for the weight's last piece).
  """
  key = _tensor_key(seed, t.name) if rounding == "stochastic" else None
  pieces = _pieces(t, layout) if key is None else None
  whole = pieces is None
  static = None
  if layout.spec.kind == "tensor" and not whole:
    top = 0.0
    for p in pieces:
      interrupts.check()
      top = max(top, float(_amax(staging.device(staging.read(f, t, p.start, p.shape)))))
      staging.later(None)
    static = scale_from_amax(top, layout.fmt, pow2=layout.spec.pow2, margin=layout.spec.margin)
  entries = stored.tensors(t.name, t.shape, layout)
  sums: list[tuple[jax.Array, ...]] = []
  q = None
  for p in pieces or [chunks.Piece(0, t.shape, 0)]:
    interrupts.check()
    x = staging.device(staging.read(f, t, p.start, p.shape))
    q, s = _quantize_step(x, key, static, layout=layout, rounding=rounding, sqnr=sqnr)
    del x  # from here on, its buffer may be refilled
    if sqnr:
      sums.append(s)
    # A piece writes its rows of every stored tensor; with one scale for the
    # whole weight, only its codes (the scale follows once).
    parts = 1 if static is not None else None
    staging.later(functools.partial(_write_stored, writer, stored, t.name, q, s, whole, parts))
  if static is not None:
    staging.flush()
    for name, array in list(stored.stored_tensors(t.name, q).items())[1:]:
      writer.write(name, array)
  nbytes = sum(writer.nbytes(e.name) for e in entries)
  return TensorReport(t.name, t.dtype, t.shape, f"quantized {layout.describe()}", t.nbytes,
                      nbytes, stats.sqnr_from_sums(sums) if sqnr else None)


def _write_stored(writer: st.Writer, stored: layouts.Layout, name: str, q: QArray, sums: Any,
                  whole: bool, parts: int | None) -> None:
  """Writes what `stored` keeps of a weight (or of a piece: its first `parts` tensors)."""
  jax.block_until_ready((q, sums))  # every output of the step, before its input is refilled
  arrays = list(stored.stored_tensors(name, q).items())
  for stored_name, array in arrays[:parts]:
    if whole:
      writer.write(stored_name, array)
    else:
      writer.write_part(stored_name, array)


def _pieces(t: TensorInfo, layout: WeightLayout) -> list[chunks.Piece] | None:
  """The pieces `t` is quantized in with `layout` (None: whole)."""
  block = layout.block
  if len(t.shape) < 2 and layout.spec.kind != "tensor":
    return None  # a 1-D weight's one group per axis, or its blocks: whole
  if layout.spec.kind == NVFP4.kind:
    return None  # one tensor scale from the whole weight's amax
  unit = block[0] if block is not None and len(block) == 2 and len(t.shape) == 2 else 1
  return chunks.split(t.shape, st.DTYPES[t.dtype].itemsize, unit)


_amax = jax.jit(amax)


@functools.partial(jax.jit, static_argnames=("layout", "rounding", "sqnr"))
def _quantize_step(x: jax.Array, key: jax.Array | None, static: jax.Array | None, *,
                   layout: WeightLayout, rounding: str, sqnr: bool) -> tuple[QArray, Any]:
  """One piece's codes and scale (with the `static` scale when given) and its SQNR sums.

  One computation, so that it runs while the previous piece is written.
  """
  if static is None:
    q = layout.quantize(x, rounding=rounding, key=key)
  else:
    q = quantize(x, layout.fmt, scaling=static, overflow=layout.spec.overflow)
    q = layout.qarray(q.bits, static, x.dtype)  # the per-tensor spec, for `stored`
  return q, stats.sqnr_sums(x, dequantize(q, jnp.float32)) if sqnr else None


# --- dequantize --------------------------------------------------------------

def dequantize_checkpoint(src: str, out: str, *, dtype: str | None = None, force: bool = False,
                          progress: Progress | None = None) -> Summary:
  """Turns a quantized checkpoint back into a plain one.

  Reads what fp8jax wrote (its metadata), and the layouts other stacks write
  (`foreign.detect`: compressed-tensors FP8, NVFP4 and MX, ModelOpt NVFP4,
  vLLM / DeepSeek FP8, gpt-oss MXFP4), each dequantized as its producer does.

  Args:
    src: the quantized file, index or folder.
    out: a file for a single-file input, else a folder.
    dtype: "bf16", "f16" or "f32" for the dequantized weights; default: the
      dtype each weight had before quantization (for another stack's
      checkpoint, the model's dtype in `config.json`, else bf16). Tensors
      that were never quantized are copied unchanged.
    force: replace an existing `out`.
    progress: called after each tensor.

  Returns:
    The `Summary`. Names and shapes are the original ones, scales are gone,
    and `config.json` loses its `quantization_config`.

  Raises:
    CheckpointError: bad input or arguments, a checkpoint that is not
      quantized, or one whose quantization config its tensors contradict.

  Example:
    >>> import os, shutil, tempfile
    >>> from fp8jax.checkpoint.safetensors_io import write_file
    >>> folder = tempfile.mkdtemp()
    >>> src, q, back = (os.path.join(folder, n) for n in ("a.safetensors", "q.safetensors",
    ...                                                   "back.safetensors"))
    >>> write_file(src, {"w": np.full((2, 4), 0.3, np.float32)})
    >>> _ = quantize_checkpoint(src, q, WeightLayout.parse("e4m3fn", "tensor"))
    >>> dequantize_checkpoint(q, back, dtype="bf16").tensors[0].action
    'dequantized to BF16'
    >>> shutil.rmtree(folder)
  """
  start = time.perf_counter()
  if dtype is not None and dtype not in DTYPE_TAGS:
    raise CheckpointError(f"dtype must be bf16, f16 or f32 (got {dtype!r})", param="dtype")
  ckpt = open_checkpoint(src)
  plan = foreign.detect(ckpt) if QuantMetadata.merged(ckpt.headers) is None else None
  if plan is not None:
    conversion: _Conversion = _ForeignDequantize(plan, dtype and DTYPE_TAGS[dtype])
  else:
    conversion = _plan_dequantize(ckpt, dtype)
  return _convert(ckpt, out, force, conversion, progress, start)


@dataclasses.dataclass(frozen=True)
class _Dequantize:
  """Dequantizes each listed weight with its scale; drops the scales; copies the rest.

  Attributes:
    layout: how the weights are stored.
    weights: each quantized weight, its metadata entry and its scale's header entry.
    targets: each quantized weight's output dtype tag.
    scales: the names of the scale tensors.
  """

  layout: WeightLayout
  weights: dict[str, tuple[QuantizedTensor, TensorInfo]]
  targets: dict[str, str]
  scales: frozenset[str]
  verb: ClassVar[str] = "dequantized"
  dropped_files: ClassVar[frozenset[str]] = frozenset()
  note: ClassVar[str | None] = None

  def outputs(self, t: TensorInfo) -> list[st.Entry]:
    if t.name in self.scales:
      return []
    entry = self.weights.get(t.name)
    name = t.name if entry is None else entry[0].name or t.name
    return [st.Entry(name, self.targets.get(t.name, t.dtype), t.shape)]

  def metadata(self, h: Header) -> dict[str, str]:
    return {k: v for k, v in h.metadata.items() if k != KEY}

  def convert(self, f: BinaryIO, t: TensorInfo, writer: st.Writer,
              staging: Staging) -> TensorReport | None:
    if t.name in self.scales:
      return None  # read with its weight
    if t.name not in self.weights:
      writer.copy(t.name, f, t)
      return TensorReport(t.name, t.dtype, t.shape, "kept", t.nbytes, t.nbytes)
    entry, scale = self.weights[t.name]
    return dequantize_tensor(f, t, scale, writer, staging, self.layout, entry.dtype,
                             self.targets[t.name], entry.name or t.name)

  def config(self, config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "quantization_config"}

  def side_files(self) -> dict[str, Any]:
    return {}


def _plan_dequantize(ckpt: Checkpoint, dtype: str | None) -> _Dequantize:
  """Reads every file's metadata and checks it against the file before writing."""
  meta = QuantMetadata.merged(ckpt.headers)
  if meta is None:
    raise CheckpointError(f"{ckpt.path} is not quantized: it has no {KEY} metadata and no "
                          "quantization config that fp8jax reads")
  weights: dict[str, tuple[QuantizedTensor, TensorInfo]] = {}
  for h in ckpt.headers:
    file_meta = QuantMetadata.of(h)
    if file_meta is None:
      continue
    file_meta.check(h)
    by_name = {t.name: t for t in h.tensors}
    for name, entry in file_meta.tensors.items():
      weights[name] = (entry, by_name[entry.scale])
  targets = {name: DTYPE_TAGS[dtype] if dtype else entry.dtype
             for name, (entry, _) in weights.items()}
  scales = frozenset(entry.scale for entry, _ in weights.values())
  return _Dequantize(meta.layout, weights, targets, scales)


@dataclasses.dataclass(frozen=True)
class _ForeignDequantize:
  """Dequantizes another stack's weights as it does (`foreign.ForeignPlan`); drops their
  scales; copies the rest.

  Attributes:
    plan: what `foreign.detect` found.
    target: the output dtype tag of every weight (None: each weight's `dtype`).
  """

  plan: foreign.ForeignPlan
  target: str | None
  verb: ClassVar[str] = "dequantized"
  note: ClassVar[str | None] = None

  @property
  def dropped_files(self) -> frozenset[str]:
    return self.plan.dropped_files

  def outputs(self, t: TensorInfo) -> list[st.Entry]:
    if t.name in self.plan.consumed:
      return []
    w = self.plan.weights.get(t.name)
    if w is None:
      return [st.Entry(t.name, t.dtype, t.shape)]
    return [st.Entry(w.name, self.target or w.dtype, w.shape)]

  def metadata(self, h: Header) -> dict[str, str]:
    return dict(h.metadata)

  def convert(self, f: BinaryIO, t: TensorInfo, writer: st.Writer,
              staging: Staging) -> TensorReport | None:
    if t.name in self.plan.consumed:
      return None  # read with its weight
    w = self.plan.weights.get(t.name)
    if w is None:
      writer.copy(t.name, f, t)
      return TensorReport(t.name, t.dtype, t.shape, "kept", t.nbytes, t.nbytes)
    target = self.target or w.dtype
    rows = w.read_rows(f)  # pieces of rows, or the whole weight as one
    first = next(rows)
    second = next(rows, None)
    if second is None:
      writer.write(w.name, first.astype(st.DTYPES[target]))
    else:
      for values in itertools.chain([first, second], rows):
        interrupts.check()
        writer.write_part(w.name, values.astype(st.DTYPES[target]))
    return TensorReport(w.name, t.dtype, w.shape, f"dequantized to {target} "
                        f"({self.plan.producer})", sum(i.info.nbytes for i in w.inputs),
                        writer.nbytes(w.name))

  def config(self, config: dict[str, Any]) -> dict[str, Any]:
    return self.plan.config(config)

  def side_files(self) -> dict[str, Any]:
    return {}


def dequantize_tensor(f: BinaryIO, t: TensorInfo, scale: TensorInfo, writer: st.Writer,
                      staging: Staging, layout: WeightLayout, dtype: str, target: str,
                      name: str) -> TensorReport:
  """Reads one quantized weight's codes `t` (original dtype tag `dtype`) and its scale;
  writes the weight as `target`, named `name`.

  A large weight goes in pieces of rows, each with the rows of the scale it
  needs, as `quantize_tensor` wrote it; the writes run behind (`staging`).
  """
  block = layout.block
  tiles = block is not None and len(block) == 2 and len(t.shape) == 2
  pieces = None
  if len(t.shape) >= 2 or layout.spec.kind == "tensor":
    pieces = chunks.split(t.shape, max(st.DTYPES[target].itemsize, 4), block[0] if tiles else 1)
  whole = pieces is None
  per_tensor = layout.spec.kind == "tensor"
  done = 0  # scale elements read so far
  for p in pieces or [chunks.Piece(0, t.shape, 0)]:
    interrupts.check()
    bits = staging.device(staging.read(f, t, p.start, p.shape))
    shape = scale.shape if whole or per_tensor else layout.scale_shape(p.shape)
    scale_values = staging.device(staging.read(f, scale, 0 if per_tensor else done, shape))
    done += math.prod(shape)
    values = _dequantize_step(bits, scale_values, layout=layout, dtype=dtype, target=target)
    del bits, scale_values  # from here on, their buffers may be refilled
    staging.later(functools.partial(_write_values, writer, name, values, whole))
  return TensorReport(name, t.dtype, t.shape, f"dequantized to {target}",
                      t.nbytes + scale.nbytes, writer.nbytes(name))


@functools.partial(jax.jit, static_argnames=("layout", "dtype", "target"))
def _dequantize_step(bits: jax.Array, scale: jax.Array, *, layout: WeightLayout, dtype: str,
                     target: str) -> jax.Array:
  return dequantize(layout.qarray(bits, scale, st.DTYPES[dtype]), st.DTYPES[target])


def _write_values(writer: st.Writer, name: str, values: jax.Array, whole: bool) -> None:
  array = np.asarray(values)  # waits for the computation
  if whole:
    writer.write(name, array)
  else:
    writer.write_part(name, array)


# --- convert -----------------------------------------------------------------

def convert_checkpoint(src: str, out: str, stored: str, *, weight_only: bool = False,
                       force: bool = False, progress: Progress | None = None) -> Summary:
  """Rewrites a quantized model folder in another layout, without quantizing again.

  The codes and scales are carried over as they are (`layouts.Layout.qarray`
  reads them, the target's `stored_tensors` writes them), so every weight
  dequantizes to the same values. Layouts that cannot hold the source's
  format and scaling are refused with the reason: ModelOpt's NVFP4 and
  compressed-tensors' follow different tensor-scale rules, for instance.

  Args:
    src: a model folder quantized in one of `layouts.LAYOUT_NAMES` (a
      `quantization_config` in its `config.json`), by fp8jax or another stack
      whose config reads as one of them.
    out: the output folder.
    stored: the target layout.
    weight_only: as `quantize_checkpoint`'s.
    force: replace an existing `out`.
    progress: called after each tensor.

  Returns:
    The `Summary`.

  Raises:
    CheckpointError: bad input or arguments; nothing is written.
  """
  start = time.perf_counter()
  ckpt = open_checkpoint(src)
  target = layouts.LAYOUTS.get(stored) if isinstance(stored, str) else None
  if target is None:
    raise CheckpointError(f"stored must be one of {', '.join(layouts.LAYOUT_NAMES)} "
                          f"(got {stored!r})", param="stored")
  source, wl, weights, plan = _stored_weights(ckpt)
  if source.name == target.name:
    raise CheckpointError(f"{src} is already in the {target.name} layout", param="stored")
  _check_holds(target, wl, f"the {wl.describe()} weights of {src}")
  _check_weight_only(target, weight_only)
  if target.name != "fp8jax" and (ckpt.kind != "folder" or ckpt.config is None):
    raise CheckpointError(f"stored must be fp8jax for a file or an index without config.json "
                          f"(got {target.name})", param="stored")
  at = {t.name: foreign.TensorAt(h.path, t) for h in ckpt.headers for t in h.tensors}
  parts: dict[str, list[str]] = {}
  for codes, (name, shape, _) in weights.items():
    why = target.tensor_refusal(name, shape, wl)
    if why is not None:
      raise CheckpointError(f"tensor {name!r}: {why}", param="stored")
    entries = source.tensors(name, shape, wl)
    parts[codes] = [e.name for e in entries]
    for e in entries:
      t = at[e.name].info if e.name in at else None
      if t is None or t.dtype != e.dtype or t.shape != e.shape:
        got = "missing" if t is None else f"{t.dtype} {list(t.shape)}"
        raise CheckpointError(f"tensor {e.name!r}: the {source.name} layout stores it as "
                              f"{e.dtype} {list(e.shape)} ({got})")
  consumed = {n for names in parts.values() for n in names} | (plan.consumed if plan else set())
  quantized = {name for name, _, _ in weights.values()}
  ignored = [t.name for t in ckpt.tensors if t.name not in consumed and t.name not in quantized
             and t.dtype in st.FLOAT_TAGS and len(t.shape) >= 2]
  conversion = _Relayout(source, target, wl, weights, parts, frozenset(consumed), at, ignored,
                         weight_only, plan)
  return _convert(ckpt, out, force, conversion, progress, start)


def _stored_weights(ckpt: Checkpoint) -> tuple[layouts.Layout, WeightLayout,
                                                dict[str, tuple[str, tuple[int, ...], str]],
                                                foreign.ForeignPlan | None]:
  """The layout a checkpoint is stored in, its weights' `WeightLayout`, and each weight by its
  codes tensor: (its name, shape and original dtype tag)."""
  meta = QuantMetadata.merged(ckpt.headers)
  if meta is not None:
    for h in ckpt.headers:
      file_meta = QuantMetadata.of(h)
      if file_meta is not None:
        file_meta.check(h)
    shapes = {t.name: t.shape for t in ckpt.tensors}
    old = [n for n, e in meta.tensors.items() if e.name is None]
    if old:
      raise CheckpointError(f"{ckpt.path}: written by an earlier fp8jax (the codes of {old[0]!r} "
                            "under the weight's name); dequantize it and quantize it again")
    weights = {codes: (e.name, shapes[codes], e.dtype) for codes, e in meta.tensors.items()}
    return layouts.LAYOUTS["fp8jax"], meta.layout, weights, None
  qc = (ckpt.config or {}).get("quantization_config")
  if not isinstance(qc, dict):
    raise CheckpointError(f"{ckpt.path} is not quantized: no {KEY} metadata and no "
                          "quantization_config in config.json")
  try:
    source, wl = layouts.read_config(qc)
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{ckpt.path}: its quantization_config is not a layout fp8jax "
                          f"converts ({e}); fp8jax dequantize reads it") from None
  plan = foreign.detect(ckpt)
  if plan is None:
    raise CheckpointError(f"{ckpt.path}: no quantized weights found")
  weights = {codes: (w.name, w.shape, w.dtype) for codes, w in plan.weights.items()}
  return source, wl, weights, plan


@dataclasses.dataclass(frozen=True)
class _Relayout:
  """Rewrites each quantized weight's stored tensors in the `target` layout; copies the rest.

  Attributes:
    source, target: the layouts read and written.
    layout: the weights' format and scaling.
    weights: each weight by its codes tensor: (name, shape, original dtype tag).
    parts: each weight's stored tensors in `source`, by its codes tensor.
    consumed: every stored tensor read with a weight, or dropped with its quantization.
    at: each input tensor's file and header entry.
    ignored: the float weights with 2 or more dimensions left unquantized.
    weight_only: as `quantize_checkpoint`'s.
    plan: what `foreign.detect` found (None for the fp8jax layout).
  """

  source: layouts.Layout
  target: layouts.Layout
  layout: WeightLayout
  weights: dict[str, tuple[str, tuple[int, ...], str]]
  parts: dict[str, list[str]]
  consumed: frozenset[str]
  at: dict[str, foreign.TensorAt]
  ignored: list[str]
  weight_only: bool
  plan: foreign.ForeignPlan | None
  verb: ClassVar[str] = "converted"

  @property
  def note(self) -> str | None:
    return self.target.note

  @property
  def dropped_files(self) -> frozenset[str]:
    old = self.plan.dropped_files if self.plan is not None else frozenset()
    return old | frozenset(self.target.side_files(self.layout, self.ignored))

  def outputs(self, t: TensorInfo) -> list[st.Entry]:
    if t.name in self.weights:
      name, shape, _ = self.weights[t.name]
      return self.target.tensors(name, shape, self.layout)
    if t.name in self.consumed:
      return []
    return [st.Entry(t.name, t.dtype, t.shape)]

  def metadata(self, h: Header) -> dict[str, str]:
    kept = {k: v for k, v in h.metadata.items() if k != KEY}
    if self.target.name != "fp8jax":
      return kept
    tensors = {}
    for t in h.tensors:
      if t.name in self.weights:
        name, shape, dtype = self.weights[t.name]
        codes, scale, *_ = self.target.tensors(name, shape, self.layout)
        tensors[codes.name] = QuantizedTensor(dtype, scale.name, name)
    return dict(kept, **{KEY: QuantMetadata(self.layout, tensors).dump()})

  def convert(self, f: BinaryIO, t: TensorInfo, writer: st.Writer,
              staging: Staging) -> TensorReport | None:
    del staging
    if t.name not in self.weights:
      if t.name in self.consumed:
        return None
      writer.copy(t.name, f, t)
      return TensorReport(t.name, t.dtype, t.shape, "kept", t.nbytes, t.nbytes)
    interrupts.check()
    name, _, dtype = self.weights[t.name]
    stored = {part: foreign.read_stored(self.at[part], f) for part in self.parts[t.name]}
    q = self.source.qarray(name, stored, self.layout, st.DTYPES[dtype])
    nbytes = 0
    for stored_name, array in self.target.stored_tensors(name, q).items():
      writer.write(stored_name, array)
      nbytes += array.nbytes
    return TensorReport(name, dtype, self.weights[t.name][1],
                        f"{self.source.name} -> {self.target.name}",
                        sum(a.nbytes for a in stored.values()), nbytes)

  def config(self, config: dict[str, Any]) -> dict[str, Any]:
    config = self.plan.config(config) if self.plan is not None else dict(config)
    config.pop("quantization_config", None)
    qc = self.target.quantization_config(self.layout, self.ignored, self.weight_only)
    return dict(config, quantization_config=qc)

  def side_files(self) -> dict[str, Any]:
    return self.target.side_files(self.layout, self.ignored)
