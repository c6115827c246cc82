"""The safetensors file format, read and written one tensor at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header
(`{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}`,
offsets relative to the end of the header) and the tensors' raw
little-endian bytes. Reading seeks to one tensor and reads only its bytes;
writing lays the header out first (every shape is known in advance, and
each tensor is aligned to its item size), then puts each tensor's bytes at
its offset as it comes, so memory holds one tensor at a time. The
header is validated strictly, so a truncated or corrupt file is one clear
`CheckpointError` rather than a crash deep inside.

Why not the `safetensors` library (0.8.0): its NumPy and Flax frontends
cannot read F8 tensors at all (`safe_open(framework="np")` fails on them:
NumPy has no float8 dtypes), only the torch one can, and fp8jax does not
need torch; and its writers (`save_file`) take every tensor of a file at
once, in memory, where this writer takes one at a time, so a checkpoint
larger than memory converts in the memory of its largest tensor.
`tests/test_checkpoint_safetensors_io.py` fails once the NumPy frontend
reads F8, so that the reader can be replaced by the library's then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import dataclasses
import json
import math
import os
import struct
from typing import Any, BinaryIO, Self

import numpy as np

from fp8jax.checkpoint import strict_json
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.files import AtomicFile
from fp8jax.core.formats import EXTERNAL_NAMES
from fp8jax.core.layout import FLOATS

_HEADER_LEN_BYTES = 8
MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's limit on the JSON header (0.8: 100,000,000 bytes read, 8 more refused)."""
_MAX_BYTES = 2**63 - 1  # what NumPy and torch can allocate (they count zero dimensions as 1)
_MAX_DIMS = 64  # NumPy's limit
_ALIGN = 8
_COPY_CHUNK = 16 * 2**20
METADATA_KEY = "__metadata__"

# dtype tag -> the NumPy dtype its bytes are read as. Float8 tags are read as
# their uint8 codes, which is what fp8jax computes with.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    **{f.safetensors: f.dtype for f in FLOATS},
    "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64),
    **{n.safetensors: np.dtype(np.uint8) for n in EXTERNAL_NAMES.values() if n.safetensors},
}
FLOAT_TAGS = tuple(f.safetensors for f in FLOATS)
"""The dtypes fp8jax quantizes: BF16, F16 and F32."""

_TAG_OF = {f.dtype: f.safetensors for f in FLOATS}


def tag_of(dtype: Any) -> str:
  """The safetensors tag of a bfloat16, float16 or float32 NumPy dtype."""
  return _TAG_OF[np.dtype(dtype)]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """One tensor's entry in a header.

  Attributes:
    name: the tensor's name.
    dtype: the safetensors dtype tag, such as "BF16" or "F8_E4M3".
    shape: the tensor's shape.
    start: absolute offset of its first byte in the file.
    end: absolute offset one past its last byte.
  """

  name: str
  dtype: str
  shape: tuple[int, ...]
  start: int
  end: int

  @property
  def nbytes(self) -> int:
    return self.end - self.start


@dataclasses.dataclass(frozen=True)
class Header:
  """A validated header: tensors in file order, and the string metadata."""

  path: str
  tensors: tuple[TensorInfo, ...]
  metadata: dict[str, str]

  @property
  def names(self) -> list[str]:
    return [t.name for t in self.tensors]


def _fail(path: str, why: str) -> CheckpointError:
  return CheckpointError(f"{path}: {why}")


