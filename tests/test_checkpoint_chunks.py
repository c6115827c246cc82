"""Large tensors go through quantize, dequantize and inspect in pieces of rows, with the
same bytes out as when they go whole."""

from __future__ import annotations

import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from fp8jax.checkpoint import chunks, safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.inspection import inspect_checkpoint
from fp8jax.checkpoint.pipeline import dequantize_checkpoint, quantize_checkpoint
from fp8jax.checkpoint.selection import Selection
from fp8jax.checkpoint.stored import WeightLayout

_WHOLE = 1 << 40
_SMALL = 3000  # bytes: every tensor below goes in several pieces
_CASES = [("e4m3fn", "tensor"), ("e5m2", "tensor"), ("e4m3fn", "axis"), ("e5m2", "block:128"),
          ("e4m3fn", "block:128x128"), ("e5m2", "block:32x64"), ("e4m3fn", "mx"),
          ("e2m1fn", "mx")]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((300, 260)) * 3
  x[7, 11], x[250, 3] = np.inf, np.nan
  tensors = {"a.weight": x.astype(ml_dtypes.bfloat16),
             "b.weight": rng.standard_normal((5, 70, 40)).astype(np.float32),
             "c.weight": (rng.standard_normal((2, 3, 40, 24)) * 1e-3).astype(np.float16),
             "d.norm": rng.standard_normal((4000,)).astype(np.float16)}
  path = str(tmp_path_factory.mktemp("chunks") / "m.safetensors")
  st.write_file(path, tensors)
  return path


def _run(monkeypatch, chunk: int, src: str, out: str, layout: WeightLayout, **kw):
  monkeypatch.setattr(chunks, "CHUNK_BYTES", chunk)
  sel = Selection(include=("d.*",)) if layout.spec.kind == "tensor" else None
  q, back = out + "-q.safetensors", out + "-back.safetensors"
  summary = quantize_checkpoint(src, q, layout, selection=sel, force=True, sqnr=True, **kw)
  dequantize_checkpoint(q, back, force=True)
  with open(q, "rb") as f, open(back, "rb") as g:
    return f.read(), g.read(), [t.sqnr_db for t in summary.tensors]


@pytest.mark.parametrize("fmt,scaling", _CASES)
def test_pieces_give_the_same_bytes_as_whole_tensors(model, tmp_path, monkeypatch, fmt, scaling):
  layout = WeightLayout.parse(fmt, scaling)
  q1, back1, sqnr1 = _run(monkeypatch, _WHOLE, model, str(tmp_path / "whole"), layout)
  q2, back2, sqnr2 = _run(monkeypatch, _SMALL, model, str(tmp_path / "pieces"), layout)
  assert q1 == q2
  assert back1 == back2
  # The SQNR adds the pieces' sums in float64: equal to rounding.
  assert [s is None for s in sqnr1] == [s is None for s in sqnr2]
  assert [s for s in sqnr1 if s is not None] == pytest.approx(
      [s for s in sqnr2 if s is not None], rel=1e-6)


def test_the_pieces_are_really_pieces(monkeypatch):
  monkeypatch.setattr(chunks, "CHUNK_BYTES", _SMALL)
  pieces = chunks.split((300, 260), 2, 128)
  assert [p.shape for p in pieces] == [(128, 260), (128, 260), (44, 260)]
  assert [p.start for p in pieces] == [0, 128 * 260, 256 * 260]
  assert [p.shape for p in chunks.split((2, 3, 40, 24), 2)] == [(1, 40, 24)] * 6
  assert [p.shape for p in chunks.split((4000,), 2)] == [(1500,), (1500,), (1000,)]
  assert chunks.split((300, 260), 2 ** 20, 1) is not None
  monkeypatch.setattr(chunks, "CHUNK_BYTES", _WHOLE)
  assert chunks.split((300, 260), 2, 128) is None
  assert chunks.split((), 4) is None and chunks.split((0, 5), 4) is None


def test_stochastic_rounding_goes_whole_with_the_same_bits(model, tmp_path, monkeypatch):
  # Its random bits come from each element's index in the whole tensor.
  layout = WeightLayout.parse("e4m3fn", "block:128x128")
  whole = _run(monkeypatch, _WHOLE, model, str(tmp_path / "w"), layout, rounding="stochastic",
               seed=3)
  pieces = _run(monkeypatch, _SMALL, model, str(tmp_path / "p"), layout, rounding="stochastic",
                seed=3)
  assert whole == pieces


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz", "e5m2", "e3m4", "e2m3fn", "e2m1fn"])
@pytest.mark.parametrize("n,dtype", [(1000, jnp.float32), (1000, jnp.bfloat16),
                                     (1 << 18, jnp.bfloat16), (1 << 18, jnp.float16)])
