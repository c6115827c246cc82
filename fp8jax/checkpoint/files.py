"""Writing files and folders so that they appear complete or not at all.

Everything is written under a temporary name beside its target (so on the
same file system) and renamed into place only when complete; `os.replace`
and `os.rename` are atomic there. An error or Ctrl-C part-way leaves the
target as it was and no temporary file or folder behind.

New files and folders get the permissions `open` and `os.mkdir` give (0666
and 0777 less the umask), not the owner-only ones of `tempfile.mkstemp`, so
that a written checkpoint can be shared like any other file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import json
import os
import secrets
import shutil
from typing import IO, Any

_ATTEMPTS = 100


def _temp_name(path: str, suffix: str) -> str:
  """A new name beside `path`: `.NAME.RANDOM.SUFFIX` (hidden, and plainly not the target)."""
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.{secrets.token_hex(4)}{suffix}")


def _create(path: str, suffix: str, make: Callable[[str], Any]) -> tuple[str, Any]:
  """Creates a new temporary file or folder beside `path` with `make(name)`.

  Returns its name and what `make` returned. `make` must fail with
  `FileExistsError` on a name that exists, so that nothing is overwritten.
  """
  for _ in range(_ATTEMPTS):
    name = _temp_name(path, suffix)
    try:
      return name, make(name)
    except FileExistsError:
      continue
  raise FileExistsError(f"no free temporary name beside {path}")


class AtomicFile:
  """A file written under a temporary name beside `path`, then renamed to `path`.

  End it with exactly one of `commit()` (flush to disk, rename to `path`)
  and `discard()` (remove it; `path` is untouched). `atomic_write` is the
  usual way in; this class is for writers that outlive one `with` block.

  Attributes:
    path: the target.
    file: the open temporary file.
  """

  def __init__(self, path: str, mode: str = "wb", **open_args: Any):
    self.path = path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    self._tmp, fd = _create(path, ".tmp", lambda name: os.open(name, flags, 0o666))
    try:
      self.file: IO = os.fdopen(fd, mode, **open_args)
    except BaseException:
      os.close(fd)
      os.unlink(self._tmp)
      raise

  def commit(self) -> None:
    """Flushes the file to disk and renames it to `path`; on failure discards it."""
    try:
      self.file.flush()
      os.fsync(self.file.fileno())
      self.file.close()
      os.replace(self._tmp, self.path)
    except BaseException:
      self.discard()
      raise

  def discard(self) -> None:
    """Closes and removes the temporary file (again is harmless)."""
    try:
      self.file.close()
    finally:
      if os.path.exists(self._tmp):
        os.unlink(self._tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_args: Any) -> Iterator[IO]:
  """Opens a temporary file beside `path`; renames it to `path` if the block succeeds.

  Args:
    path: the file to write (an existing one is replaced only on success).
    mode: `open`'s mode, "w" or "wb".
    **open_args: more `open` arguments, such as `encoding`.

  Yields:
    The open temporary file. If the block raises, the file is removed and
    `path` is left as it was.

  Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "notes.txt")
    >>> with atomic_write(path) as f:
    ...   _ = f.write("complete")
    >>> open(path).read(), os.listdir(folder)
    ('complete', ['notes.txt'])
    >>> os.remove(path); os.rmdir(folder)
  """
  target = AtomicFile(path, mode, **open_args)
  try:
    yield target.file
  except BaseException:
    target.discard()
    raise
  target.commit()


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON with a final newline, atomically."""
  with atomic_write(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


@contextlib.contextmanager
def staged_folder(path: str) -> Iterator[str]:
  """A folder built under a temporary name beside `path`, renamed to `path` when complete.

  An existing `path` is replaced only once the block has succeeded (it is
  moved aside, the new folder renamed in, then the old one removed). If the
  block raises, the temporary folder is removed and `path` is untouched.

  Yields:
    The temporary folder to fill.
  """
  stage, _ = _create(path, ".tmp", lambda name: os.mkdir(name, 0o777))
  try:
    yield stage
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  old = None
  if os.path.lexists(path):
    old, _ = _create(path, ".old", lambda name: os.mkdir(name, 0o700))
    os.rename(path, os.path.join(old, "x"))
  os.rename(stage, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
