"""The `fp8jax` metadata: one reader and writer, versioned; old "channel" checkpoints still read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fp8jax import cli
from fp8jax.checkpoint import safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.inspection import inspect_checkpoint
from fp8jax.checkpoint.metadata import KEY, QuantizedTensor, QuantMetadata
from fp8jax.checkpoint.pipeline import dequantize_checkpoint, quantize_checkpoint
from fp8jax.checkpoint.stored import WeightLayout


def _tensors() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {"layer.weight": rng.standard_normal((16, 24)).astype(np.float32),
          "layer.bias": rng.standard_normal(16).astype(np.float32)}


def _rewrite_metadata(src: str, dst: str, change) -> None:
  """Copies a file with its fp8jax metadata JSON changed by `change(info)`."""
  header = st.read_header(src)
  info = json.loads(header.metadata[KEY])
  change(info)
  metadata = dict(header.metadata, **{KEY: json.dumps(info, sort_keys=True)})
  entries = [st.Entry(t.name, t.dtype, t.shape) for t in header.tensors]
  with open(src, "rb") as f, st.Writer(dst, entries, metadata) as w:
    for t in header.tensors:
      w.copy(t.name, f, t)


def test_dump_writes_the_documented_json():
  meta = QuantMetadata(WeightLayout.parse("e5m2", "block:128x128"),
                       {"w": QuantizedTensor("F16", "w_scale")})
  assert json.loads(meta.dump()) == {
      "version": 1, "format": "e5m2", "scaling": "block:128x128", "bits_dtype": "F8_E5M2",
      "scale_dtype": "F32", "tensors": {"w": {"dtype": "F16", "scale": "w_scale"}}}
  assert QuantMetadata.parse("x", meta.dump()) == meta


def test_quantize_records_the_layout_and_each_weight(tmp_path):
  src, q = str(tmp_path / "a.safetensors"), str(tmp_path / "q.safetensors")
  st.write_file(src, _tensors())
  quantize_checkpoint(src, q, WeightLayout.parse("e4m3fn", "channel"))
  meta = QuantMetadata.of(st.read_header(q))
  assert meta.layout == WeightLayout.parse("e4m3fn", "axis")
  assert meta.tensors == {"layer.weight_fp8jax_codes": QuantizedTensor(
      "F32", "layer.weight_fp8jax_scale", "layer.weight")}
  assert json.loads(st.read_header(q).metadata[KEY])["scaling"] == "axis"


def test_a_checkpoint_recorded_as_channel_still_dequantizes(tmp_path):
  # fp8jax spelled per-axis scaling "channel" before; such files must still read.
  src, q, old = (str(tmp_path / n) for n in ("a.safetensors", "q.safetensors",
                                             "old.safetensors"))
  st.write_file(src, _tensors())
  quantize_checkpoint(src, q, WeightLayout.parse("e4m3fn", "axis"))
  _rewrite_metadata(q, old, lambda info: info.update(scaling="channel"))
  assert json.loads(st.read_header(old).metadata[KEY])["scaling"] == "channel"
  assert QuantMetadata.of(st.read_header(old)).layout.scaling == "axis"
  back_new, back_old = str(tmp_path / "b1.safetensors"), str(tmp_path / "b2.safetensors")
  dequantize_checkpoint(q, back_new)
  dequantize_checkpoint(old, back_old)
  with open(back_new, "rb") as a, open(back_old, "rb") as b:
    assert a.read() == b.read()
  lines = list(inspect_checkpoint(old, match=["layer.weight*"]))
  assert lines[0] == "quantized by fp8jax: format e4m3fn, scaling axis"
  assert cli.main(["dequantize", old, str(tmp_path / "b3.safetensors"), "-q"]) == 0


@pytest.mark.parametrize("change,message", [
    (lambda info: info.update(version=2), "metadata version 2 is not 1"),
    (lambda info: info.update(scaling="rows"), "corrupt fp8jax metadata (scaling must be"),
    (lambda info: info["tensors"]["layer.weight_fp8jax_codes"].update(dtype="F64"),
     "corrupt fp8jax metadata"),
    (lambda info: info.pop("tensors"), "corrupt fp8jax metadata"),
])
def test_bad_metadata_is_one_clear_error(tmp_path, change, message):
  src, q, bad = (str(tmp_path / n) for n in ("a.safetensors", "q.safetensors",
                                             "bad.safetensors"))
  st.write_file(src, _tensors())
  quantize_checkpoint(src, q, WeightLayout.parse("e4m3fn", "tensor"))
  _rewrite_metadata(q, bad, change)
  with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
    dequantize_checkpoint(bad, str(tmp_path / "back.safetensors"))
  with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
    list(inspect_checkpoint(bad))


def test_metadata_that_does_not_match_the_file_is_refused_before_writing(tmp_path):
  src, q, bad = (str(tmp_path / n) for n in ("a.safetensors", "q.safetensors",
                                             "bad.safetensors"))
  st.write_file(src, _tensors())
  quantize_checkpoint(src, q, WeightLayout.parse("e4m3fn", "tensor"))
  _rewrite_metadata(q, bad, lambda info: info.update(format="e5m2"))
  with pytest.raises(CheckpointError, match="not the e5m2 tensor layout"):
    dequantize_checkpoint(bad, str(tmp_path / "back.safetensors"))
  assert not (tmp_path / "back.safetensors").exists()


def test_shards_with_different_layouts_are_refused(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  for i, scaling in enumerate(("tensor", "axis")):
    plain = str(tmp_path / f"plain{i}.safetensors")
    st.write_file(plain, {f"w{i}": np.ones((4, 4), np.float32)})
    quantize_checkpoint(plain, str(folder / f"model-{i}.safetensors"),
                        WeightLayout.parse("e4m3fn", scaling))
  with pytest.raises(CheckpointError, match="holds e4m3fn axis weights, other shards "
                     "e4m3fn tensor"):
    dequantize_checkpoint(str(folder), str(tmp_path / "out"))


def test_files_written_before_the_fp8jax_codes_names_still_dequantize(tmp_path):
  # Earlier versions kept the codes under the weight's own name and the scale under
  # `X.weight_scale`, without "name" in the metadata.
  src, q, old = (str(tmp_path / n) for n in ("a.safetensors", "q.safetensors",
                                             "old.safetensors"))
  st.write_file(src, _tensors())
  quantize_checkpoint(src, q, WeightLayout.parse("e4m3fn", "axis"))
  h = st.read_header(q)
  with open(q, "rb") as f:
    arrays = {t.name: st.read_tensor(f, t) for t in h.tensors}
  renamed = {"layer.weight_fp8jax_codes": "layer.weight",
             "layer.weight_fp8jax_scale": "layer.weight_scale"}
  info = json.loads(h.metadata[KEY])
  info["tensors"] = {"layer.weight": {"dtype": "F32", "scale": "layer.weight_scale"}}
  entries = [st.Entry(renamed.get(t.name, t.name), t.dtype, t.shape) for t in h.tensors]
  with st.Writer(old, entries, dict(h.metadata, **{KEY: json.dumps(info)})) as w:
    for t in h.tensors:
      w.write(renamed.get(t.name, t.name), arrays[t.name])
  back_new, back_old = str(tmp_path / "b1.safetensors"), str(tmp_path / "b2.safetensors")
  dequantize_checkpoint(q, back_new)
  dequantize_checkpoint(old, back_old)
  with open(back_new, "rb") as a, open(back_old, "rb") as b:
    assert a.read() == b.read()
  assert "layer.weight" in {t.name for t in st.read_header(back_new).tensors}
