"""`fp8jax quantize / dequantize / inspect / formats`: round trips checked against the library
and against the safetensors library as an independent reader and writer."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="inputs are written with safetensors.torch")

import fp8jax  # noqa: E402
from fp8jax import cli  # noqa: E402
from fp8jax.checkpoint import safetensors_io as st  # noqa: E402
from fp8jax.checkpoint.layouts import CODES_SUFFIX, SCALE_SUFFIX  # noqa: E402
from fp8jax.checkpoint.stored import WeightLayout  # noqa: E402
from fp8jax.cli import progress  # noqa: E402
from tests import cli_fixtures as fx  # noqa: E402

F8_TORCH = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
TAG_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}


def run(*argv: str) -> None:
  assert cli.main([*argv, "-q"]) == 0


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  folder = tmp_path_factory.mktemp("single")
  tensors = fx.example()
  path = os.path.join(folder, "in.safetensors")
  fx.save(path, tensors)
  return path, tensors


def expected_dequantized(x: np.ndarray, layout: WeightLayout, **kw) -> np.ndarray:
  """The library's own dequantize(quantize(x)), in x's dtype."""
  q = layout.quantize(jnp.asarray(x), **kw)
  return np.asarray(fp8jax.dequantize(q, x.dtype))


def check_quantized(path: str, tensors, layout: WeightLayout, quantized: set[str]):
  """Names, dtypes and shapes of a file in the fp8jax layout, read by safetensors.torch."""
  got = fx.load(path)
  assert set(got) == (set(tensors) - quantized) | {n + CODES_SUFFIX for n in quantized} | {
      n + SCALE_SUFFIX for n in quantized}
  for name, x in tensors.items():
    t = got[name + CODES_SUFFIX if name in quantized else name]
    assert tuple(t.shape) == x.shape, name
    if name in quantized:
      want = F8_TORCH.get(layout.fmt.name, torch.uint8)
      assert t.dtype == want, name
      scale = got[name + SCALE_SUFFIX]
      assert scale.dtype == (torch.uint8 if layout.spec.kind == "mx" else torch.float32)
      assert tuple(scale.shape) == layout.scale_shape(x.shape), name
      q = layout.quantize(jnp.asarray(x))
      np.testing.assert_array_equal(fx.to_numpy(t), np.asarray(q.bits), err_msg=name)
      np.testing.assert_array_equal(fx.to_numpy(scale), np.asarray(q.scale), err_msg=name)
    else:
      assert fx.to_numpy(t).tobytes() == x.tobytes(), name


def check_round_trip(path: str, tensors, layout: WeightLayout, quantized: set[str]):
  got = {k: fx.to_numpy(v) for k, v in fx.load(path).items()}
  assert set(got) == set(tensors)
  for name, x in tensors.items():
    y = got[name]
    assert (y.dtype, y.shape) == (x.dtype, x.shape), name
    want = expected_dequantized(x, layout) if name in quantized else x
    assert y.tobytes() == want.tobytes(), name


@pytest.mark.parametrize("fmt,scaling", [
    ("e4m3fn", "tensor"), ("e4m3fn", "axis"), ("e5m2", "block:128"),
    ("e4m3fn", "block:128x128"), ("e2m1fn", "mx"), ("e4m3fn", "mx:rceil"), ("e2m3fn", "mx:even"),
])
def test_single_file_round_trip_is_the_library_bit_for_bit(single, tmp_path, fmt, scaling):
  src, tensors = single
  before = fx.listing(os.path.dirname(src))
  layout = WeightLayout.parse(fmt, scaling)
  q, back = str(tmp_path / "q.safetensors"), str(tmp_path / "back.safetensors")
  run("quantize", src, q, "--format", fmt, "--scaling", scaling)
  check_quantized(q, tensors, layout, fx.DEFAULT_QUANTIZED)
  header = st.read_header(q)
  info = json.loads(header.metadata["fp8jax"])
  assert (info["format"], info["scaling"]) == (fmt, scaling)
  assert header.metadata["format"] == "pt"  # the input's metadata is kept
  # Each tensor starts at a multiple of its item size, for readers that map the file.
  assert all(t.start % st.DTYPES[t.dtype].itemsize == 0 for t in header.tensors)
  run("dequantize", q, back)
  check_round_trip(back, tensors, layout, fx.DEFAULT_QUANTIZED)
  assert "fp8jax" not in st.read_header(back).metadata
  assert sorted(os.listdir(tmp_path)) == ["back.safetensors", "q.safetensors"]
  assert fx.listing(os.path.dirname(src)) == before  # IN untouched


def test_dequantize_dtype_overrides_the_recorded_one(single, tmp_path):
  src, tensors = single
  q, back = str(tmp_path / "q.safetensors"), str(tmp_path / "back.safetensors")
  run("quantize", src, q)
  run("dequantize", q, back, "--dtype", "f32")
  got = {k: fx.to_numpy(v) for k, v in fx.load(back).items()}
  layout = WeightLayout.parse("e4m3fn", "tensor")
  for name in fx.DEFAULT_QUANTIZED:
    want = np.asarray(fp8jax.dequantize(layout.quantize(jnp.asarray(tensors[name])),
                                        jnp.float32))
    assert got[name].dtype == np.float32
    np.testing.assert_array_equal(got[name], want)
  assert got["lm_head.weight"].dtype == ml_dtypes.bfloat16  # never quantized: copied


def test_sharded_round_trip_writes_a_matching_index(tmp_path):
  tensors = fx.example(seed=1)
  src_dir = tmp_path / "src"
  src_dir.mkdir()
  index = fx.save_sharded(str(src_dir), tensors, shards=3)
  before = fx.listing(str(src_dir))
  layout = WeightLayout.parse("e4m3fn", "block:128x128")
  q, back = str(tmp_path / "q"), str(tmp_path / "back")
  run("quantize", index, q, "--scaling", "block:128x128")
  shards = [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
  assert sorted(os.listdir(q)) == sorted(shards + ["model.safetensors.index.json"])
  with open(os.path.join(q, "model.safetensors.index.json")) as f:
    qindex = json.load(f)
  with open(index) as f:
    src_map = json.load(f)["weight_map"]
  expect_map = {n: f for n, f in src_map.items() if n not in fx.DEFAULT_QUANTIZED}
  for name in fx.DEFAULT_QUANTIZED:  # the fp8jax layout: an index without config.json
    expect_map[name + CODES_SUFFIX] = expect_map[name + SCALE_SUFFIX] = src_map[name]
  assert qindex["weight_map"] == expect_map
  files_total = 0
  for shard in shards:
    part = fx.load(os.path.join(q, shard))
    assert {n for n, f in qindex["weight_map"].items() if f == shard} == set(part)
    files_total += sum(t.numel() * t.element_size() for t in part.values())
    src_part = {n: tensors[n] for n, f in src_map.items() if f == shard}
    check_quantized(os.path.join(q, shard), src_part, layout,
                    fx.DEFAULT_QUANTIZED & set(src_part))
  assert qindex["metadata"]["total_size"] == files_total
  index_q = os.path.join(q, "model.safetensors.index.json")
  run("dequantize", index_q, back)
  with open(os.path.join(back, "model.safetensors.index.json")) as f:
    assert json.load(f)["weight_map"] == src_map
  merged = {}
  for shard in shards:
    merged.update(fx.load(os.path.join(back, shard)))
  path = str(tmp_path / "merged.safetensors")
  from safetensors.torch import save_file
  save_file(merged, path)
  check_round_trip(path, tensors, layout, fx.DEFAULT_QUANTIZED)
  assert fx.listing(str(src_dir)) == before


def _model_folder(tmp_path, tensors):
  src = tmp_path / "model"
  src.mkdir()
  config = {"model_type": "llama", "hidden_size": 64, "torch_dtype": "bfloat16"}
  fx.save_sharded(str(src), tensors, shards=2, config=config)
  (src / "tokenizer.json").write_text('{"version": "1.0"}')
  (src / "extra").mkdir()
  (src / "extra" / "notes.txt").write_text("kept")
  return src, config


@pytest.mark.parametrize("scaling", ["tensor", "block:128x128"])
def test_model_folder_follows_the_vllm_fp8_layout(tmp_path, scaling):
  tensors = {k: v for k, v in fx.example(seed=2).items() if k != "model.layers.0.experts.w1"}
  quantized = fx.DEFAULT_QUANTIZED - {"model.layers.0.experts.w1"}
  src, config = _model_folder(tmp_path, tensors)
  before = fx.listing(str(src))
  q, back = tmp_path / "fp8", tmp_path / "back"
  run("quantize", str(src), str(q), "--format", "e4m3fn", "--scaling", scaling, "--layout",
      "vllm")
  with open(q / "config.json") as f:
    qconfig = json.load(f)
  qc = qconfig.pop("quantization_config")
  assert qconfig == config
  assert qc["quant_method"] == "fp8"
  assert qc["activation_scheme"] == "dynamic"
  assert qc["ignored_layers"] == ["lm_head", "model.embed_tokens"]
  if scaling == "tensor":
    assert "weight_block_size" not in qc
  else:
    assert qc["weight_block_size"] == [128, 128]
  assert (q / "tokenizer.json").read_text() == '{"version": "1.0"}'
  assert (q / "extra" / "notes.txt").read_text() == "kept"
  got = {}
  for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
    got.update(fx.load(str(q / shard)))
  scale_suffix = ".weight_scale" if scaling == "tensor" else ".weight_scale_inv"
  scales = {n for n in got if "scale" in n}
  assert scales == {n[:-len(".weight")] + scale_suffix for n in quantized}
  for name in quantized:
    w, s = got[name], got[name[:-len(".weight")] + scale_suffix]
    out, inp = tensors[name].shape
    assert w.dtype == torch.float8_e4m3fn and tuple(w.shape) == (out, inp)
    assert s.dtype == torch.float32
    if scaling == "tensor":
      assert tuple(s.shape) == ()
    else:
      assert tuple(s.shape) == (math.ceil(out / 128), math.ceil(inp / 128))
    # weight ≈ fp8 value * scale (broadcast per 128x128 tile): the vLLM meaning.
    wf = w.to(torch.float32)
    if scaling != "tensor":
      s = s.repeat_interleave(128, 0)[:out].repeat_interleave(128, 1)[:, :inp]
    x = torch.from_numpy(tensors[name].astype(np.float32))
    # Within half an e4m3 step: 2^-4 relative, or half a subnormal step of the scale.
    assert torch.allclose(wf * s, x, rtol=2**-4, atol=float(s.max()) * 2**-10), name
  for name in set(tensors) - quantized:
    assert fx.to_numpy(got[name]).tobytes() == tensors[name].tobytes()
  run("dequantize", str(q), str(back))
  with open(back / "config.json") as f:
    assert json.load(f) == config
  assert (back / "extra" / "notes.txt").read_text() == "kept"
  assert fx.listing(str(src)) == before


def test_layouts_no_stack_reads_are_fp8jax_and_said_so(tmp_path, capsys):
  tensors = fx.example(seed=3)
  src, config = _model_folder(tmp_path, tensors)
  q, back = tmp_path / "fp8", tmp_path / "back"
  assert cli.main(["quantize", str(src), str(q), "--format", "e5m2", "--scaling", "axis"]) == 0
  err = capsys.readouterr().err
  assert err == "fp8jax: note: layout fp8jax: only `fp8jax dequantize` reads this layout\n"
  with open(q / "config.json") as f:
    qc = json.load(f)["quantization_config"]
  assert "quant_method" not in qc  # transformers refuses such a model rather than guess
  assert (qc["layout"], qc["format"], qc["scaling"], qc["codes_dtype"], qc["scale_dtype"]) == (
      "fp8jax", "e5m2", "axis", "F8_E5M2", "F32")
  assert (qc["codes_suffix"], qc["scale_suffix"]) == (CODES_SUFFIX, SCALE_SUFFIX)
  run("dequantize", str(q), str(back))
  with open(back / "config.json") as f:
    assert json.load(f) == config


def quantized_names(path: str) -> set[str]:
  entries = json.loads(st.read_header(path).metadata["fp8jax"])["tensors"]
  assert all(k == e["name"] + CODES_SUFFIX for k, e in entries.items())
  return {e["name"] for e in entries.values()}


@pytest.mark.parametrize("flags,expected", [
    ([], fx.DEFAULT_QUANTIZED),
    (["--include", "*embed*"], fx.DEFAULT_QUANTIZED | {"model.embed_tokens.weight"}),
    (["--exclude", "*.mlp.*"], fx.DEFAULT_QUANTIZED - {"model.layers.0.mlp.up_proj.weight",
                                                        "model.layers.0.mlp.down_proj.weight"}),
    # include adds only float tensors with >= 2 dims; exclude wins over include.
    (["--include", "*", "--exclude", "lm_head*", "--exclude", "*experts*"],
     fx.DEFAULT_QUANTIZED - {"model.layers.0.experts.w1"} | {"model.embed_tokens.weight"}),
    (["--include", "lm_head.weight", "--include", "model.norm.weight"],
     fx.DEFAULT_QUANTIZED | {"lm_head.weight"}),
])
def test_include_and_exclude_select_exactly_the_documented_tensors(single, tmp_path, flags,
                                                                   expected):
  src, _ = single
  out = str(tmp_path / "q.safetensors")
  run("quantize", src, out, *flags)
  assert quantized_names(out) == expected


def test_stochastic_rounding_is_the_library_with_a_key_per_tensor_name(single, tmp_path):
  src, tensors = single
  a, b = (str(tmp_path / f"{n}.safetensors") for n in "ab")
  run("quantize", src, a, "--rounding", "stochastic", "--seed", "7")
  run("quantize", src, b, "--rounding", "stochastic", "--seed", "8")
  got_a, got_b = fx.load(a), fx.load(b)
  layout = WeightLayout.parse("e4m3fn", "tensor")
  for name in fx.DEFAULT_QUANTIZED:
    key = jax.random.fold_in(jax.random.key(7), zlib.crc32(name.encode()))
    q = layout.quantize(jnp.asarray(tensors[name]), rounding="stochastic", key=key)
    a_codes, b_codes = got_a[name + CODES_SUFFIX], got_b[name + CODES_SUFFIX]
    np.testing.assert_array_equal(fx.to_numpy(a_codes), np.asarray(q.bits), err_msg=name)
    assert not torch.equal(a_codes.view(torch.uint8), b_codes.view(torch.uint8))


def test_written_files_load_with_the_numpy_frontend(tmp_path):
  from safetensors import safe_open
  from safetensors.numpy import load_file
  tensors = {"w": np.linspace(-3, 3, 64 * 48, dtype=np.float32).reshape(64, 48),
             "b": np.ones(48, np.float32)}
  src, q, q8 = (str(tmp_path / n) for n in ("src.safetensors", "q.safetensors", "q8.safetensors"))
  fx.save(src, tensors)
  # A format without a safetensors float8 dtype is stored as uint8 codes: NumPy reads all.
  run("quantize", src, q, "--format", "e4m3fnuz", "--scaling", "channel")
  got = load_file(q)
  codes, scale = got["w" + CODES_SUFFIX], got["w" + SCALE_SUFFIX]
  assert codes.dtype == np.uint8 and scale.dtype == np.float32 and scale.shape == (64, 1)
  np.testing.assert_array_equal(got["b"], tensors["b"])
  # NumPy has no float8 dtypes; the float32 scales and kept tensors still read through it.
  run("quantize", src, q8)
  with safe_open(q8, framework="np") as f:
    assert set(f.keys()) == {"w" + CODES_SUFFIX, "w" + SCALE_SUFFIX, "b"}
    assert f.get_tensor("w" + SCALE_SUFFIX).dtype == np.float32
    np.testing.assert_array_equal(f.get_tensor("b"), tensors["b"])
  back = str(tmp_path / "back.safetensors")
  run("dequantize", q8, back)
  assert load_file(back)["w"].dtype == np.float32


def test_force_replaces_an_existing_out(single, tmp_path):
  src, _ = single
  out = tmp_path / "q.safetensors"
  out.write_bytes(b"old")
  assert cli.main(["quantize", src, str(out), "-q"]) == 2
  assert out.read_bytes() == b"old"
  run("quantize", src, str(out), "--force")
  assert st.read_header(str(out)).metadata["fp8jax"]


def test_inspect_reports_ranges_errors_and_quantized_scales(single, tmp_path, capsys):
  src, tensors = single
  assert cli.main(["inspect", src, "--match", "model.layers.0.mlp.down_proj.weight"]) == 0
  out = capsys.readouterr().out
  assert "model.layers.0.mlp.down_proj.weight  F32 [64, 200]  amax" in out
  rows = [line.split() for line in out.splitlines() if line.startswith("    e")]
  assert [(r[0], r[1]) for r in rows] == [
      (f, s) for f in ("e4m3fn", "e5m2") for s in ("none", "tensor", "axis", "block:128x128")]
  x = jnp.asarray(tensors["model.layers.0.mlp.down_proj.weight"])
  for r in rows:
    fmt, scaling = r[0], r[1]
    q = fp8jax.quantize(x, fmt, scaling=1.0) if scaling == "none" else WeightLayout.parse(
        fmt, scaling).quantize(x)
    y = np.asarray(fp8jax.dequantize(q, jnp.float32), np.float64)
    xs = np.asarray(x, np.float64)
    sqnr = 10 * np.log10(np.sum(xs**2) / np.sum((xs - y) ** 2))
    assert float(r[4]) == pytest.approx(sqnr, abs=0.02), r
    if scaling != "none":
      assert r[2] == "0.000%"  # dynamic scales never overflow
  # A raw e4m3fn cast of weights ~0.02 flushes a visible share of them to zero.
  raw = next(r for r in rows if r[:2] == ["e4m3fn", "none"])
  under = float(raw[3].rstrip("%")) / 100
  want = np.mean((np.asarray(x) != 0) & (np.abs(np.asarray(x)) < 2.0**-10))
  assert under == pytest.approx(want, abs=2e-3)
  q = str(tmp_path / "q.safetensors")
  run("quantize", src, q, "--scaling", "axis")
  assert cli.main(["inspect", q, "--match", "*up_proj*", "--match", "*norm*"]) == 0
  out = capsys.readouterr().out
  assert "quantized by fp8jax: format e4m3fn, scaling axis" in out
  assert ("model.layers.0.mlp.up_proj.weight  F8_E4M3 [200, 64]  e4m3fn axis (was F16); "
          "scale model.layers.0.mlp.up_proj.weight_fp8jax_scale F32 [200, 1] in ") in out
  assert "model.norm.weight  BF16 [64]  amax" in out


def test_inspect_plot_writes_a_png(single, tmp_path, capsys):
  pytest.importorskip("matplotlib")
  src, _ = single
  png = tmp_path / "h.png"
  assert cli.main(["inspect", src, "--match", "*q_proj.weight", "--plot", str(png)]) == 0
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "wrote" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ["h.png"]


def test_formats_lists_every_format(capsys):
  assert cli.main(["formats"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].split()[:5] == ["name", "bits", "e", "m", "bias"]
  rows = {line.split()[0]: line.split() for line in lines[1:]}
  assert set(rows) == set(fp8jax.FORMATS)
  assert rows["e4m3fn"][1:9] == ["8", "4", "3", "7", "448", "2^-6", "2^-9", "0.125"]
  assert "NaN 0x7f" in lines[1 + list(fp8jax.FORMATS).index("e4m3fn")]
  assert rows["e2m1fn"][5] == "6"


def test_console_script_runs_the_command(single, tmp_path):
  # `python -m fp8jax` runs in test_cli_errors.py and test_demo.py.
  src, _ = single
  exe = shutil.which("fp8jax", path=os.path.dirname(sys.executable))
  cmd = [exe] if exe else [sys.executable, "-m", "fp8jax"]
  out = str(tmp_path / "q.safetensors")
  r = subprocess.run(cmd + ["quantize", src, out, "--sqnr"], capture_output=True, text=True,
                     timeout=120, check=False)
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith("quantized 4 tensors, kept 7; "), r.stdout
  assert "worst SQNR" in r.stdout


def test_sqnr_only_when_asked(single, tmp_path, capsys):
  src, tensors = single
  assert cli.main(["quantize", src, str(tmp_path / "a.safetensors"), "-v"]) == 0
  plain = capsys.readouterr().out
  assert "SQNR" not in plain
  assert cli.main(["quantize", src, str(tmp_path / "b.safetensors"), "-v", "--sqnr"]) == 0
  lines = capsys.readouterr().out.splitlines()
  name = "model.layers.0.mlp.down_proj.weight"
  line = next(x for x in lines if x.startswith(name + " "))
  x = jnp.asarray(tensors[name])
  y = np.asarray(fp8jax.dequantize(fp8jax.quantize(x, "e4m3fn"), jnp.float32), np.float64)
  xs = np.asarray(x, np.float64)
  want = 10 * np.log10(np.sum(xs**2) / np.sum((xs - y) ** 2))
  assert float(line.split("SQNR")[1].split()[0]) == pytest.approx(want, abs=0.01)
  assert "worst SQNR" in lines[-1]
  # The same bytes either way.
  assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_progress_bar_follows_large_checkpoints_tensor_by_tensor(single, tmp_path, monkeypatch,
                                                                 capsys):
  src, _ = single
  monkeypatch.setattr(progress, "MIN_BYTES", 0)  # the example is small
  monkeypatch.setattr(progress, "MIN_INTERVAL_S", 0)  # and quick: draw every step
  term = _Terminal()
  monkeypatch.setattr(sys, "stderr", term)
  assert cli.main(["quantize", src, str(tmp_path / "q.safetensors")]) == 0
  bar = term.getvalue()
  assert bar.count("%|") >= 2 and "model.layers.0." in bar, bar
  assert capsys.readouterr().out.startswith("quantized 4 tensors")
  assert cli.main(["quantize", src, str(tmp_path / "q2.safetensors"), "-q"]) == 0
  assert term.getvalue() == bar  # -q: no bar


@pytest.mark.parametrize("scaling,layout,names", [
    ("nvfp4", "compressed-tensors",
     ("weight_packed", "weight_scale", "weight_global_scale")),
    ("nvfp4:modelopt", "modelopt", ("weight", "weight_scale", "weight_scale_2")),
])
def test_nvfp4_folders_are_written_in_the_stacks_layouts_and_read_back(tmp_path, scaling, layout,
                                                                       names):
  tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in fx.example(seed=4).items()
             if k.endswith("proj.weight") or k == "lm_head.weight"}
  tensors["model.layers.0.self_attn.q_proj.weight"] = tensors[
      "model.layers.0.self_attn.q_proj.weight"][:128]  # the input axis: a multiple of 16
  src, config = _model_folder(tmp_path, tensors)
  q, back = tmp_path / "q", tmp_path / "back"
  run("quantize", str(src), str(q), "--format", "e2m1fn", "--scaling", scaling)
  with open(q / "config.json") as f:
    qc = json.load(f)["quantization_config"]
  assert qc["quant_method"] == layout
  assert (q / "hf_quant_config.json").exists() == (layout == "modelopt")
  got = {}
  for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
    got.update(fx.load(str(q / shard)))
  proj = "model.layers.0.mlp.up_proj"  # down_proj, [64, 200], is kept: 200 is no multiple of 16
  assert {n for n in got if n.startswith(proj)} == {f"{proj}.{n}" for n in names}
  run("dequantize", str(q), str(back))
  got = {}
  for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
    got.update({k: fx.to_numpy(v) for k, v in fx.load(str(back / shard)).items()})
  assert set(got) == set(tensors)
  rule = scaling.partition(":")[2] or "compressed-tensors"
  for name, x in tensors.items():
    if name in ("lm_head.weight", "model.layers.0.mlp.down_proj.weight"):
      assert got[name].tobytes() == x.tobytes()
      continue
    q_ = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="nvfp4", nvfp4_rule=rule)
    want = np.asarray(fp8jax.dequantize(q_, jnp.bfloat16))
    assert got[name].view(np.uint16).tobytes() == want.view(np.uint16).tobytes(), name
