"""Bad input: one line on stderr, exit status 2, no file. Interrupted writes leave no OUT."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="inputs are written with safetensors.torch")

from fp8jax import cli
from fp8jax.checkpoint import pipeline
from tests import cli_fixtures as fx


@pytest.fixture
def good(tmp_path):
  """A valid checkpoint in a folder of its own, and an empty output folder."""
  src = tmp_path / "in"
  src.mkdir()
  out = tmp_path / "out"
  out.mkdir()
  path = src / "model.safetensors"
  fx.save(str(path), fx.example())
  return path, out


def raw_file(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  n = len(raw) if length is None else length
  path.write_bytes(struct.pack("<Q", n) + raw + data)


def _expect_bad(capsys, argv, message: str, *folders):
  before = [fx.listing(str(f)) for f in folders]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("fp8jax: error: "), err
  assert message in err, err
  assert [fx.listing(str(f)) for f in folders] == before


def test_missing_file(good, capsys):
  src, out = good
  _expect_bad(capsys, ["quantize", str(src.parent / "nope.safetensors"), str(out / "q")],
              "no such file or folder", src.parent, out)


def test_not_a_safetensors_file(good, capsys):
  src, out = good
  bad = src.parent / "notes.safetensors"
  bad.write_text("hello, this is not a checkpoint at all\n")
  _expect_bad(capsys, ["quantize", str(bad), str(out / "q")], "not a safetensors file",
              src.parent, out)


def test_tiny_file(good, capsys):
  src, out = good
  bad = src.parent / "tiny.safetensors"
  bad.write_bytes(b"\x01\x02")
  _expect_bad(capsys, ["quantize", str(bad), str(out / "q")], "shorter than the 8-byte",
              src.parent, out)


def test_truncated_file(good, capsys):
  src, out = good
  bad = src.parent / "cut.safetensors"
  data = src.read_bytes()
  bad.write_bytes(data[: len(data) - 100])
  _expect_bad(capsys, ["quantize", str(bad), str(out / "q")], "truncated", src.parent, out)


def test_truncated_header(good, capsys):
  src, out = good
  bad = src.parent / "cut.safetensors"
  bad.write_bytes(src.read_bytes()[:200])
  _expect_bad(capsys, ["quantize", str(bad), str(out / "q")], "header length", src.parent, out)


@pytest.mark.parametrize("header,message", [
    (b'{"w": {"dtype": "F32", "shape": [2], "data_', "invalid JSON"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "needs 8 bytes"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "leaves a gap"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "needs exactly dtype, shape and data_offsets"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "has shape"),
    ({"__metadata__": {"a": 1}}, "__metadata__ must map strings to strings"),
    ([1, 2], "not an object"),
])
def test_corrupt_header(good, capsys, header, message):
  src, out = good
  bad = src.parent / "bad.safetensors"
  raw_file(bad, header, b"\0" * 8)
  _expect_bad(capsys, ["quantize", str(bad), str(out / "q")], message, src.parent, out)


def test_header_length_beyond_the_file(good, capsys):
  src, _ = good
  bad = src.parent / "bad.safetensors"
  raw_file(bad, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
           length=10**6)
  _expect_bad(capsys, ["inspect", str(bad)], "header length 1000000 does not fit", src.parent)


def test_unknown_dtype(good, capsys):
  src, out = good
  bad = src.parent / "bad.safetensors"
  raw_file(bad, {"w": {"dtype": "F7", "shape": [8], "data_offsets": [0, 8]}}, b"\0" * 8)
  _expect_bad(capsys, ["quantize", str(bad), str(out / "q")], "unsupported dtype 'F7'",
              src.parent, out)


def test_float64_weight_is_an_unsupported_dtype(good, capsys):
  src, out = good
  bad = src.parent / "f64.safetensors"
  fx.save(str(bad), {"w": np.ones((4, 4), np.float64)})
  _expect_bad(capsys, ["quantize", str(bad), str(out / "q")],
              "tensor 'w' has unsupported dtype F64", src.parent, out)


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_glob_matching_nothing(good, capsys, flag):
  src, out = good
  _expect_bad(capsys, ["quantize", str(src), str(out / "q"), flag, "*nothing*"],
              f"{flag} '*nothing*' matches no tensor", src.parent, out)


def test_out_equal_to_in(good, capsys):
  src, out = good
  _expect_bad(capsys, ["quantize", str(src), str(src), "--force"], "is IN", src.parent, out)
  _expect_bad(capsys, ["quantize", str(src.parent), str(src.parent), "--force"], "is IN",
              src.parent, out)
  # An OUT folder holding IN would be removed by --force: refused too.
  _expect_bad(capsys, ["quantize", str(src.parent), str(src.parent.parent), "--force"], "is IN",
              src.parent, out)


def test_existing_out_needs_force(good, capsys):
  src, out = good
  (out / "q.safetensors").write_bytes(b"keep me")
  _expect_bad(capsys, ["quantize", str(src), str(out / "q.safetensors")], "--force is needed",
              src.parent, out)


def test_dequantize_of_a_plain_checkpoint(good, capsys):
  src, out = good
  _expect_bad(capsys, ["dequantize", str(src), str(out / "d")], "is not quantized",
              src.parent, out)


def test_bad_arguments(good, capsys):
  src, out = good
  _expect_bad(capsys, ["quantize", str(src), str(out / "q"), "--scaling", "block:0"],
              "--scaling must be", src.parent, out)
  _expect_bad(capsys, ["quantize", str(src), str(out / "q"), "--format", "e4m3fnuz",
                       "--scaling", "mx"], "--scaling mx needs an MX element format", out)
  _expect_bad(capsys, ["quantize", str(src), str(out / "q"), "--rounding", "stochastic"],
              "--seed is needed for stochastic rounding", out)


def test_errors_from_the_installed_command_are_one_line(good):
  src, out = good
  r = subprocess.run([sys.executable, "-m", "fp8jax", "quantize", str(src.parent / "x"),
                      str(out / "q")], capture_output=True, text=True, timeout=120, check=False)
  assert r.returncode == 2
  assert r.stderr == f"fp8jax: error: {src.parent / 'x'}: no such file or folder\n"
  assert r.stdout == "" and os.listdir(out) == []


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_no_out(tmp_path, monkeypatch, capsys, sharded, exc):
  src_dir = tmp_path / "in"
  src_dir.mkdir()
  if sharded:
    src = fx.save_sharded(str(src_dir), fx.example(), shards=2)
  else:
    src = str(src_dir / "model.safetensors")
    fx.save(src, fx.example())
  out = tmp_path / "out"
  out.mkdir()
  real, calls = pipeline.quantize_tensor, []

  def failing(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # mid-way: two weights written, in the second shard if sharded
      raise exc("simulated failure")
    return real(*args, **kwargs)

  monkeypatch.setattr(pipeline, "quantize_tensor", failing)
  before = fx.listing(str(src_dir))
  target = str(out / ("q" if sharded else "q.safetensors"))
  if exc is KeyboardInterrupt:
    assert cli.main(["quantize", src, target]) == 130
    assert "interrupted" in capsys.readouterr().err
  else:
    with pytest.raises(RuntimeError, match="simulated"):
      cli.main(["quantize", src, target])
  assert len(calls) == 3
  assert os.listdir(out) == []
  assert fx.listing(str(src_dir)) == before


def test_force_replaces_an_out_folder_only_when_the_new_one_is_complete(tmp_path, monkeypatch):
  src = tmp_path / "in"
  src.mkdir()
  fx.save(str(src / "model.safetensors"), {"w": np.ones((8, 16), np.float32)})
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.txt").write_text("old")
  assert cli.main(["quantize", str(src), str(out), "-q"]) == 2
  real = pipeline.quantize_tensor

  def failing(*args, **kwargs):
    raise RuntimeError("simulated failure")

  monkeypatch.setattr(pipeline, "quantize_tensor", failing)
  with pytest.raises(RuntimeError):
    cli.main(["quantize", str(src), str(out), "-q", "--force"])
  assert os.listdir(out) == ["old.txt"]  # the old OUT survives a failed --force
  monkeypatch.setattr(pipeline, "quantize_tensor", real)
  assert cli.main(["quantize", str(src), str(out), "-q", "--force"]) == 0
  assert os.listdir(out) == ["model.safetensors"]
  assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # no staging folders left
