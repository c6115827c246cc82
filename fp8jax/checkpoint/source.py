"""Finding and validating a checkpoint's files: a single file, an index, or a folder.

A checkpoint is a single `.safetensors` file, a sharded one given by its
`*.safetensors.index.json`, or a folder of them (a Hugging Face model folder
when a `config.json` is beside them). Every header, the index and
`config.json` are read and checked here, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import os
import stat
from typing import Any

from fp8jax.checkpoint import safetensors_io as st, strict_json
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.safetensors_io import Header, TensorInfo

INDEX_SUFFIX = ".safetensors.index.json"
CONFIG = "config.json"


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

  Example:
    >>> import os, shutil, tempfile
    >>> from fp8jax.checkpoint.safetensors_io import write_file
    >>> folder = tempfile.mkdtemp()
    >>> for i, name in enumerate(shard_names(2)):
    ...   write_file(os.path.join(folder, name), {f"w{i}": np.zeros((2, 2), np.float32)})
    >>> ckpt = open_checkpoint(folder)
    >>> ckpt.kind, [t.name for t in ckpt.tensors]
    ('folder', ['w0', 'w1'])
    >>> shutil.rmtree(folder)
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


def shard_names(n: int, stem: str = "model") -> Sequence[str]:
  """Hugging Face shard file names: `model-00001-of-00002.safetensors`, ..."""
  return [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def read_json(path: str) -> Any:
  """Reads a JSON file strictly (`strict_json.loads`); a `CheckpointError` names the file when it cannot.

  Only a regular file is read: a named pipe would block, a device never end.
  """
  try:
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
      if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        raise CheckpointError(f"{path}: not a regular file")
      raw = f.read()
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
  return strict_json.loads(raw, path)


def _open_folder(path: str) -> Checkpoint:
  names = sorted(os.listdir(path))
  indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
  if len(indexes) > 1:
    raise CheckpointError(f"{path}: more than one index file ({', '.join(indexes)})")
  config = None
  if os.path.isfile(os.path.join(path, CONFIG)):
    config = read_json(os.path.join(path, CONFIG))
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


def _read_index(path: str) -> tuple[dict[str, Any], dict[str, str]]:
  index = read_json(path)
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) and os.path.basename(v) == v and v
      for k, v in weight_map.items()):
    raise CheckpointError(f"{path}: not a safetensors index (needs a weight_map from tensor "
                          "names to shard file names)")
  if not isinstance(index.get("metadata") or {}, dict):
    raise CheckpointError(f"{path}: the index's metadata must be a JSON object (got "
                          f"{type(index['metadata']).__name__})")
  rest = {k: v for k, v in index.items() if k != "weight_map"}
  return rest, weight_map


def _headers_for_index(index_path: str, folder: str,
                       weight_map: dict[str, str]) -> tuple[Header, ...]:
  files = sorted(set(weight_map.values()))
  headers = tuple(st.read_header(os.path.join(folder, f)) for f in files)
  listed: dict[str, set[str]] = {f: set() for f in files}
  for name, f in weight_map.items():
    listed[f].add(name)
  for f, h in zip(files, headers, strict=True):
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
