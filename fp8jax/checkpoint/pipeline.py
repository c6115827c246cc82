"""Quantize and dequantize whole safetensors checkpoints, one tensor at a time.

A checkpoint is a single `.safetensors` file, a sharded one given by its
`*.safetensors.index.json`, or a folder of them (a Hugging Face model folder
when a `config.json` is beside them). Every header is read and checked
before anything is written; then each output file is written tensor by
tensor (memory holds one tensor and its codes, never the file) into a
temporary name beside OUT, and renamed into place only when everything is
complete. The input is only ever opened for reading.

Quantized files record what they hold in their metadata, under the key
`fp8jax`: a JSON string `{"version": 1, "format": ..., "scaling": ...,
"tensors": {name: {"dtype": original dtype tag, "scale": scale tensor name}}}`.
Each scale is stored in the same file as its weight.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import jax
import jax.numpy as jnp
import numpy as np

from fp8jax.checkpoint import hf_config
from fp8jax.checkpoint import safetensors_io as st
from fp8jax.quant.quantize import dequantize
from fp8jax.quant import stats
from fp8jax.checkpoint.safetensors_io import CheckpointError, Header, TensorInfo
from fp8jax.checkpoint.selection import Selection
from fp8jax.checkpoint.stored import WeightLayout

METADATA_KEY = "fp8jax"
METADATA_VERSION = 1
INDEX_SUFFIX = ".safetensors.index.json"
CONFIG = "config.json"
_DTYPE_NAMES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}

Progress = Callable[[str, int], None]
"""Called after each tensor with its name and its size in bytes."""


# --- the input ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A checkpoint on disk, its headers read and validated.

  Attributes:
    path: the path given (file, index or folder).
    kind: "file", "index" or "folder".
    headers: each safetensors file's header, in a stable order.
    index: the parsed index JSON (without its weight map), or None.
    index_name: the index file's name, or None.
    config: the folder's parsed `config.json`, or None.
  """

  path: str
  kind: str
  headers: tuple[Header, ...]
  index: dict[str, Any] | None = None
  index_name: str | None = None
  config: dict[str, Any] | None = None

  @property
  def folder(self) -> str:
    return self.path if self.kind == "folder" else os.path.dirname(os.path.abspath(self.path))

  @property
  def tensors(self) -> Iterator[TensorInfo]:
    for h in self.headers:
      yield from h.tensors

  @property
  def nbytes(self) -> int:
    return sum(os.path.getsize(h.path) for h in self.headers)

  def quant_info(self) -> dict[str, Any] | None:
    """The fp8jax metadata of a quantized checkpoint (merged over shards), or None."""
    merged: dict[str, Any] | None = None
    for h in self.headers:
      raw = h.metadata.get(METADATA_KEY)
      if raw is None:
        continue
      info = _parse_quant_info(h.path, raw)
      if merged is None:
        merged = dict(info, tensors={})
      elif (info["format"], info["scaling"]) != (merged["format"], merged["scaling"]):
        raise CheckpointError(f"{h.path} holds {info['format']} {info['scaling']} weights, "
                              f"other shards {merged['format']} {merged['scaling']}")
      merged["tensors"].update(info["tensors"])
    return merged


def _parse_quant_info(path: str, raw: str) -> dict[str, Any]:
  try:
    info = json.loads(raw)
    WeightLayout.parse(info["format"], info["scaling"])
    for entry in info["tensors"].values():
      if entry["dtype"] not in st.FLOAT_TAGS or not isinstance(entry["scale"], str):
        raise ValueError(entry)
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise CheckpointError(f"{path}: corrupt {METADATA_KEY} metadata ({e})") from None
  if info.get("version") != METADATA_VERSION:
    raise CheckpointError(f"{path}: {METADATA_KEY} metadata version {info.get('version')!r} is "
                          f"not {METADATA_VERSION}; use the fp8jax that wrote it")
  return info


