"""Hostile and odd inputs: each is one line on stderr and exit 2 before any work, or is written
so that every reader can read it back; names cannot drive the terminal."""

from __future__ import annotations

import json
import os
import signal
import stat

import numpy as np
import pytest

from fp8jax import cli
from fp8jax.checkpoint import pipeline, safetensors_io as st
from fp8jax.checkpoint.layouts import CODES_SUFFIX, SCALE_SUFFIX
from fp8jax.checkpoint.metadata import KEY
from tests import cli_fixtures as fx

pytest.importorskip("safetensors", reason="outputs are read back with the safetensors library")
pytest.importorskip("torch", reason="inputs are written with safetensors.torch")

DEEP = b"[" * 100_000 + b"]" * 100_000
LONG_INT = "1" * 5000
_CANNOT_HOLD = "which NumPy and torch cannot hold"
_W = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.fixture
def dirs(tmp_path):
  """A folder for inputs and an empty one for outputs."""
  src, out = tmp_path / "in", tmp_path / "out"
  src.mkdir()
  out.mkdir()
  return src, out


@pytest.fixture
def no_work(monkeypatch):
  """Call it to make any tensor conversion from then on fail the test."""
  def started(*args, **kwargs):
    raise AssertionError("the conversion started")

  def forbid() -> None:
    monkeypatch.setattr(pipeline, "quantize_tensor", started)
    monkeypatch.setattr(pipeline, "dequantize_tensor", started)
  return forbid


def _folder(src, config: bytes = b'{"model_type": "llama"}', index: bytes | None = None) -> str:
  """A model folder with one shard, config.json and optionally an index, as raw bytes."""
  fx.save(str(src / "model.safetensors"), {"a.weight": np.ones((4, 8), np.float32)})
  (src / "config.json").write_bytes(config)
  if index is not None:
    (src / "model.safetensors.index.json").write_bytes(index)
  return str(src)


def _quantized(src, tensors: dict[str, np.ndarray], *flags: str) -> str:
  plain, q = str(src / "plain.safetensors"), str(src / "q.safetensors")
  fx.save(plain, tensors)
  assert cli.main(["quantize", plain, q, "-q", *flags]) == 0
  return q


def _with_metadata(path: str, change) -> None:
  """Rewrites a quantized file in place with its fp8jax metadata string changed by `change`."""
  header = st.read_header(path)
  metadata = dict(header.metadata, **{KEY: change(header.metadata[KEY])})
  entries = [st.Entry(t.name, t.dtype, t.shape) for t in header.tensors]
  tmp = path + ".new"
  with open(path, "rb") as f, st.Writer(tmp, entries, metadata) as w:
    for t in header.tensors:
      w.copy(t.name, f, t)
  os.replace(tmp, path)


def _scales(change):
  """A metadata change on the parsed JSON's "tensors"."""
  def apply(raw: str) -> str:
    info = json.loads(raw)
    change(info["tensors"])
    return json.dumps(info)
  return apply


# --- finding 6: headers every reader can read -------------------------------------

def test_non_ascii_text_is_written_as_utf8(dirs):
  from safetensors.torch import save_file
  src, out = dirs
  names = {"modèle.couche.weight": np.ones((4, 8), np.float32), "norme.é": np.ones(4, np.float32)}
  save_file({k: fx.from_numpy(v) for k, v in names.items()}, str(src / "a.safetensors"),
            metadata={"note": "été"})
  q = str(out / "q.safetensors")
  assert cli.main(["quantize", str(src / "a.safetensors"), q, "-q"]) == 0
  with open(q, "rb") as f:
    head = f.read(int.from_bytes(f.read(8), "little"))
  assert f"modèle.couche.weight{SCALE_SUFFIX}".encode() in head and "été".encode() in head
  assert b"\\u00" not in head  # neither the header nor the fp8jax metadata in it escapes
  assert set(fx.load(q)) == {f"modèle.couche.weight{CODES_SUFFIX}",
                             f"modèle.couche.weight{SCALE_SUFFIX}", "norme.é"}