def test_a_static_scale_from_the_amax_encodes_as_tensor_scaling(fmt, n, dtype):
  # What per-tensor pieces rely on: the scale of the whole tensor's amax, given as a
  # static scale, gives the codes of scaling="tensor" (also through the bf16/f16 table).
  x = (np.random.default_rng(n).standard_normal(n) * 7).astype(np.float32)
  x[:3] = [0.0, np.inf, np.nan]
  x = jnp.asarray(x, dtype)
  dynamic = fp8jax.quantize(x, fmt, scaling="tensor")
  scale = fp8jax.scale_from_amax(fp8jax.amax(x), fmt)
  static = fp8jax.quantize(x, fmt, scaling=scale)
  np.testing.assert_array_equal(np.asarray(dynamic.bits), np.asarray(static.bits))
  assert np.asarray(dynamic.scale) == np.asarray(scale)


def test_inspect_reports_the_same_in_pieces(model, monkeypatch):
  scalings = ("none", "tensor", "block:128x128", "mx")
  formats = ("e4m3fn",)

  def report(chunk):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", chunk)
    return list(inspect_checkpoint(model, formats=formats, scalings=scalings))

  whole, pieces = report(_WHOLE), report(_SMALL)
  assert len(whole) == len(pieces) > 12
  for a, b in zip(whole, pieces, strict=True):
    if a.startswith("    e"):  # a row: counts exactly, SQNR (2 decimals) to rounding
      assert a.split()[:-1] == b.split()[:-1]
      assert float(a.split()[-1]) == pytest.approx(float(b.split()[-1]), abs=0.011)
    else:
      assert a == b


def test_writer_takes_a_tensor_in_parts(tmp_path):
  path = str(tmp_path / "p.safetensors")
  w = st.Writer(path, [st.Entry("a", "F32", (3, 2)), st.Entry("b", "U8", (4,))], {})
  w.write_part("a", np.arange(2, dtype=np.float32))
  w.write_part("b", np.arange(3, dtype=np.uint8))
  w.write_part("a", np.arange(2, 6, dtype=np.float32))
  with pytest.raises(CheckpointError, match="5 bytes given"):
    w.write_part("b", np.arange(2, dtype=np.uint8))
  with pytest.raises(CheckpointError, match="written twice"):
    w.write("a", np.zeros((3, 2), np.float32))
  with pytest.raises(CheckpointError, match="not written"):
    w.close()
  assert not os.path.exists(path)

  with st.Writer(path, [st.Entry("a", "F32", (3, 2)), st.Entry("b", "U8", (4,))], {}) as w:
    w.write_part("a", np.arange(4, dtype=np.float32))
    w.write("b", np.arange(4, dtype=np.uint8))
    w.write_part("a", np.arange(4, 6, dtype=np.float32))
    with pytest.raises(CheckpointError, match="written twice"):
      w.write_part("a", np.arange(1, dtype=np.float32))
  h = st.read_header(path)
  with open(path, "rb") as f:
    a = st.read_tensor(f, h.tensors[0])
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(3, 2))
    np.testing.assert_array_equal(st.read_part(f, h.tensors[0], 2, (2, 2)),
                                  np.arange(2, 6, dtype=np.float32).reshape(2, 2))
    with pytest.raises(CheckpointError, match="past its end"):
      st.read_part(f, h.tensors[0], 5, (2,))


@pytest.mark.parametrize("scaling,stored", [("tensor", "compressed-tensors"),
                                            ("tensor", "vllm"), ("axis", "compressed-tensors"),
                                            ("block:128x128", "vllm")])
def test_a_model_folder_in_a_stacks_layout_gives_the_same_bytes_in_pieces(tmp_path, monkeypatch,
                                                                          scaling, stored):
  import json

  rng = np.random.default_rng(2)
  src = tmp_path / "in"
  src.mkdir()
  st.write_file(str(src / "model.safetensors"),
                {"l.0.q_proj.weight": (rng.standard_normal((300, 256)) * 3).astype(np.float32)})
  (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
  layout = WeightLayout.parse("e4m3fn", scaling)
  outs = []
  for chunk in (_WHOLE, _SMALL * 10):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", chunk)
    out = tmp_path / f"q{chunk}"
    quantize_checkpoint(str(src), str(out), layout, stored=stored)
    outs.append((out / "model.safetensors").read_bytes())
  assert outs[0] == outs[1]