def open_checkpoint(path: str) -> Checkpoint:
  """Finds and validates the safetensors files of a checkpoint.

  Args:
    path: a `.safetensors` file, a `*.safetensors.index.json`, or a folder
      holding safetensors files (with or without an index and `config.json`).

  Returns:
    A `Checkpoint`.

  Raises:
    CheckpointError: a missing path, a file that is not safetensors, a
      corrupt header or index, or a tensor name found twice.
  """
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no such file or folder")
  if os.path.isdir(path):
    return _open_folder(path)
  if path.endswith(".json"):
    index, weight_map = _read_index(path)
    folder = os.path.dirname(os.path.abspath(path))
    headers = _headers_for_index(path, folder, weight_map)
    return _checked(Checkpoint(path, "index", headers, index, os.path.basename(path)))
  return _checked(Checkpoint(path, "file", (st.read_header(path),)))


def _open_folder(path: str) -> Checkpoint:
  names = sorted(os.listdir(path))
  indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
  if len(indexes) > 1:
    raise CheckpointError(f"{path}: more than one index file ({', '.join(indexes)})")
  config = None
  if os.path.isfile(os.path.join(path, CONFIG)):
    config = _read_json(os.path.join(path, CONFIG))
    if not isinstance(config, dict):
      raise CheckpointError(f"{os.path.join(path, CONFIG)}: not a JSON object")
  if indexes:
    index_path = os.path.join(path, indexes[0])
    index, weight_map = _read_index(index_path)
    headers = _headers_for_index(index_path, path, weight_map)
    return _checked(Checkpoint(path, "folder", headers, index, indexes[0], config))
  files = [n for n in names if n.endswith(".safetensors")
           and os.path.isfile(os.path.join(path, n))]
  if not files:
    raise CheckpointError(f"{path}: no .safetensors files in this folder")
  headers = tuple(st.read_header(os.path.join(path, n)) for n in files)
  return _checked(Checkpoint(path, "folder", headers, None, None, config))


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: invalid JSON ({e})") from None
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None


def _read_index(path: str) -> tuple[dict[str, Any], dict[str, str]]:
  index = _read_json(path)
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) and os.path.basename(v) == v and v
      for k, v in weight_map.items()):
    raise CheckpointError(f"{path}: not a safetensors index (needs a weight_map from tensor "
                          "names to shard file names)")
  rest = {k: v for k, v in index.items() if k != "weight_map"}
  return rest, weight_map


def _headers_for_index(index_path: str, folder: str, weight_map: dict[str, str]):
  files = sorted(set(weight_map.values()))
  headers = tuple(st.read_header(os.path.join(folder, f)) for f in files)
  listed: dict[str, set[str]] = {f: set() for f in files}
  for name, f in weight_map.items():
    listed[f].add(name)
  for f, h in zip(files, headers):
    if set(h.names) != listed[f]:
      extra = sorted(set(h.names) ^ listed[f])
      raise CheckpointError(f"{index_path}: the weight_map and {f} disagree about "
                            f"{len(extra)} tensor names ({extra[0]}, ...)")
  return headers


def _checked(ckpt: Checkpoint) -> Checkpoint:
  seen: dict[str, str] = {}
  for h in ckpt.headers:
    for name in h.names:
      if name in seen:
        raise CheckpointError(f"tensor {name!r} is in both {seen[name]} and {h.path}")
      seen[name] = h.path
  return ckpt


# --- the output --------------------------------------------------------------

def _same_or_inside(a: str, b: str) -> bool:
  """Whether path a is b or lies inside b."""
  a, b = os.path.realpath(a), os.path.realpath(b)
  return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def _same_path(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b)


class _Output:
  """Where the output goes, staged so that OUT appears only when complete.

  A single-file output is written to a temporary file beside OUT (by
  `st.Writer`) and renamed; a folder output is built in a temporary folder
  beside OUT and renamed. An existing OUT is replaced only with `force`,
  and then only after the new one is complete.
  """

  def __init__(self, ckpt: Checkpoint, out: str, force: bool):
    self.out = out
    self.is_dir = ckpt.kind != "file"
    sources = [h.path for h in ckpt.headers] + [ckpt.path]
    inside = _same_or_inside if ckpt.kind == "folder" else _same_path
    if any(_same_or_inside(s, out) for s in sources) or (self.is_dir and inside(out, ckpt.folder)):
      raise CheckpointError(f"OUT {out} is IN {ckpt.path} (or holds it); choose another OUT")
    if os.path.lexists(out):
      if not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it")
      if self.is_dir != os.path.isdir(out):
        raise CheckpointError(f"{out} exists and is {'not ' if self.is_dir else ''}a folder; "
                              "remove it first")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
      raise CheckpointError(f"{parent}: no such folder for OUT")
    self._parent = parent
    self._stage: str | None = None

  def __enter__(self) -> Self:
    if self.is_dir:
      self._stage = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.", suffix=".tmp",
                                     dir=self._parent)
    return self

  def path(self, name: str) -> str:
    """Where to write the output file `name` (a folder output) or OUT itself."""
    return os.path.join(self._stage, name) if self.is_dir else self.out

  def __exit__(self, exc_type, exc, tb) -> None:
    if not self.is_dir:
      return
    if exc_type is not None:
      shutil.rmtree(self._stage, ignore_errors=True)
      return
    old = None
    if os.path.lexists(self.out):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.", suffix=".old",
                             dir=self._parent)
      os.rename(self.out, os.path.join(old, "x"))
    os.rename(self._stage, self.out)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)


