"""`fp8jax convert`: a quantized model folder rewritten in another layout, codes and scales as
they are; layouts that cannot hold the weights are refused with the reason."""

import json
import os

import numpy as np
import pytest

from fp8jax import cli
from tests import cli_fixtures as fx

pytest.importorskip("torch", reason="inputs are written with safetensors.torch")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  src = tmp_path_factory.mktemp("model") / "in"
  src.mkdir()
  rng = np.random.default_rng(0)
  tensors = {f"model.layers.0.{n}.weight": (0.02 * rng.standard_normal(s)).astype(np.float32)
             for n, s in [("self_attn.q_proj", (256, 128)), ("mlp.up_proj", (200, 128)),
                          ("mlp.down_proj", (128, 200))]}
  tensors["model.norm.weight"] = np.ones(128, np.float32)
  tensors["lm_head.weight"] = np.ones((64, 128), np.float32)
  fx.save_sharded(str(src), tensors, shards=2, config={"model_type": "llama"})
  return src


def _run(*argv):
  assert cli.main([*argv, "-q"]) == 0


def _values(folder) -> dict:
  out = {}
  for name in sorted(os.listdir(folder)):
    if name.endswith(".safetensors"):
      out.update({k: fx.to_numpy(v) for k, v in fx.load(str(folder / name)).items()})
  return out


def test_layouts_convert_both_ways_without_changing_a_value(model, tmp_path):
  ct, vllm, back, own, again = (tmp_path / n for n in ("ct", "vllm", "back", "own", "again"))
  _run("quantize", str(model), str(ct), "--scaling", "block:128x128", "--layout",
       "compressed-tensors")
  _run("convert", str(ct), str(vllm), "--layout", "vllm")
  with open(vllm / "config.json") as f:
    qc = json.load(f)["quantization_config"]
  assert (qc["quant_method"], qc["weight_block_size"]) == ("fp8", [128, 128])
  assert "model.layers.0.mlp.up_proj.weight_scale_inv" in _values(vllm)
  _run("convert", str(vllm), str(back), "--layout", "compressed-tensors")
  for name in os.listdir(ct):  # there and back: the same bytes, the same config
    assert (ct / name).read_bytes() == (back / name).read_bytes(), name
  _run("convert", str(ct), str(own), "--layout", "fp8jax")
  assert "model.layers.0.mlp.up_proj.weight_fp8jax_codes" in _values(own)
  _run("convert", str(own), str(again), "--layout", "compressed-tensors")
  plain = {}
  for folder in (ct, vllm, own, again):
    _run("dequantize", str(folder), str(folder) + "-plain")
    plain[folder.name] = _values(tmp_path / (folder.name + "-plain"))
  for name, x in plain["ct"].items():
    for other in ("vllm", "own", "again"):
      assert plain[other][name].tobytes() == x.tobytes(), (other, name)


@pytest.mark.parametrize("argv,target,message", [
    (["--scaling", "axis"], "vllm", "vllm holds e4m3fn per tensor or in 128x128 tiles"),
    (["--format", "e2m1fn", "--scaling", "nvfp4"], "modelopt",
     "made with nvfp4_rule 'modelopt' or 'torchao'"),
    (["--format", "e2m1fn", "--scaling", "nvfp4:modelopt"], "fp8jax",
     "fp8jax's own layout does not hold NVFP4"),
])
def test_a_layout_that_cannot_hold_the_weights_is_refused(model, tmp_path, capsys, argv, target,
                                                          message):
  q = tmp_path / "q"
  _run("quantize", str(model), str(q), *argv)
  err = fx.expect_bad(capsys, ["convert", str(q), str(tmp_path / "out"), "--layout", target],
                      message, model, q)
  assert err.startswith("fp8jax: error: --layout must be a layout that holds")
  assert not (tmp_path / "out").exists()


def test_a_plain_folder_or_the_same_layout_is_refused(model, tmp_path, capsys):
  fx.expect_bad(capsys, ["convert", str(model), str(tmp_path / "out"), "--layout", "vllm"],
                "is not quantized", model)
  q = tmp_path / "q"
  _run("quantize", str(model), str(q), "--scaling", "axis")
  fx.expect_bad(capsys, ["convert", str(q), str(tmp_path / "out"), "--layout",
                         "compressed-tensors"], "already in the compressed-tensors layout", q)


def test_weight_only_does_not_apply_to_vllm(model, tmp_path, capsys):
  fx.expect_bad(capsys, ["quantize", str(model), str(tmp_path / "q"), "--scaling",
                         "block:128x128", "--weight-only"],
                "--weight-only does not apply to the vllm layout", model)


def test_a_checkpoint_another_stack_quantized_is_not_quantized_again(model, tmp_path, capsys):
  # A ModelOpt export may announce itself in hf_quant_config.json alone.
  q = tmp_path / "q"
  _run("quantize", str(model), str(q), "--format", "e2m1fn", "--scaling", "nvfp4:modelopt")
  config = json.loads((q / "config.json").read_text())
  del config["quantization_config"]
  (q / "config.json").write_text(json.dumps(config))
  fx.expect_bad(capsys, ["quantize", str(q), str(tmp_path / "again")],
                "is already quantized (ModelOpt W4A16_NVFP4)", q)


def test_vllm_blocks_other_than_128x128_are_refused(model, tmp_path, capsys):
  q = tmp_path / "q"
  _run("quantize", str(model), str(q), "--scaling", "block:128x128")
  config = json.loads((q / "config.json").read_text())
  config["quantization_config"]["weight_block_size"] = [64, 64]
  (q / "config.json").write_text(json.dumps(config))
  fx.expect_bad(capsys, ["convert", str(q), str(tmp_path / "ct"), "--layout",
                         "compressed-tensors"], "128x128 tiles only", q)