def _short(value: Any, limit: int = 60) -> str:
  """`repr(value)`, cut to about `limit` characters for an error message."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def read_header(path: str) -> Header:
  """Reads and validates the header of a safetensors file.

  Args:
    path: the file.

  Returns:
    The `Header`, tensors sorted by their position in the file.

  Raises:
    CheckpointError: a missing or unreadable file, a header length that does
      not fit the file, invalid JSON, an unknown dtype, a shape that does not
      match its byte range, or byte ranges that overlap, leave gaps or run
      past the end of the file.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    >>> write_file(path, {"w": np.ones((2, 3), np.float32)}, {"format": "pt"})
    >>> header = read_header(path)
    >>> header.tensors[0], header.metadata
    (TensorInfo(name='w', dtype='F32', shape=(2, 3), start=96, end=120), {'format': 'pt'})
    >>> os.remove(path); os.rmdir(os.path.dirname(path))
  """
  if not os.path.exists(path):
    raise _fail(path, "no such file")
  if not os.path.isfile(path):
    raise _fail(path, "not a file")
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      head = f.read(_HEADER_LEN_BYTES)
      if len(head) < _HEADER_LEN_BYTES:
        raise _fail(path, f"not a safetensors file ({size} bytes, shorter than the 8-byte "
                    "header length)")
      (n,) = struct.unpack("<Q", head)
      if n == 0 or n > MAX_HEADER_BYTES or n > size - _HEADER_LEN_BYTES:
        raise _fail(path, f"not a safetensors file, or truncated: header length {n} does not "
                    f"fit a {size}-byte file")
      raw = f.read(n)
  except OSError as e:
    raise _fail(path, f"cannot read ({e.strerror})") from None
  header = strict_json.loads(raw, f"{path}: not a safetensors file, or a corrupt header")
  if not isinstance(header, dict):
    raise _fail(path, "corrupt header: the JSON is not an object")
  metadata = header.pop(METADATA_KEY, None) or {}
  if not isinstance(metadata, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
    raise _fail(path, "corrupt header: __metadata__ must map strings to strings")
  base = _HEADER_LEN_BYTES + n
  tensors = [_tensor_info(path, name, entry, base) for name, entry in header.items()]
  tensors.sort(key=lambda t: (t.start, t.end))
  pos = base
  for t in tensors:
    if t.start != pos:
      what = "overlaps the previous tensor" if t.start < pos else "leaves a gap before it"
      raise _fail(path, f"corrupt header: the byte range of tensor {t.name!r} {what}")
    pos = t.end
  if pos != size:
    if pos > size:
      raise _fail(path, f"truncated: the header describes {pos} bytes, the file has {size}")
    raise _fail(path, f"corrupt: {size - pos} bytes after the last tensor")
  return Header(path, tuple(tensors), dict(metadata))


def _tensor_info(path: str, name: str, entry: Any, base: int) -> TensorInfo:
  if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
    raise _fail(path, f"corrupt header: entry {name!r} needs exactly dtype, shape and "
                "data_offsets")
  dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
  if not isinstance(dtype, str) or dtype not in DTYPES:
    raise _fail(path, f"tensor {name!r} has unsupported dtype {_short(dtype)} (known: "
                f"{', '.join(DTYPES)})")
  if not isinstance(shape, list) or not all(
      isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
    raise _fail(path, f"corrupt header: tensor {name!r} has shape {_short(shape)}")
  if not fits(shape, dtype):
    raise _fail(path, f"tensor {name!r} has shape {_short(shape)}, which NumPy and torch "
                "cannot hold (over 64 dimensions, or 2^63 bytes)")
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(
      isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
      or offsets[0] > offsets[1]):
    raise _fail(path, f"corrupt header: tensor {name!r} has data_offsets {_short(offsets)}")
  nbytes = math.prod(shape) * DTYPES[dtype].itemsize
  if offsets[1] - offsets[0] != nbytes:
    raise _fail(path, f"corrupt header: tensor {name!r} of {dtype} {_short(shape)} needs "
                f"{nbytes} bytes, its data_offsets give {offsets[1] - offsets[0]}")
  return TensorInfo(name, dtype, tuple(shape), base + offsets[0], base + offsets[1])


def fits(shape: Sequence[int], dtype: str) -> bool:
  """Whether a tensor of `shape` and `dtype` can be held by NumPy and torch (and so read).

  At most 64 dimensions, and under 2^63 bytes counting a zero dimension as
  1, as both do when they check sizes: `[2**62, 0]` F32 is refused by
  NumPy though it holds no element.
  """
  if len(shape) > _MAX_DIMS:
    return False
  n = DTYPES[dtype].itemsize
  for d in shape:
    n *= max(d, 1)
    if n > _MAX_BYTES:
      return False
  return True


def read_tensor(f: BinaryIO, info: TensorInfo) -> np.ndarray:
  """Reads one tensor's values from an open file (its bytes only).

  Args:
    f: the file, opened "rb".
    info: the tensor's header entry.

  Returns:
    A NumPy array of `info.shape` in the dtype of `DTYPES[info.dtype]`
    (float8 tensors as their uint8 codes).
  """
  out = np.empty(info.shape, DTYPES[info.dtype])
  f.seek(info.start)
  got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
  if got != info.nbytes:
    raise CheckpointError(f"tensor {info.name!r}: truncated read ({got} of {info.nbytes} bytes)")
  return out


def read_part(f: BinaryIO, info: TensorInfo, start: int, shape: tuple[int, ...]) -> np.ndarray:
  """Reads `prod(shape)` consecutive elements of one tensor, from element `start` on.

  Args:
    f: the file, opened "rb".
    info: the tensor's header entry.
    start: the flat (row-major) index of the first element to read.
    shape: the shape of the piece.

  Returns:
    A NumPy array of `shape` in the dtype of `DTYPES[info.dtype]`.
  """
  dtype = DTYPES[info.dtype]
  out = np.empty(shape, dtype)
  begin = info.start + start * dtype.itemsize
  if begin + out.nbytes > info.end:
    raise CheckpointError(f"tensor {info.name!r}: a read past its end")
  f.seek(begin)
  got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
  if got != out.nbytes:
    raise CheckpointError(f"tensor {info.name!r}: truncated read ({got} of {out.nbytes} bytes)")
  return out


def copy_bytes(f: BinaryIO, info: TensorInfo, write) -> None:
  """Streams one tensor's raw bytes to `write`, in bounded chunks."""
  f.seek(info.start)
  left = info.nbytes
  while left:
    chunk = f.read(min(left, _COPY_CHUNK))
    if not chunk:
      raise CheckpointError(f"tensor {info.name!r}: file ended early")
    write(chunk)
    left -= len(chunk)


