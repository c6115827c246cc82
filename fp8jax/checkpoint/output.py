"""Where a converted checkpoint goes: OUT checked against IN, and staged until complete.

A single-file output is written by `safetensors_io.Writer`, which itself
writes to a temporary name beside OUT and renames it; a folder output is
built in a temporary folder beside OUT (`files.staged_folder`) and renamed.
An existing OUT is replaced only with `force`, and then only once the new
one is complete. OUT may not be IN, hold IN, or lie inside an IN folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import os
import shutil

from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.files import staged_folder
from fp8jax.checkpoint.source import Checkpoint


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
      (or the reverse); its parent folder is missing.
  """
  is_dir = ckpt.kind != "file"
  sources = [h.path for h in ckpt.headers] + [ckpt.path]
  inside = _same_or_inside if ckpt.kind == "folder" else _same_path
  if any(_same_or_inside(s, out) for s in sources) or (is_dir and inside(out, ckpt.folder)):
    raise CheckpointError(f"OUT {out} is IN {ckpt.path} (or holds it); choose another OUT")
  if os.path.lexists(out):
    if not force:
      raise CheckpointError(f"force is needed to replace {out}, which exists", param="force")
    if is_dir != os.path.isdir(out):
      raise CheckpointError(f"{out} exists and is {'not ' if is_dir else ''}a folder; "
                            "remove it first")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise CheckpointError(f"{parent}: no such folder for OUT")


@contextlib.contextmanager
def staged_output(ckpt: Checkpoint, out: str, force: bool) -> Iterator[Callable[[str], str]]:
  """Checks `out` (`check_out`), then yields `path(name)`: where output file `name` goes.

  For a folder output, `path(name)` lies in the staging folder, renamed to
  `out` when the block succeeds and removed when it fails; for a single
  file it is `out` itself, which the safetensors writer replaces atomically.
  """
  check_out(ckpt, out, force)
  if ckpt.kind == "file":
    yield lambda name: out
    return
  with staged_folder(out) as stage:
    yield lambda name: os.path.join(stage, name)


def copy_others(ckpt: Checkpoint, path: Callable[[str], str], skip: set[str]) -> None:
  """Copies a folder's other files (tokenizer, generation config, ...) unchanged."""
  for name in sorted(os.listdir(ckpt.folder)):
    if name in skip:
      continue
    src = os.path.join(ckpt.folder, name)
    if os.path.isdir(src):
      shutil.copytree(src, path(name), symlinks=True)
    else:
      shutil.copy2(src, path(name))
