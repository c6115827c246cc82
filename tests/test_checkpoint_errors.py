"""Library errors name parameters; the command line prints the flags that set them."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

from fp8jax import cli
from fp8jax.checkpoint import safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.inspection import check_plot, inspect_checkpoint
from fp8jax.checkpoint.pipeline import dequantize_checkpoint, quantize_checkpoint
from fp8jax.checkpoint.selection import Selection
from fp8jax.checkpoint.stored import WeightLayout
from fp8jax.cli.commands import FLAGS, error_message

CHECKPOINT = pathlib.Path(__file__).resolve().parents[1] / "fp8jax" / "checkpoint"


def test_no_library_error_names_a_flag():
  for path in sorted(CHECKPOINT.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Raise):
        for c in ast.walk(node):
          if isinstance(c, ast.Constant) and isinstance(c.value, str):
            assert "--" not in c.value, (path.name, c.value)


@pytest.fixture
def src(tmp_path):
  path = str(tmp_path / "a.safetensors")
  st.write_file(path, {"w": np.ones((4, 8), np.float32)})
  return path


def _error(call) -> CheckpointError:
  with pytest.raises(CheckpointError) as info:
    call()
  e = info.value
  assert e.param is None or str(e).startswith(e.param), str(e)
  return e


def test_argument_errors_name_their_parameter(src, tmp_path):
  out = str(tmp_path / "q.safetensors")
  existing = tmp_path / "existing.safetensors"
  existing.write_bytes(b"keep")
  layout = WeightLayout.parse("e4m3fn", "tensor")
  cases = [
      (lambda: WeightLayout.parse("e9m9", "tensor"), "fmt"),
      (lambda: WeightLayout.parse("e4m3fn", "rows"), "scaling"),
      (lambda: WeightLayout.parse("e4m3fnuz", "mx"), "scaling"),
      (lambda: quantize_checkpoint(src, out, layout, rounding="up"), "rounding"),
      (lambda: quantize_checkpoint(src, out, layout, rounding="stochastic"), "seed"),
      (lambda: quantize_checkpoint(src, out, layout, seed=3), "seed"),
      (lambda: quantize_checkpoint(src, out, layout, selection=Selection(include=("x*",))),
       "include"),
      (lambda: quantize_checkpoint(src, out, layout, selection=Selection(exclude=("x*",))),
       "exclude"),
      (lambda: quantize_checkpoint(src, str(existing), layout), "force"),
      (lambda: dequantize_checkpoint(src, out, dtype="f8"), "dtype"),
      (lambda: list(inspect_checkpoint(src, formats=["e8m0fnu"])), "formats"),
      (lambda: list(inspect_checkpoint(src, match=["x*"])), "match"),
      (lambda: check_plot(str(existing), force=False), "force"),
  ]
  for call, param in cases:
    e = _error(call)
    assert e.param == param, str(e)
    assert e.param in FLAGS  # the command line has a flag for it


def test_input_errors_name_no_parameter(tmp_path):
  e = _error(lambda: quantize_checkpoint(str(tmp_path / "none"), str(tmp_path / "q"),
                                         WeightLayout.parse("e4m3fn", "tensor")))
  assert e.param is None


def test_the_command_line_puts_the_flag_in_the_parameter_s_place():
  e = CheckpointError("seed is needed for stochastic rounding, and applies only to it",
                      param="seed")
  assert error_message(e) == "--seed is needed for stochastic rounding, and applies only to it"
  assert error_message(CheckpointError("fmt must be one of e4m3fn (got 'x')", param="fmt")) == (
      "--format must be one of e4m3fn (got 'x')")
  assert error_message(CheckpointError("a.safetensors: no such file")) == (
      "a.safetensors: no such file")


def test_the_command_line_prints_flags(src, tmp_path, capsys):
  assert cli.main(["quantize", src, str(tmp_path / "q"), "--format", "e9m9"]) == 2
  assert capsys.readouterr().err.startswith("fp8jax: error: --format must be one of ")
  assert cli.main(["inspect", src, "--format", "e8m0fnu"]) == 2
  assert capsys.readouterr().err.startswith("fp8jax: error: --format must be signed format ")
  assert cli.main(["inspect", src, "--match", "x*"]) == 2
  assert capsys.readouterr().err == (
      "fp8jax: error: --match 'x*' matches no tensor in the checkpoint\n")


def test_scaling_channel_is_accepted_and_printed_as_axis(src, tmp_path, capsys):
  out = str(tmp_path / "q.safetensors")
  assert cli.main(["quantize", src, out, "--scaling", "channel", "-v"]) == 0
  assert "w  F32 [4, 8]  quantized e4m3fn axis  " in capsys.readouterr().out
  assert cli.main(["inspect", src, "--scaling", "channel", "--format", "e4m3fn"]) == 0
  rows = [line.split() for line in capsys.readouterr().out.splitlines()
          if line.startswith("    e4m3fn")]
  assert [r[1] for r in rows] == ["axis"]