@dataclasses.dataclass(frozen=True)
class Entry:
  """A tensor to be written: its name, dtype tag and shape."""

  name: str
  dtype: str
  shape: tuple[int, ...]

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * DTYPES[self.dtype].itemsize


def encode_header(path: str, entries: Sequence[Entry], metadata: dict[str, str]) -> bytes:
  """The length prefix and JSON header for `entries`, laid out in order, for the file `path`.

  The JSON is UTF-8 (as the safetensors library writes it: non-ASCII text
  takes 2 to 4 bytes, not a 6-byte escape) and padded with spaces to a
  multiple of 8 bytes, so that every tensor starts aligned.

  Raises:
    CheckpointError: the header is over `MAX_HEADER_BYTES`, which every
      safetensors reader refuses.
  """
  header: dict[str, Any] = {}
  if metadata:
    header[METADATA_KEY] = dict(metadata)
  pos = 0
  for e in entries:
    header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                      "data_offsets": [pos, pos + e.nbytes]}
    pos += e.nbytes
  raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
  raw += b" " * (-len(raw) % _ALIGN)
  if len(raw) > MAX_HEADER_BYTES:
    raise CheckpointError(f"{path}: its header would take {len(raw):,} bytes, over the "
                          f"{MAX_HEADER_BYTES:,} bytes safetensors readers accept; split the "
                          "checkpoint into more shards")
  return struct.pack("<Q", len(raw)) + raw


def check_header(path: str, entries: Sequence[Entry], metadata: dict[str, str]) -> None:
  """Checks, before any writing, that `Writer(path, entries, metadata)` will have a readable header."""
  encode_header(path, aligned_order(entries), metadata)


def aligned_order(entries: Sequence[Entry]) -> list[Entry]:
  """Entries by decreasing item size (stable), as the safetensors library lays them out.

  With the header padded to 8 bytes, every tensor then starts at a multiple
  of its item size, so readers that map the file can use it in place.
  """
  return sorted(entries, key=lambda e: -DTYPES[e.dtype].itemsize)