def test_an_output_header_over_the_readers_limit_is_refused_before_any_work(dirs, monkeypatch,
                                                                            capsys, no_work):
  src, out = dirs
  path = src / "a.safetensors"
  fx.save(str(path), {"w": np.ones((4, 8), np.float32)})
  limit = len(path.read_bytes()) - 8 - 4 * 8 * 4  # the input's header fits, the output's does not
  monkeypatch.setattr(st, "MAX_HEADER_BYTES", limit)
  no_work()
  fx.expect_bad(capsys, ["quantize", str(path), str(out / "q.safetensors")],
                f"over the {limit:,} bytes safetensors readers accept", src, out)


@pytest.mark.parametrize("header,message", [
    (b'{"w\\ud800": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}',
     "a lone surrogate \\ud800 is not Unicode text"),
    (b'{"__metadata__": {"a": "\\udfff"}, "w": {"dtype": "F32", "shape": [2, 2], '
     b'"data_offsets": [0, 16]}}', "a lone surrogate \\udfff"),
    ({"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}, _CANNOT_HOLD),
    ({"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}, _CANNOT_HOLD),
    ({"w": {"dtype": "F32", "shape": [2**62, 0], "data_offsets": [0, 0]}}, _CANNOT_HOLD),
    ({"w": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, _CANNOT_HOLD),
], ids=["surrogate-name", "surrogate-metadata", "dim-2^64", "dim-2^63", "bytes-2^64", "65-dims"])
def test_headers_no_reader_could_read_back_are_refused(dirs, capsys, header, message):
  src, out = dirs
  bad = src / "bad.safetensors"
  fx.raw_file(bad, header, b"\0" * (16 if isinstance(header, bytes) else 0))
  fx.expect_bad(capsys, ["quantize", str(bad), str(out / "q")], message, src, out)
  fx.expect_bad(capsys, ["inspect", str(bad)], message, src)


def test_empty_tensors_with_zero_dimensions_still_read(dirs):
  src, out = dirs
  fx.raw_file(src / "e.safetensors", {"w": {"dtype": "F32", "shape": [0, 2**40],
                                            "data_offsets": [0, 0]}})
  assert cli.main(["quantize", str(src / "e.safetensors"), str(out / "q"), "-q"]) == 0


# --- finding 7: scales that are not tensors of their own -----------------------------

_A, _B = "a.weight" + CODES_SUFFIX, "b.weight" + CODES_SUFFIX  # metadata keys: the codes


@pytest.mark.parametrize("change,message", [
    (lambda t: t[_A].update(scale=_A), f"'{_A}' is listed as its own scale"),
    (lambda t: (t[_A].update(scale=_B), t[_B].update(scale=_A)),
     f"the scale of '{_A}' is '{_B}', itself a quantized weight"),
    (lambda t: t[_B].update(scale="a.weight" + SCALE_SUFFIX),
     f"'{_A}' and '{_B}' share the scale 'a.weight{SCALE_SUFFIX}'"),
], ids=["own", "each-other", "shared"])
def test_metadata_scales_must_be_distinct_tensors(dirs, capsys, no_work, change, message):
  src, out = dirs
  q = _quantized(src, {"a.weight": np.ones((4, 8), np.float32),
                       "b.weight": np.ones((4, 8), np.float32)})
  _with_metadata(q, _scales(change))
  no_work()
  fx.expect_bad(capsys, ["dequantize", q, str(out / "d")], message, src, out)
  fx.expect_bad(capsys, ["inspect", q], message, src)


# --- finding 9: one line and exit 2, before any work --------------------------------------

@pytest.mark.parametrize("what", ["header", "index", "config", "metadata"])
@pytest.mark.parametrize("json_text,message", [
    (DEEP, "invalid JSON (nested too deeply)"),
    (b'{"metadata": {"total_size": ' + LONG_INT.encode() + b'}, "version": 1}',
     "invalid JSON (an integer with too many digits)"),
], ids=["deep", "long-int"])
def test_json_nested_too_deeply_or_with_huge_integers(dirs, capsys, no_work, what, json_text,
                                                      message):
  src, out = dirs
  if what == "header":
    fx.raw_file(src / "bad.safetensors", json_text)
    argv = ["quantize", str(src / "bad.safetensors"), str(out / "q")]
  elif what == "metadata":
    q = _quantized(src, {"w": np.ones((4, 8), np.float32)})
    _with_metadata(q, lambda raw: json_text.decode())
    argv = ["dequantize", q, str(out / "d")]
  else:
    _folder(src, **{what: json_text})
    argv = ["quantize", str(src), str(out / "q")]
  no_work()
  fx.expect_bad(capsys, argv, message, src, out)


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}])
def test_a_dtype_that_is_not_a_string(dirs, capsys, dtype):
  src, out = dirs
  fx.raw_file(src / "bad.safetensors", {"w": {"dtype": dtype, "shape": [1],
                                              "data_offsets": [0, 4]}}, b"\0" * 4)
  fx.expect_bad(capsys, ["inspect", str(src / "bad.safetensors")], "unsupported dtype", src)


@pytest.mark.parametrize("metadata", [[1], "x", 3])
def test_index_metadata_that_is_not_an_object(dirs, capsys, no_work, metadata):
  src, out = dirs
  index = {"metadata": metadata, "weight_map": {"a.weight": "model.safetensors"}}
  _folder(src, index=json.dumps(index).encode())
  no_work()
  fx.expect_bad(capsys, ["quantize", str(src), str(out / "q")],
                "the index's metadata must be a JSON object", src, out)


@pytest.mark.parametrize("seed", [str(2**63), str(-(2**63) - 1), str(2**64)])
def test_seeds_out_of_range(dirs, capsys, no_work, seed):
  src, out = dirs
  fx.save(str(src / "a.safetensors"), {"w": np.ones((4, 8), np.float32)})
  no_work()
  fx.expect_bad(capsys, ["quantize", str(src / "a.safetensors"), str(out / "q"), "--rounding",
                         "stochastic", "--seed", seed],
                "--seed must be an integer from -2^63 to 2^63 - 1", src, out)


def test_seeds_at_the_ends_of_the_range_work(dirs):
  src, out = dirs
  fx.save(str(src / "a.safetensors"), {"w": np.ones((4, 8), np.float32)})
  for seed in (2**63 - 1, -(2**63)):
    assert cli.main(["quantize", str(src / "a.safetensors"), str(out / "q"), "-q", "--force",
                     "--rounding", "stochastic", "--seed", str(seed)]) == 0


def test_argument_errors_are_one_line(dirs, capsys):
  src, out = dirs
  with pytest.raises(SystemExit) as info:
    cli.main(["quantize", "a", "b", "--seed", LONG_INT])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("fp8jax: error: argument --seed: invalid ")
  assert len(err) < 200


def test_inspect_of_a_missing_scale_prints_nothing_first(dirs, capsys):
  src, out = dirs
  q = _quantized(src, {"w": np.ones((4, 8), np.float32), "v": np.ones((4, 8), np.float32)})
  _with_metadata(q, _scales(lambda t: t["w" + CODES_SUFFIX].update(scale="gone")))
  fx.expect_bad(capsys, ["inspect", q], "with scale 'gone', but the file lacks one of them", src)
  fx.expect_bad(capsys, ["convert", q, str(out / "c"), "--layout", "compressed-tensors"],
                "with scale 'gone', but the file lacks one of them", src, out)


def test_an_empty_mx_weight_inspects_and_dequantizes(dirs, capsys):
  src, out = dirs
  from fp8jax.checkpoint.metadata import QuantizedTensor, QuantMetadata
  from fp8jax.checkpoint.stored import WeightLayout
  layout = WeightLayout.parse("e2m1fn", "mx")
  meta = QuantMetadata(layout, {"w": QuantizedTensor("F32", "w_scale")})
  path = str(src / "q.safetensors")
  scale_shape = layout.scale_shape((0, 64))
  with st.Writer(path, [st.Entry("w", "U8", (0, 64)), st.Entry("w_scale", "U8", scale_shape)],
                 {KEY: meta.dump()}) as w:
    w.write("w", np.zeros((0, 64), np.uint8))
    w.write("w_scale", np.zeros(scale_shape, np.uint8))
  assert cli.main(["inspect", path]) == 0
  assert "w  U8 [0, 64]  e2m1fn mx (was F32); scale w_scale U8 [0, 2] (empty)" in (
      capsys.readouterr().out)
  assert cli.main(["dequantize", path, str(out / "d.safetensors"), "-q"]) == 0
  assert fx.load(str(out / "d.safetensors"))["w"].shape == (0, 64)


# --- finding 11 -------------------------------------------------------------------------

def test_names_cannot_drive_the_terminal(dirs, capsys):
  src, out = dirs
  name = "w\x1b[2J\nfake: line\u202e"
  fx.raw_file(src / "a.safetensors", {name: _W["w"]}, b"\0" * 16)
  assert cli.main(["inspect", str(src / "a.safetensors"), "--format", "e4m3fn", "--scaling",
                   "tensor"]) == 0
  text = capsys.readouterr().out
  assert "w\\x1b[2J\\nfake: line\\u202e  F32 [2, 2]  amax 0\n" in text
  assert cli.main(["quantize", str(src / "a.safetensors"), str(out / "q"), "-v"]) == 0
  text = capsys.readouterr().out
  assert text.startswith("w\\x1b[2J\\nfake: line\\u202e  F32 [2, 2]  quantized e4m3fn tensor")
  assert "\x1b" not in text and "\u202e" not in text and text.count("\n") == 2


def test_paths_in_errors_cannot_drive_the_terminal(dirs, capsys):
  src, out = dirs
  fx.expect_bad(capsys, ["quantize", str(src / "x\x1b[2J\ny.safetensors"), str(out / "q")],
                "x\\x1b[2J\\ny.safetensors: no such file or folder", src, out)


def test_outputs_follow_the_umask(dirs):
  src, out = dirs
  _folder(src)
  old = os.umask(0o027)
  try:
    assert cli.main(["quantize", str(src), str(out / "q"), "-q"]) == 0
  finally:
    os.umask(old)
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
  assert mode(out / "q") == 0o750
  assert {mode(out / "q" / n) for n in ("model.safetensors", "config.json")} == {0o640}


@pytest.mark.parametrize("name", ["E4M3FN", "float8_e4m3fn", "Float8_E4M3FN"])
def test_format_names_as_the_python_api_reads_them(dirs, name):
  src, out = dirs
  fx.save(str(src / "a.safetensors"), {"w": np.linspace(-3, 3, 32, dtype=np.float32)
                                       .reshape(4, 8)})
  assert cli.main(["quantize", str(src / "a.safetensors"), str(out / "ref"), "-q"]) == 0
  assert cli.main(["quantize", str(src / "a.safetensors"), str(out / "q"), "-q", "--format",
                   name]) == 0
  assert (out / "q").read_bytes() == (out / "ref").read_bytes()


def test_inspect_reads_format_names_as_the_python_api_does(dirs, capsys):
  src, _ = dirs
  fx.save(str(src / "a.safetensors"), {"w": np.ones((4, 8), np.float32)})
  assert cli.main(["inspect", str(src / "a.safetensors"), "--format", "FLOAT8_E5M2",
                   "--scaling", "tensor"]) == 0
  assert "    e5m2         tensor " in capsys.readouterr().out


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
def test_config_with_nan_or_infinity_is_refused(dirs, capsys, no_work, value):
  src, out = dirs
  _folder(src, config=b'{"rope_scaling": ' + value + b"}")
  no_work()
  fx.expect_bad(capsys, ["quantize", str(src), str(out / "q")],
                f"config.json: invalid JSON ({value.decode()} is not JSON)", src, out)


@pytest.mark.parametrize("name,message", [
    ("model.safetensors.index.json", "model.safetensors.index.json: not a regular file"),
    ("config.json", "config.json is a named pipe"),
])
def test_a_named_pipe_for_the_index_or_config_is_refused_not_read(dirs, capsys, name, message):
  src, out = dirs
  fx.save(str(src / "model.safetensors"), {"a.weight": np.ones((4, 8), np.float32)})
  os.mkfifo(src / name)

  def too_long(signum, frame):
    raise TimeoutError("blocked reading a named pipe")

  previous = signal.signal(signal.SIGALRM, too_long)
  signal.alarm(20)
  try:
    fx.expect_bad(capsys, ["quantize", str(src), str(out / "q")], message, out)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
