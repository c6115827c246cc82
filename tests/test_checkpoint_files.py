"""`atomic_write` and `staged_folder`: the target appears complete or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from fp8jax.checkpoint.files import atomic_write, staged_folder, write_json


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_the_target_only_on_success(tmp_path):
  path = tmp_path / "a.txt"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with atomic_write(str(path)) as f:
      f.write("half")
      raise RuntimeError("stop")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["a.txt"]  # no temporary file left
  with atomic_write(str(path)) as f:
    f.write("new")
  assert path.read_text() == "new"
  assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_write_gives_the_permissions_open_gives(tmp_path):
  plain = tmp_path / "plain.bin"
  with open(plain, "wb") as f:
    f.write(b"x")
  with atomic_write(str(tmp_path / "atomic.bin"), "wb") as f:
    f.write(b"x")
  assert _mode(tmp_path / "atomic.bin") == _mode(plain)


def test_write_json_is_indented_with_a_final_newline(tmp_path):
  path = tmp_path / "c.json"
  write_json(str(path), {"a": [1, 2]})
  assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_staged_folder_replaces_an_existing_folder_only_when_complete(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.txt").write_text("old")
  with pytest.raises(KeyboardInterrupt):
    with staged_folder(str(out)) as stage:
      with open(os.path.join(stage, "new.txt"), "w") as f:
        f.write("new")
      raise KeyboardInterrupt
  assert os.listdir(out) == ["old.txt"]
  assert os.listdir(tmp_path) == ["out"]
  with staged_folder(str(out)) as stage:
    with open(os.path.join(stage, "new.txt"), "w") as f:
      f.write("new")
  assert os.listdir(out) == ["new.txt"]
  assert os.listdir(tmp_path) == ["out"]
  os.mkdir(tmp_path / "plain")
  assert _mode(out) == _mode(tmp_path / "plain")
