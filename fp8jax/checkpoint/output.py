"""Where a converted checkpoint goes: OUT checked against IN, and staged until complete.

A single-file output is written by `safetensors_io.Writer`, which itself
writes to a temporary name beside OUT and renames it; a folder output is
built in a temporary folder beside OUT (`files.staged_folder`) and swapped
in. An existing OUT is replaced only with `force`, and then only once the
new one is complete. OUT may not be IN, hold IN, lie inside an IN folder,
or be a mount point.

A model folder's other files (tokenizer, generation config, ...) are
copied as they are, and only what can be copied safely: regular files,
folders, and symbolic links whose target lies inside the model folder,
which are recreated as relative links to the same place in OUT. A link
that leads out of the folder (or nowhere) and a named pipe, socket or
device are refused before any work, naming the entry: copying what such a
link points to could put a file from elsewhere on the machine (a key, a
password file, a whole tree) into OUT, which is made to be shared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import dataclasses
import os
import shutil
import stat

from fp8jax.checkpoint import interrupts
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.files import can_exchange, staged_folder
from fp8jax.checkpoint.source import Checkpoint

_COPY_CHUNK = 16 * 2**20


def _same_or_inside(a: str, b: str) -> bool:
  """Whether path a is b or lies inside b."""
  a, b = os.path.realpath(a), os.path.realpath(b)
  return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def _same_path(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b)


def check_out(ckpt: Checkpoint, out: str, force: bool) -> None:
  """Checks that `out` may receive the conversion of `ckpt`.

  Raises:
    CheckpointError: `out` is or holds IN, or lies inside an IN folder; it
      exists and `force` is off, or it exists as a file where a folder goes
      (or the reverse), or it is a mount point, or it is a folder that this
      system cannot swap in one step; its parent folder is missing.
  """
  is_dir = ckpt.kind != "file"
  sources = [h.path for h in ckpt.headers] + [ckpt.path]
  inside = _same_or_inside if ckpt.kind == "folder" else _same_path
  if any(_same_or_inside(s, out) for s in sources) or (is_dir and inside(out, ckpt.folder)):
    raise CheckpointError(f"OUT {out} is IN {ckpt.path} (or holds it); choose another OUT")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise CheckpointError(f"{parent}: no such folder for OUT")
  if not os.path.lexists(out):
    return
  if not force:
    raise CheckpointError(f"force is needed to replace {out}, which exists", param="force")
  if is_dir != os.path.isdir(out):
    raise CheckpointError(f"{out} exists and is {'not ' if is_dir else ''}a folder; "
                          "remove it first")
  if os.path.ismount(out):
    raise CheckpointError(f"{out} is a mount point, which cannot be replaced; choose a new "
                          "folder inside it")
  if is_dir and not can_exchange(out):
    raise CheckpointError(f"force cannot replace the folder {out} in one step on this system "
                          "(no renameat2 RENAME_EXCHANGE); remove it first", param="force")


@contextlib.contextmanager
def staged_output(ckpt: Checkpoint, out: str, force: bool) -> Iterator[Callable[[str], str]]:
  """Checks `out` (`check_out`), then yields `path(name)`: where output file `name` goes.

  For a folder output, `path(name)` lies in the staging folder, put in
  place as `out` when the block succeeds and removed when it fails; for a
  single file it is `out` itself, which the safetensors writer replaces
  atomically.
  """
  check_out(ckpt, out, force)
  interrupts.starting()
  if ckpt.kind == "file":
    yield lambda name: out
    return
  with staged_folder(out) as stage:
    yield lambda name: os.path.join(stage, name)


@dataclasses.dataclass(frozen=True)
class OtherFile:
  """One entry of a model folder to copy into OUT.

  Attributes:
    name: its path relative to the folder.
    kind: "file", "folder" or "link".
    link: for a link, the relative target to recreate (inside the folder).
  """

  name: str
  kind: str
  link: str | None = None


def _special(mode: int) -> str:
  if stat.S_ISFIFO(mode):
    return "a named pipe"
  if stat.S_ISSOCK(mode):
    return "a socket"
  if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
    return "a device"
  return "not a regular file"


def other_files(ckpt: Checkpoint, skip: set[str]) -> list[OtherFile]:
  """The entries of a model folder to copy, checked before any work (folders before their files).

  Args:
    ckpt: a folder checkpoint.
    skip: top-level names written by the conversion itself (shards, index, config).

  Raises:
    CheckpointError: a link whose target is missing or outside the folder,
      or a named pipe, socket or device, anywhere in the folder.
  """
  root = os.path.realpath(ckpt.folder)
  found: list[OtherFile] = []
  pending = [""]
  while pending:
    rel_dir = pending.pop()
    with os.scandir(os.path.join(ckpt.folder, rel_dir)) as it:
      entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
      rel = os.path.join(rel_dir, entry.name)
      if not rel_dir and entry.name in skip:
        continue
      mode = entry.stat(follow_symlinks=False).st_mode
      if stat.S_ISLNK(mode):
        found.append(OtherFile(rel, "link", _link_inside(entry.path, root, rel)))
      elif stat.S_ISDIR(mode):
        found.append(OtherFile(rel, "folder"))
        pending.append(rel)
      elif stat.S_ISREG(mode):
        found.append(OtherFile(rel, "file"))
      else:
        raise CheckpointError(f"{entry.path} is {_special(mode)}; a model folder can hold only "
                              "files, folders and links within it")
  return found


def _link_inside(path: str, root: str, rel: str) -> str:
  """The relative link that leads from `rel` to the same target, which must lie inside `root`."""
  target = os.path.realpath(path)
  if not os.path.exists(target) or not _same_or_inside(target, root):
    where = "to nothing" if not os.path.exists(target) else "out of the model folder"
    raise CheckpointError(f"{path} is a link {where} ({os.readlink(path)}); copy what it points "
                          "to into the folder, or remove it")
  return os.path.relpath(target, os.path.join(root, os.path.dirname(rel)))


def copy_others(folder: str, others: list[OtherFile], path: Callable[[str], str]) -> None:
  """Copies the entries `other_files` listed: folders, files (contents and permissions), links."""
  for o in others:
    interrupts.check()
    src, dst = os.path.join(folder, o.name), path(o.name)
    if o.kind == "folder":
      os.mkdir(dst)
    elif o.kind == "link":
      os.symlink(o.link, dst)
    else:
      _copy_file(src, dst)
  for o in reversed(others):  # after their contents, so that their times are kept
    if o.kind == "folder":
      shutil.copystat(os.path.join(folder, o.name), path(o.name))


def _copy_file(src: str, dst: str) -> None:
  """Copies a regular file; refuses whatever else has taken its place since it was listed."""
  fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  with open(fd, "rb") as f:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      raise CheckpointError(f"{src} is no longer a regular file")
    with open(dst, "xb") as g:
      shutil.copyfileobj(f, g, _COPY_CHUNK)
  shutil.copystat(src, dst)
