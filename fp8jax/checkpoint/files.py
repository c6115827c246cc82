"""Writing files and folders so that they appear complete or not at all.

Everything is written under a temporary name beside its target (so on the
same file system) and renamed into place only when complete. A file
replaces its target with `os.replace`, atomic on POSIX. A folder that
replaces a folder is swapped with it in one step (`exchange`: Linux's
`renameat2(RENAME_EXCHANGE)`), so that the target holds the complete old
folder or the complete new one at every moment, whatever fails or is
killed; the old one, now under the temporary name, is removed afterwards.
Where that swap is unavailable (another system, or a file system without
it), replacing an existing folder is refused before any work
(`can_exchange`) rather than done in two renames with a moment between
them when there is no folder at all.

Every temporary is recorded from its creation until it is renamed or
removed, so that an interrupt that lands between two statements leaves
nothing behind either (`remove_temporaries`). An error or Ctrl-C part-way
leaves the target as it was and no temporary file or folder behind.

New files and folders get the permissions `open` and `os.mkdir` give (0666
and 0777 less the umask), not the owner-only ones of `tempfile.mkstemp`, so
that a written checkpoint can be shared like any other file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
import sys
from typing import IO, Any

from fp8jax.checkpoint import interrupts

_ATTEMPTS = 100
_temporaries: set[str] = set()
"""The temporaries created and not yet renamed into place or removed."""


def _temp_name(path: str, suffix: str) -> str:
  """A new name beside `path`: `.NAME.RANDOM.SUFFIX` (hidden, and plainly not the target)."""
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.{secrets.token_hex(4)}{suffix}")


def _create(path: str, suffix: str, make: Callable[[str], Any]) -> tuple[str, Any]:
  """Creates a new temporary file or folder beside `path` with `make(name)`, and records it.

  Returns its name and what `make` returned. `make` must fail with
  `FileExistsError` on a name that exists, so that nothing is overwritten.
  """
  for _ in range(_ATTEMPTS):
    name = _temp_name(path, suffix)
    with interrupts.held():
      try:
        made = make(name)
      except FileExistsError:
        continue
      _temporaries.add(name)
    return name, made
  raise FileExistsError(f"no free temporary name beside {path}")


def _remove(name: str) -> None:
  """Removes a temporary file, folder or link (never what a link points to), if it is there."""
  if os.path.isdir(name) and not os.path.islink(name):
    shutil.rmtree(name, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(name)
  _temporaries.discard(name)


def remove_temporaries() -> None:
  """Removes every temporary still recorded: what an interrupt may have left half-way."""
  for name in sorted(_temporaries):
    _remove(name)


def _libc_renameat2() -> Callable[..., int] | None:
  """The C library's `renameat2`, or None (not Linux, or a C library without it)."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    f = ctypes.CDLL(None, use_errno=True).renameat2
  except (OSError, AttributeError):
    return None
  f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
  f.restype = ctypes.c_int
  return f


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: str, b: str) -> None:
  """Swaps the names `a` and `b` (both must exist) in one atomic step.

  Raises:
    OSError: the swap is unavailable here (ENOSYS, or EINVAL from a file
      system without it) or fails; nothing is changed then.
  """
  if _RENAMEAT2 is None:
    raise OSError(errno.ENOSYS, "renameat2 is not available", a)
  if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), a, None, b)


_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def can_exchange(path: str) -> bool:
  """Whether folders beside `path` can be swapped with `exchange` (tried on two empty ones).

  Raises:
    OSError: the folder beside `path` cannot be written at all.
  """
  made = []
  try:
    for _ in range(2):
      made.append(_create(path, ".tmp", lambda name: os.mkdir(name, 0o700))[0])
    exchange(*made)
    return True
  except OSError as e:
    if e.errno in _UNSUPPORTED:
      return False
    raise
  finally:
    for name in made:
      _remove(name)


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
      _remove(self._tmp)
      raise

  def commit(self, final: bool = False) -> None:
    """Flushes the file to disk and renames it to `path`; on failure discards it.

    Args:
      final: `path` is the output itself, not a file inside a staged
        folder (see `interrupts.committing`).
    """
    try:
      self.file.flush()
      os.fsync(self.file.fileno())
      self.file.close()
      with interrupts.committing(final):
        os.replace(self._tmp, self.path)
        _temporaries.discard(self._tmp)
    except BaseException:
      self.discard()
      raise

  def discard(self) -> None:
    """Closes and removes the temporary file (again is harmless)."""
    try:
      self.file.close()
    finally:
      _remove(self._tmp)


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
  """A folder built under a temporary name beside `path`, put in place when complete.

  An existing `path` is replaced only once the block has succeeded, by
  swapping the two in one step (`exchange`; check `can_exchange` before
  any work), so `path` is never missing; the old folder is then removed.
  If the block raises, the temporary folder is removed and `path` is
  untouched.

  Yields:
    The temporary folder to fill.
  """
  stage, _ = _create(path, ".tmp", lambda name: os.mkdir(name, 0o777))
  try:
    yield stage
    with interrupts.committing(final=True):
      if os.path.lexists(path):
        exchange(stage, path)  # `stage` now names the old folder
      else:
        os.rename(stage, path)
  finally:
    _remove(stage)  # the unfinished folder, or the old one after the swap