def _write_json(path: str, value: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


def _copy_others(ckpt: Checkpoint, output: _Output, skip: set[str]) -> None:
  """Copies a folder's other files (tokenizer, generation config, ...) unchanged."""
  for name in sorted(os.listdir(ckpt.folder)):
    if name in skip:
      continue
    src = os.path.join(ckpt.folder, name)
    if os.path.isdir(src):
      shutil.copytree(src, output.path(name), symlinks=True)
    else:
      shutil.copy2(src, output.path(name))


# --- reports -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorReport:
  """What happened to one tensor.

  Attributes:
    name: the tensor's name.
    dtype: its dtype tag in the input.
    shape: its shape.
    action: "quantized ...", "dequantized ..." or "kept (why)".
    bytes_in: its bytes in the input.
    bytes_out: its bytes in the output (codes plus scale when quantized).
    sqnr_db: the SQNR of the round trip, for quantized tensors, else None.
  """

  name: str
  dtype: str
  shape: tuple[int, ...]
  action: str
  bytes_in: int
  bytes_out: int
  sqnr_db: float | None = None

  def line(self) -> str:
    sqnr = "" if self.sqnr_db is None else f"  SQNR {self.sqnr_db:6.2f} dB"
    shape = "[" + ", ".join(map(str, self.shape)) + "]"
    return (f"{self.name}  {self.dtype} {shape}  {self.action}  "
            f"{_human(self.bytes_in)} -> {_human(self.bytes_out)}{sqnr}")


@dataclasses.dataclass(frozen=True)
class Summary:
  """The whole run: per-tensor reports, file sizes and time."""

  tensors: tuple[TensorReport, ...]
  bytes_before: int
  bytes_after: int
  seconds: float
  verb: str

  @property
  def changed(self) -> list[TensorReport]:
    return [t for t in self.tensors if not t.action.startswith("kept")]

  @property
  def worst_sqnr_db(self) -> float | None:
    values = [t.sqnr_db for t in self.tensors if t.sqnr_db is not None]
    return min(values) if values else None

  def line(self) -> str:
    n, k = len(self.changed), len(self.tensors) - len(self.changed)
    worst = self.worst_sqnr_db
    worst_s = "" if worst is None else f", worst SQNR {worst:.2f} dB"
    ratio = self.bytes_after / self.bytes_before if self.bytes_before else 1.0
    return (f"{self.verb} {n} tensors, kept {k}; {_human(self.bytes_before)} -> "
            f"{_human(self.bytes_after)} ({ratio:.1%} of the input){worst_s}; "
            f"{self.seconds:.1f} s")


def _human(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"


# --- quantize ----------------------------------------------------------------

def _tensor_key(seed: int, name: str) -> jax.Array:
  """The stochastic-rounding key of one tensor: the seed folded with its name's CRC-32."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode("utf-8")))


def quantize_checkpoint(src: str, out: str, layout: WeightLayout, *,
                        selection: Selection | None = None, rounding: str = "nearest",
                        seed: int | None = None, force: bool = False,
                        progress: Progress | None = None) -> Summary:
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

  Returns:
    The `Summary`.

  Raises:
    CheckpointError: bad input; nothing is written.

  Example:
    >>> quantize_checkpoint("model.safetensors", "model-fp8.safetensors",
    ...                     WeightLayout.parse("e4m3fn", "channel")).line()
    'quantized 28 tensors, kept 37; ...'
  """
  start = time.perf_counter()
  if rounding not in ("nearest", "stochastic"):
    raise CheckpointError(f"--rounding must be nearest or stochastic (got {rounding!r})")
  if (rounding == "stochastic") != (seed is not None):
    raise CheckpointError("--rounding stochastic needs --seed N, and --seed applies only to it")
  ckpt = open_checkpoint(src)
  if ckpt.quant_info() is not None:
    raise CheckpointError(f"{src} is already quantized by fp8jax; dequantize it first")
  if ckpt.config is not None and "quantization_config" in ckpt.config:
    raise CheckpointError(f"{src}: config.json already has a quantization_config")
  selection = selection or Selection()
  all_names = {t.name for t in ckpt.tensors}
  selection.check_globs(sorted(all_names))
  plan, reasons = _plan_quantize(ckpt, layout, selection, all_names)
  output = _Output(ckpt, out, force)
  reports: list[TensorReport] = []
  sizes = 0
  with output:
    for h in ckpt.headers:
      name = os.path.basename(h.path)
      sizes += _quantize_file(h, output.path(name), layout, plan, reasons, rounding, seed,
                              reports, progress)
    if ckpt.kind != "file":
      _write_side_files(ckpt, output, layout, plan, reports)
  return Summary(tuple(reports), ckpt.nbytes, sizes, time.perf_counter() - start, "quantized")


def _plan_quantize(ckpt: Checkpoint, layout: WeightLayout, selection: Selection,
                   all_names: set[str]) -> tuple[dict[str, str], dict[str, str]]:
  """Maps each tensor to quantize to its scale's name, and each other one to why it is kept.

  Checks everything that can be checked before writing.
  """
  plan: dict[str, str] = {}
  reasons: dict[str, str] = {}
  for t in ckpt.tensors:
    reason = selection.reason(t)
    if not reason.startswith("quantized"):
      reasons[t.name] = reason
      continue
    if t.dtype not in st.FLOAT_TAGS:
      raise CheckpointError(f"tensor {t.name!r} has unsupported dtype {t.dtype} (fp8jax "
                            "quantizes BF16, F16 and F32); --exclude it to keep it as it is")
    if math.prod(t.shape) == 0:
      reasons[t.name] = "kept (empty)"
      continue
    if len(t.shape) < layout.min_ndim:
      raise CheckpointError(f"tensor {t.name!r} of shape {list(t.shape)} is too small for "
                            f"--scaling {layout.scaling}")
    scale = t.name + layout.scale_suffix
    if scale in all_names or scale in plan.values():
      raise CheckpointError(f"tensor {t.name!r}: its scale's name {scale!r} is taken")
    plan[t.name] = scale
  return plan, reasons


def _quantize_file(h: Header, path: str, layout: WeightLayout, plan: dict[str, str],
                   reasons: dict[str, str], rounding: str, seed: int | None,
                   reports: list[TensorReport], progress: Progress | None) -> int:
  entries, tensors_meta = [], {}
  for t in h.tensors:
    if t.name in plan:
      entries.append(st.Entry(t.name, layout.bits_dtype, t.shape))
      entries.append(st.Entry(plan[t.name], layout.scale_dtype, layout.scale_shape(t.shape)))
      tensors_meta[t.name] = {"dtype": t.dtype, "scale": plan[t.name]}
    else:
      entries.append(st.Entry(t.name, t.dtype, t.shape))
  info = {"version": METADATA_VERSION, "format": layout.fmt.name, "scaling": layout.scaling,
          "bits_dtype": layout.bits_dtype, "scale_dtype": layout.scale_dtype,
          "tensors": tensors_meta}
  metadata = dict(h.metadata, **{METADATA_KEY: json.dumps(info, sort_keys=True)})

  def one(f, t: TensorInfo, writer: st.Writer) -> TensorReport:
    if t.name in plan:
      return _quantize_one(f, t, writer, layout, plan[t.name], rounding, seed)
    writer.copy(t.name, f, t)
    return TensorReport(t.name, t.dtype, t.shape, reasons[t.name], t.nbytes, t.nbytes)

  return _stream(h, path, entries, metadata, one, reports, progress)


def _stream(h: Header, path: str, entries: list[st.Entry], metadata: dict[str, str],
            one: Callable[[Any, TensorInfo, st.Writer], TensorReport | None],
            reports: list[TensorReport], progress: Progress | None) -> int:
  """Writes `path` tensor by tensor, `one` handling each tensor of `h`.

  `one` writes what the tensor becomes and returns its report (None for a
  tensor written with another). On any error the partial file is removed.
  Returns the size of the written file.
  """
  writer = st.Writer(path, entries, metadata)
  try:
    with open(h.path, "rb") as f:
      for t in h.tensors:
        report = one(f, t, writer)
        if report is not None:
          reports.append(report)
        if progress is not None:
          progress(t.name, t.nbytes)
  except BaseException:
    writer.abort()
    raise
  writer.close()
  return os.path.getsize(path)


def _quantize_one(f, t: TensorInfo, writer: st.Writer, layout: WeightLayout, scale_name: str,
                  rounding: str, seed: int | None) -> TensorReport:
  x = jnp.asarray(st.read_tensor(f, t))
  key = _tensor_key(seed, t.name) if rounding == "stochastic" else None
  q = layout.quantize(x, rounding=rounding, key=key)
  bits, scale = np.asarray(q.bits), np.asarray(q.scale)
  writer.write(t.name, bits)
  writer.write(scale_name, scale)
  sqnr = stats.sqnr_db(x, dequantize(q, jnp.float32))
  action = f"quantized {layout.describe()}"
  return TensorReport(t.name, t.dtype, t.shape, action, t.nbytes, bits.nbytes + scale.nbytes,
                      sqnr)


def _write_side_files(ckpt: Checkpoint, output: _Output, layout: WeightLayout,
                      plan: dict[str, str], reports: list[TensorReport]) -> None:
  """The index and, for folders, the other files and the updated config.json."""
  if ckpt.index_name is not None:
    weight_map, total = {}, 0
    for h in ckpt.headers:
      shard = os.path.basename(h.path)
      for t in h.tensors:
        weight_map[t.name] = shard
        if t.name in plan:
          weight_map[plan[t.name]] = shard
    total = sum(r.bytes_out for r in reports)
    index = dict(ckpt.index or {})
    index["metadata"] = dict(index.get("metadata") or {}, total_size=total)
    index["weight_map"] = dict(sorted(weight_map.items()))
    _write_json(output.path(ckpt.index_name), index)
  if ckpt.kind == "folder":
    written = {os.path.basename(h.path) for h in ckpt.headers} | {ckpt.index_name, CONFIG}
    _copy_others(ckpt, output, written)
    if ckpt.config is not None:
      ignored = [r.name for r in reports if r.name not in plan and r.dtype in st.FLOAT_TAGS
                 and len(r.shape) >= 2]
      config = dict(ckpt.config,
                    quantization_config=hf_config.quantization_config(layout, ignored))
      _write_json(output.path(CONFIG), config)


# --- dequantize --------------------------------------------------------------

def dequantize_checkpoint(src: str, out: str, *, dtype: str | None = None, force: bool = False,
                          progress: Progress | None = None) -> Summary:
  """Turns a checkpoint quantized by fp8jax back into a plain one.

  Args:
    src: the quantized file, index or folder.
    out: a file for a single-file input, else a folder.
    dtype: "bf16", "f16" or "f32" for the dequantized weights; default: the
      dtype each weight had before quantization. Tensors that were never
      quantized are copied unchanged.
    force: replace an existing `out`.
    progress: called after each tensor.

  Returns:
    The `Summary`. Names and shapes are the original ones, scales are gone,
    and `config.json` loses its `quantization_config`.

  Raises:
    CheckpointError: bad input, or a checkpoint without fp8jax metadata.
  """
  start = time.perf_counter()
  if dtype is not None and dtype not in _DTYPE_NAMES:
    raise CheckpointError(f"--dtype must be bf16, f16 or f32 (got {dtype!r})")
  ckpt = open_checkpoint(src)
  info = ckpt.quant_info()
  if info is None:
    raise CheckpointError(f"{src} has no {METADATA_KEY} metadata: it was not quantized by "
                          "fp8jax (dequantize reads only checkpoints fp8jax wrote)")
  layout = WeightLayout.parse(info["format"], info["scaling"])
  output = _Output(ckpt, out, force)
  reports: list[TensorReport] = []
  sizes = 0
  with output:
    for h in ckpt.headers:
      name = os.path.basename(h.path)
      sizes += _dequantize_file(h, output.path(name), layout, dtype, reports, progress)
    if ckpt.kind != "file":
      _write_plain_side_files(ckpt, output, reports)
  return Summary(tuple(reports), ckpt.nbytes, sizes, time.perf_counter() - start, "dequantized")


def _dequantize_file(h: Header, path: str, layout: WeightLayout, dtype: str | None,
                     reports: list[TensorReport], progress: Progress | None) -> int:
  raw = h.metadata.get(METADATA_KEY)
  tensors = _parse_quant_info(h.path, raw)["tensors"] if raw is not None else {}
  by_name = {t.name: t for t in h.tensors}
  scales = {}
  for name, entry in tensors.items():
    weight, scale = by_name.get(name), by_name.get(entry["scale"])
    if weight is None or scale is None:
      raise CheckpointError(f"{h.path}: the metadata lists {name!r} with scale "
                            f"{entry['scale']!r}, but the file lacks one of them")
    if weight.dtype != layout.bits_dtype or scale.dtype != layout.scale_dtype or (
        scale.shape != layout.scale_shape(weight.shape)):
      raise CheckpointError(f"{h.path}: {name!r} is {weight.dtype} with a {scale.dtype} "
                            f"{list(scale.shape)} scale, not the {layout.describe()} layout")
    scales[entry["scale"]] = name
  target = {name: _DTYPE_NAMES[dtype] if dtype else entry["dtype"]
            for name, entry in tensors.items()}
  entries = [st.Entry(t.name, target.get(t.name, t.dtype), t.shape)
             for t in h.tensors if t.name not in scales]
  metadata = {k: v for k, v in h.metadata.items() if k != METADATA_KEY}

  def one(f, t: TensorInfo, writer: st.Writer) -> TensorReport | None:
    if t.name in scales:
      return None  # read with its weight
    if t.name not in tensors:
      writer.copy(t.name, f, t)
      return TensorReport(t.name, t.dtype, t.shape, "kept", t.nbytes, t.nbytes)
    bits = st.read_tensor(f, t)
    scale_info = by_name[tensors[t.name]["scale"]]
    scale = st.read_tensor(f, scale_info)
    src_dtype = st.DTYPES[tensors[t.name]["dtype"]]
    q = layout.qarray(jnp.asarray(bits), jnp.asarray(scale), src_dtype)
    values = np.asarray(dequantize(q, st.DTYPES[target[t.name]]))
    writer.write(t.name, values)
    return TensorReport(t.name, t.dtype, t.shape, f"dequantized to {target[t.name]}",
                        t.nbytes + scale_info.nbytes, values.nbytes)

  return _stream(h, path, entries, metadata, one, reports, progress)


def _write_plain_side_files(ckpt: Checkpoint, output: _Output,
                            reports: list[TensorReport]) -> None:
  if ckpt.index_name is not None:
    weight_map = {}
    for h in ckpt.headers:
      raw = h.metadata.get(METADATA_KEY)
      scale_names = set()
      if raw is not None:
        scale_names = {e["scale"] for e in _parse_quant_info(h.path, raw)["tensors"].values()}
      for t in h.tensors:
        if t.name not in scale_names:
          weight_map[t.name] = os.path.basename(h.path)
    index = dict(ckpt.index or {})
    index["metadata"] = dict(index.get("metadata") or {},
                             total_size=sum(r.bytes_out for r in reports))
    index["weight_map"] = dict(sorted(weight_map.items()))
    _write_json(output.path(ckpt.index_name), index)
  if ckpt.kind == "folder":
    written = {os.path.basename(h.path) for h in ckpt.headers} | {ckpt.index_name, CONFIG}
    _copy_others(ckpt, output, written)
    if ckpt.config is not None:
      config = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
      _write_json(output.path(CONFIG), config)


def shard_names(n: int, stem: str = "model") -> Sequence[str]:
  """Hugging Face shard file names: `model-00001-of-00002.safetensors`, ..."""
  return [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