class Writer:
  """Writes a safetensors file tensor by tensor, atomically.

  The layout (header and offsets) is fixed up front, tensors aligned as
  `aligned_order` lays them out; `write` and `copy` then put each tensor's
  bytes at its offset, in any order, so memory holds one tensor at a time.
  The bytes go to a temporary file beside `path` (`files.AtomicFile`), which
  is renamed to `path` only when every tensor has been written and `close()`
  is called; on any error (or `abort()`) the temporary file is removed and
  `path` is left as it was.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "out.safetensors")
    >>> with Writer(path, [Entry("w", "F32", (2, 2))], {}) as w:
    ...   w.write("w", np.ones((2, 2), np.float32))
    >>> [t.name for t in read_header(path).tensors]
    ['w']
    >>> os.remove(path); os.rmdir(os.path.dirname(path))
  """

  def __init__(self, path: str, entries: Iterable[Entry], metadata: dict[str, str]):
    self.path = path
    ordered = aligned_order(list(entries))
    header = encode_header(path, ordered, metadata)
    self._slots: dict[str, tuple[Entry, int]] = {}
    pos = len(header)
    for e in ordered:
      if e.name in self._slots:
        raise CheckpointError(f"{path}: tensor {e.name!r} declared twice")
      self._slots[e.name] = (e, pos)
      pos += e.nbytes
    self._written: set[str] = set()
    self._parts: dict[str, int] = {}  # bytes written so far of tensors written in parts
    self._file = AtomicFile(path, "wb")
    self._f = self._file.file
    try:
      self._f.write(header)
    except BaseException:
      self.abort()
      raise

  def _seek(self, name: str, nbytes: int) -> None:
    slot = self._slots.get(name)
    if slot is None or name in self._written or name in self._parts:
      why = "not declared" if slot is None else "written twice"
      raise CheckpointError(f"{self.path}: tensor {name!r} {why}")
    entry, offset = slot
    if nbytes != entry.nbytes:
      raise CheckpointError(f"tensor {name!r}: {nbytes} bytes given, {entry.dtype} "
                            f"{list(entry.shape)} needs {entry.nbytes}")
    self._written.add(name)
    self._f.seek(offset)

  def write(self, name: str, array: np.ndarray) -> None:
    """Writes one tensor's values (its shape must match its entry)."""
    slot = self._slots.get(name)
    if slot is not None and tuple(array.shape) != slot[0].shape:
      raise CheckpointError(f"tensor {name!r}: shape {list(array.shape)} given, "
                            f"{list(slot[0].shape)} declared")
    data = np.ascontiguousarray(array)
    self._seek(name, data.nbytes)
    self._f.write(memoryview(data.reshape(-1).view(np.uint8)))

  def write_part(self, name: str, array: np.ndarray) -> None:
    """Writes the next piece of one tensor's values, in row-major order.

    A tensor written in parts is complete once its pieces add up to its
    bytes; pieces of different tensors may alternate.
    """
    slot = self._slots.get(name)
    if slot is None or name in self._written:
      why = "not declared" if slot is None else "written twice"
      raise CheckpointError(f"{self.path}: tensor {name!r} {why}")
    entry, offset = slot
    data = np.ascontiguousarray(array)
    done = self._parts.get(name, 0)
    if data.dtype.itemsize != DTYPES[entry.dtype].itemsize:
      raise CheckpointError(f"tensor {name!r}: {data.dtype} given, {entry.dtype} declared")
    if done + data.nbytes > entry.nbytes:
      raise CheckpointError(f"tensor {name!r}: {done + data.nbytes} bytes given, "
                            f"{entry.dtype} {list(entry.shape)} needs {entry.nbytes}")
    self._f.seek(offset + done)
    self._f.write(memoryview(data.reshape(-1).view(np.uint8)))
    done += data.nbytes
    if done == entry.nbytes:
      self._parts.pop(name, None)
      self._written.add(name)
    else:
      self._parts[name] = done

  def nbytes(self, name: str) -> int:
    """The bytes of the declared tensor `name`."""
    return self._slots[name][0].nbytes

  def copy(self, name: str, f: BinaryIO, info: TensorInfo) -> None:
    """Writes one tensor as the raw bytes of `info` in the open file `f`."""
    self._seek(name, info.nbytes)
    copy_bytes(f, info, self._f.write)

  def close(self, final: bool = False) -> None:
    """Finishes the file and renames it into place (`final`: it is the output itself)."""
    missing = [n for n in self._slots if n not in self._written]
    if missing:
      self.abort()
      raise CheckpointError(f"{self.path}: {len(missing)} tensors not written ({missing[0]}, ...)")
    self._file.commit(final)

  def abort(self) -> None:
    """Drops the temporary file; `path` is untouched."""
    self._file.discard()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_file(path: str, tensors: dict[str, np.ndarray],
               metadata: dict[str, str] | None = None) -> None:
  """Writes bfloat16, float16 and float32 arrays as one safetensors file, atomically."""
  entries = [Entry(name, tag_of(a.dtype), a.shape) for name, a in tensors.items()]
  with Writer(path, entries, metadata or {}) as w:
    for name, a in tensors.items():
      w.write(name, a)
