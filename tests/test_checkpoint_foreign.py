"""Checkpoints other stacks quantized, dequantized bit for bit as each stack's own code does.

The references (tests/foreign_reference.py) are the producers' own functions where they run
on CPU: compressed-tensors 0.20 quantizes, compresses and decompresses its checkpoints (its
model-free `CompressedTensorsDequantizer`); block FP8 is read back by compressed-tensors'
`FP8BlockDequantizer` and transformers' `Fp8Dequantize`; gpt-oss by transformers'
`convert_moe_packed_tensors`. ModelOpt is not installed: its `NVFP4QTensor.dequantize` is
transcribed in tests/nvfp4_reference.py. Besides checkpoints quantized from weights, each
format is fed random codes and scales over their whole range (NaN codes, subnormal and
huge scales, every MX exponent), where the producers' narrow-dtype arithmetic shows.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fp8jax.checkpoint import foreign, safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.metadata import KEY
from fp8jax.checkpoint.source import open_checkpoint, shard_names
from tests.block_inputs import same_bits

torch = pytest.importorskip("torch", reason="the producers' own code needs torch (extra 'torch')")
pytest.importorskip("compressed_tensors", reason="needs compressed-tensors (extra 'test')")
pytest.importorskip("transformers", reason="needs transformers")
from safetensors.torch import save_file  # noqa: E402

from tests import foreign_reference as ref, nvfp4_reference  # noqa: E402

M = ref.MODULE
F8 = torch.float8_e4m3fn


# --- helpers ----------------------------------------------------------------------

def _save(folder, tensors: dict, config: dict | None, shards: list[list[str]] | None = None,
          files: dict | None = None) -> str:
  """Writes tensors (one file, or `shards` by name with an index), config.json and `files`."""
  if shards is None:
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(folder, "model.safetensors"))
  else:
    names = shard_names(len(shards))
    for shard, members in zip(names, shards, strict=True):
      save_file({k: tensors[k].contiguous() for k in members}, os.path.join(folder, shard))
    weight_map = {k: shard for shard, members in zip(names, shards, strict=True) for k in members}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)
  if config is not None:
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(config, f)
  for name, content in (files or {}).items():
    with open(os.path.join(folder, name), "w") as f:
      json.dump(content, f)
  return str(folder)


def _ours(folder) -> tuple[foreign.ForeignPlan, dict[str, np.ndarray]]:
  """detect + dequantize of every planned weight, each input read from its own file."""
  plan = foreign.detect(open_checkpoint(str(folder)))
  assert plan is not None
  out = {}
  for w in plan.weights.values():
    arrays = []
    for t in w.inputs:
      with open(t.path, "rb") as f:
        arrays.append(st.read_tensor(f, t.info))
    got = w.dequantize(arrays)
    assert got.dtype == np.float32 and got.shape == w.shape, (w.name, got.dtype, got.shape)
    out[w.name] = got
  return plan, out


def _same(got: np.ndarray, want) -> None:
  want = want.float().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
  assert got.shape == want.shape
  bad = ~same_bits(got, want)
  if bad.any():
    at = tuple(np.argwhere(bad)[0])
    raise AssertionError(f"{bad.sum()} of {bad.size} values differ; first at {at}: "
                         f"{got[at]!r} vs {want[at]!r}")


def _wide(shape, dtype, seed: int) -> torch.Tensor:
  """Weights over a wide range: normal times exp(uniform(-4, 4)) per element."""
  g = torch.Generator().manual_seed(seed)
  x = torch.randn(shape, generator=g) * torch.exp(torch.empty(shape).uniform_(-4, 4, generator=g))
  return x.to(dtype)


def _codes(shape, seed: int, high: int = 256) -> torch.Tensor:
  return torch.randint(0, high, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _scales(shape, dtype, seed: int, lo: float, hi: float) -> torch.Tensor:
  """Positive scales 2^uniform(lo, hi), with a zero among them."""
  g = torch.Generator().manual_seed(seed)
  s = torch.exp2(torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=g))
  s = s * (1 + torch.rand(shape, generator=g, dtype=torch.float64))
  s.view(-1)[0] = 0
  return s.to(dtype)


def _exponents(shape, seed: int) -> torch.Tensor:
  """Every byte 0..255 among MX exponents (shape holds at least 256)."""
  n = int(np.prod(shape))
  e = torch.cat([torch.arange(256), _codes((n - 256,), seed).long()]).to(torch.uint8)
  return e[torch.randperm(n, generator=torch.Generator().manual_seed(seed))].reshape(shape)


# --- compressed-tensors -----------------------------------------------------------

CT_CASES = {
    # name: (scheme, weight shape, weight dtype)
    "fp8-tensor-bf16": (lambda: ref.ct_scheme("FP8"), (6, 32), torch.bfloat16),
    "fp8-tensor-f32": (lambda: ref.ct_scheme("FP8"), (6, 32), torch.float32),
    "fp8-channel-f16": (lambda: ref.ct_scheme("FP8_DYNAMIC"), (6, 32), torch.float16),
    "fp8-channel-bf16": (lambda: ref.ct_scheme("FP8_DYNAMIC"), (6, 32), torch.bfloat16),
    "fp8-group-bf16": (lambda: ref.ct_scheme("FP8_DYNAMIC", strategy="group", group_size=16),
                       (6, 48), torch.bfloat16),
    "fp8-block-bf16-edges": (lambda: ref.ct_scheme("FP8_BLOCK", block_structure=[4, 8]),
                             (10, 20), torch.bfloat16),
    "fp8-block-f32-128": (lambda: ref.ct_scheme("FP8_BLOCK"), (130, 260), torch.float32),
    "nvfp4": (lambda: ref.ct_scheme("NVFP4"), (6, 64), torch.bfloat16),
    "mxfp4": (lambda: ref.ct_scheme("MXFP4"), (6, 64), torch.bfloat16),
    "mxfp6": (lambda: ref.ct_scheme("MXFP6A16"), (6, 64), torch.bfloat16),
    "mxfp8": (lambda: ref.ct_scheme("MXFP8"), (6, 64), torch.bfloat16),
}


@pytest.mark.parametrize("case", sorted(CT_CASES))
def test_compressed_tensors_checkpoints_match_its_own_decompression(case, tmp_path):
  make_scheme, shape, dtype = CT_CASES[case]
  ref.ct_checkpoint(str(tmp_path), make_scheme(), _wide(shape, dtype, seed=len(case)))
  want = ref.ct_dequantize(str(tmp_path))
  plan, got = _ours(tmp_path)
  assert plan.producer.startswith("compressed-tensors ")
  assert set(got) == {f"{M}.weight"}
  _same(got[f"{M}.weight"], want[f"{M}.weight"])
  # Everything else the module held is dropped; lm_head (ignored) is copied.
  header = open_checkpoint(str(tmp_path)).headers[0]
  rest = {t.name for t in header.tensors} - set(plan.weights) - plan.consumed
  assert rest == {"lm_head.weight"}
  assert "quantization_config" not in plan.config(json.load(open(tmp_path / "config.json")))


def _ct_stress(folder, scheme, tensors) -> None:
  _save(folder, {**tensors, "lm_head.weight": torch.ones(2, 2, dtype=torch.bfloat16)},
        {"torch_dtype": "bfloat16", "quantization_config": ref.ct_config(scheme)})
  want = ref.ct_dequantize(str(folder))
  _, got = _ours(folder)
  _same(got[f"{M}.weight"], want[f"{M}.weight"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "f16", "f32"])
@pytest.mark.parametrize("strategy", ["tensor", "channel", "group", "block"])
def test_compressed_tensors_fp8_rounds_in_the_scales_dtype(strategy, dtype, tmp_path):
  # Every code, NaN included, times scales from subnormal to huge: compressed-tensors
  # multiplies in the scale's dtype, so bfloat16 and float16 products are rounded.
  out, inn = 12, 40
  shapes = {"tensor": (1,), "channel": (out, 1), "group": (out, inn // 8), "block": (3, 3)}
  scheme = {"tensor": ref.ct_scheme("FP8"), "channel": ref.ct_scheme("FP8_DYNAMIC"),
            "group": ref.ct_scheme("FP8_DYNAMIC", strategy="group", group_size=8),
            "block": ref.ct_scheme("FP8_BLOCK", block_structure=[5, 16])}[strategy]
  lo, hi = (-30, 8) if dtype == torch.float16 else (-140, 100)
  _ct_stress(tmp_path, scheme, {
      f"{M}.weight": _codes((out, inn), 1).view(F8),
      f"{M}.weight_scale": _scales(shapes[strategy], dtype, 2, lo, hi)})


@pytest.mark.parametrize("global_shape", [(1,), ()], ids=["global-1", "global-0d"])
def test_compressed_tensors_nvfp4_divides_by_the_global_scale(global_shape, tmp_path):
  # A [1] global scale makes the block multiplier float32 (torch's promotion); a 0-d one,
  # as compressed-tensors' own ModelOpt converter writes, keeps it bfloat16.
  rows, n = 8, 64
  scale = _codes((rows, n // 16), 3, high=0x7F).view(F8)  # every finite positive code
  for g, seed in zip([2.0**-20, 3.3e-3, 448.0 * 6 / 1e-30, 1.1e38], range(4), strict=True):
    folder = tmp_path / str(seed)
    folder.mkdir()
    _ct_stress(folder, ref.ct_scheme("NVFP4"), {
        f"{M}.weight_packed": _codes((rows, n // 2), 10 + seed),
        f"{M}.weight_scale": scale,
        f"{M}.weight_global_scale": torch.tensor(g, dtype=torch.float32).reshape(global_shape)})


@pytest.mark.parametrize("kind", ["MXFP4", "MXFP6A16", "MXFP8"])
def test_compressed_tensors_mx_reads_every_exponent(kind, tmp_path):
  # 2^(e - 127) in bfloat16: 255 is infinite, and tiny FP8 products round to bfloat16.
  rows, n = 8, 1024
  stored = {"MXFP4": (rows, n // 2), "MXFP6A16": (rows, n * 3 // 4)}
  codes = (_codes(stored[kind], 4) if kind in stored else _codes((rows, n), 4).view(F8))
  param = "weight" if kind == "MXFP8" else "weight_packed"
  _ct_stress(tmp_path, ref.ct_scheme(kind), {
      f"{M}.{param}": codes, f"{M}.weight_scale": _exponents((rows, n // 32), 5)})


def test_compressed_tensors_groups_ignore_and_nested_config(tmp_path):
  # Two groups by regular expression, an ignored module, an untargeted float weight, KV-cache
  # scales; the config under text_config (as multimodal models keep it).
  qc = ref.ct_config(ref.ct_scheme("FP8_DYNAMIC"))
  qc["config_groups"]["group_0"]["targets"] = ["re:.*up_proj$"]
  qc["config_groups"]["group_1"] = ref.ct_config(ref.ct_scheme("NVFP4"))["config_groups"][
      "group_0"] | {"targets": ["re:.*down_proj$"]}
  qc["ignore"] = ["lm_head", "re:.*visual.*"]
  down = "model.layers.0.mlp.down_proj"
  tensors = {
      f"{M}.weight": _codes((4, 32), 1).view(F8),
      f"{M}.weight_scale": _scales((4, 1), torch.bfloat16, 2, -10, 10),
      f"{down}.weight_packed": _codes((4, 16), 3),
      f"{down}.weight_scale": _codes((4, 2), 4, high=0x7F).view(F8),
      f"{down}.weight_global_scale": torch.tensor([100.0]),
      f"{down}.input_global_scale": torch.tensor([3.0]),
      "model.layers.0.self_attn.k_scale": torch.tensor(1.0),
      "model.visual.proj.weight": _codes((2, 2), 5).view(F8),  # ignored: copied
      "model.embed_tokens.weight": torch.ones(4, 4, dtype=torch.bfloat16),
      "model.norm.weight": torch.ones(4, dtype=torch.bfloat16),
      "lm_head.weight": torch.ones(4, 4, dtype=torch.bfloat16),
  }
  folder = _save(tmp_path, tensors, {"text_config": {"quantization_config": qc,
                                                     "torch_dtype": "float16"},
                                     "torch_dtype": "float16"})
  want = ref.ct_dequantize(folder)
  plan, got = _ours(folder)
  assert set(got) == {f"{M}.weight", f"{down}.weight"}
  for name, values in got.items():
    _same(values, want[name])
  assert plan.weights[f"{down}.weight_packed"].dtype == "F16"
  assert plan.consumed == {f"{M}.weight_scale", f"{down}.weight_scale",
                           f"{down}.weight_global_scale", f"{down}.input_global_scale",
                           "model.layers.0.self_attn.k_scale"}
  assert plan.producer == ("compressed-tensors float-quantized (channel), "
                           "nvfp4-pack-quantized")
  assert plan.config({"text_config": {"quantization_config": qc, "a": 1}, "b": 2}) == {
      "text_config": {"a": 1}, "b": 2}


# --- vLLM / DeepSeek-V3 FP8 -----------------------------------------------------------

@pytest.mark.parametrize("shape, block", [((300, 260), None), ((10, 20), [4, 8]),
                                          ((256, 128), [128, 128])],
                         ids=["deepseek-default-edges", "small-edges", "whole-tiles"])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16, torch.float8_e8m0fnu],
                         ids=["f32", "bf16", "e8m0"])
def test_fp8_blocks_match_the_dequantizers(shape, block, scale_dtype, tmp_path):
  b0, b1 = block or (128, 128)
  grid = (-(-shape[0] // b0), -(-shape[1] // b1))
  codes = _codes(shape, 6).view(F8)
  scale = _scales(grid, torch.float32, 7, -140, 100).to(scale_dtype)
  if scale_dtype == torch.float8_e8m0fnu:
    scale = torch.arange(grid[0] * grid[1]).reshape(grid).to(torch.uint8).view(scale_dtype)
  qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3"}
  if block is not None:
    qc["weight_block_size"] = block
  folder = _save(tmp_path, {f"{M}.weight": codes, f"{M}.weight_scale_inv": scale,
                            "lm_head.weight": torch.ones(2, 2, dtype=torch.bfloat16)},
                 {"torch_dtype": "bfloat16", "quantization_config": qc})
  plan, got = _ours(folder)
  assert plan.producer == f"fp8 {b0}x{b1} blocks" and plan.consumed == {f"{M}.weight_scale_inv"}
  _same(got[f"{M}.weight"], ref.fp8_block_dequantize(codes, scale, (b0, b1)))
  if shape[0] % b0 == 0 and shape[1] % b1 == 0:
    _same(got[f"{M}.weight"], ref.fp8_transformers_dequantize(codes, scale))


def test_fp8_experts_stacked_and_sharded_apart_from_their_scales(tmp_path):
  # [experts, out, in] with its scale grid, the scale in another shard than the weight.
  codes = _codes((2, 8, 16), 8).view(F8)
  scale = _scales((2, 2, 2), torch.float32, 9, -20, 20)
  tensors = {f"{M}.weight": codes, f"{M}.weight_scale_inv": scale,
             f"{M}.input_scale": torch.tensor(0.5), "lm_head.weight": torch.ones(2, 2)}
  folder = _save(tmp_path, tensors, {"quantization_config": {
      "quant_method": "fp8", "weight_block_size": [4, 8], "activation_scheme": "static"}},
      shards=[[f"{M}.weight"], [f"{M}.weight_scale_inv", f"{M}.input_scale", "lm_head.weight"]])
  plan, got = _ours(folder)
  paths = [os.path.basename(t.path) for t in plan.weights[f"{M}.weight"].inputs]
  assert paths == shard_names(2)
  assert plan.consumed == {f"{M}.weight_scale_inv", f"{M}.input_scale"}
  want = torch.stack([ref.fp8_transformers_dequantize(codes[i], scale[i]) for i in range(2)])
  _same(got[f"{M}.weight"], want)
  # The command line reads the scale from the other shard; each tensor stays in its shard.
  from fp8jax import cli
  out = tmp_path.parent / (tmp_path.name + "-out")
  assert cli.main(["dequantize", folder, str(out), "--dtype", "f32", "-q"]) == 0
  index = json.load(open(out / "model.safetensors.index.json"))
  assert index["weight_map"] == {f"{M}.weight": shard_names(2)[0],
                                 "lm_head.weight": shard_names(2)[1]}
  with open(out / shard_names(2)[0], "rb") as f:
    _same(st.read_tensor(f, st.read_header(str(out / shard_names(2)[0])).tensors[0]), want)


@pytest.mark.parametrize("scale_shape", [(), (1,)])
def test_fp8_per_tensor_scale(scale_shape, tmp_path):
  codes = _codes((6, 10), 10).view(F8)
  scale = torch.tensor(3.1e-39, dtype=torch.float32).reshape(scale_shape)  # subnormal
  folder = _save(tmp_path, {f"{M}.weight": codes, f"{M}.weight_scale": scale,
                            "model.layers.0.self_attn.k_proj.k_scale": torch.tensor(1.0)},
                 {"quantization_config": {"quant_method": "fp8"}})
  plan, got = _ours(folder)
  assert plan.producer == "fp8 per tensor"
  assert plan.consumed == {f"{M}.weight_scale", "model.layers.0.self_attn.k_proj.k_scale"}
  _same(got[f"{M}.weight"], ref.fp8_transformers_dequantize(codes, scale))


# --- ModelOpt NVFP4 -------------------------------------------------------------------

HF_QUANT = {"producer": {"name": "modelopt", "version": "0.37.0"},
            "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                             "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}}


@pytest.mark.parametrize("route", ["hf_quant_config", "config.json"])
def test_modelopt_nvfp4_matches_its_dequantize(route, tmp_path):
  x = _wide((8, 64), torch.float32, 11)
  packed, scale, wsf2, _ = nvfp4_reference.modelopt_quantize(x)
  stress = _codes((2, 8, 32), 12)  # stacked experts, every code: 0x8 must read as +0
  stress_scale = _codes((2, 8, 4), 13, high=0x7F).view(F8)
  stress_2 = torch.tensor([2.0**-130])
  k = "model.layers.0.self_attn.k_proj"
  tensors = {f"{M}.weight": packed, f"{M}.weight_scale": scale, f"{M}.weight_scale_2": wsf2,
             f"{M}.input_scale": torch.tensor(0.01),
             "model.layers.0.mlp.experts.weight": stress,
             "model.layers.0.mlp.experts.weight_scale": stress_scale,
             "model.layers.0.mlp.experts.weight_scale_2": stress_2,
             f"{k}.k_scale": torch.tensor(1.0), "lm_head.weight": torch.ones(2, 2)}
  if route == "config.json":
    config = {"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4",
                                      "ignore": ["lm_head"]}}
    files = {}
  else:
    config, files = {"model_type": "llama"}, {"hf_quant_config.json": HF_QUANT}
  folder = _save(tmp_path, tensors, config, files=files)
  plan, got = _ours(folder)
  assert plan.producer == "ModelOpt NVFP4"
  assert plan.dropped_files == ({"hf_quant_config.json"} if files else set())
  assert plan.consumed == {f"{M}.weight_scale", f"{M}.weight_scale_2", f"{M}.input_scale",
                           "model.layers.0.mlp.experts.weight_scale",
                           "model.layers.0.mlp.experts.weight_scale_2", f"{k}.k_scale"}
  _same(got[f"{M}.weight"], nvfp4_reference.modelopt_dequantize(packed, scale, wsf2))
  _same(got["model.layers.0.mlp.experts.weight"],
        nvfp4_reference.modelopt_dequantize(stress, stress_scale, stress_2))


# --- gpt-oss MXFP4 ---------------------------------------------------------------------

def test_gpt_oss_experts_match_transformers(tmp_path):
  experts = "model.layers.0.mlp.experts"
  e, hidden, inter = 2, 64, 32  # gate_up [E, 2I, H/32, 16]; down [E, H, I/32, 16]
  tensors = {
      f"{experts}.gate_up_proj_blocks": _codes((e, 2 * inter, hidden // 32, 16), 14),
      f"{experts}.gate_up_proj_scales": _exponents((e, 2 * inter, hidden // 32), 15),
      f"{experts}.gate_up_proj_bias": torch.zeros(e, 2 * inter),
      f"{experts}.down_proj_blocks": _codes((e, hidden, inter // 32, 16), 16),
      f"{experts}.down_proj_scales": _codes((e, hidden, inter // 32), 17, high=140),
      f"{experts}.down_proj_bias": torch.zeros(e, hidden),
      "model.layers.0.mlp.router.weight": torch.ones(e, hidden, dtype=torch.bfloat16),
  }
  folder = _save(tmp_path, tensors, {"model_type": "gpt_oss", "torch_dtype": "bfloat16",
                                     "quantization_config": {"quant_method": "mxfp4",
                                                             "modules_to_not_convert": []}})
  plan, got = _ours(folder)
  assert plan.producer == "gpt-oss MXFP4 experts"
  assert {w.name: w.shape for w in plan.weights.values()} == {
      f"{experts}.gate_up_proj": (e, hidden, 2 * inter),
      f"{experts}.down_proj": (e, inter, hidden)}
  assert plan.consumed == {f"{experts}.gate_up_proj_scales", f"{experts}.down_proj_scales"}
  for proj in ("gate_up_proj", "down_proj"):
    blocks, scales = tensors[f"{experts}.{proj}_blocks"], tensors[f"{experts}.{proj}_scales"]
    values = got[f"{experts}.{proj}"]
    _same(values, ref.gpt_oss_dequantize(blocks, scales, torch.float32))
    # The caller's cast to the model's bfloat16 is transformers' own result.
    bf16 = ref.gpt_oss_dequantize(blocks, scales, torch.bfloat16)
    _same(torch.from_numpy(values).to(torch.bfloat16).float().numpy(), bf16)


# --- what is not a foreign checkpoint, and what is wrong with one -----------------------

def test_plain_and_fp8jax_checkpoints_are_not_foreign(tmp_path):
  plain = tmp_path / "plain"
  plain.mkdir()
  _save(plain, {"w": torch.ones(2, 2)}, {"model_type": "llama", "torch_dtype": "float16"})
  assert foreign.detect(open_checkpoint(str(plain))) is None
  own = tmp_path / "own"  # fp8jax's own vLLM-style output: its metadata says so
  own.mkdir()
  with st.Writer(str(own / "model.safetensors"), [st.Entry("w", "F8_E4M3", (2, 2)),
                                                   st.Entry("w_scale", "F32", ())],
                 {KEY: "{}"}) as w:
    w.write("w", np.zeros((2, 2), np.uint8))
    w.write("w_scale", np.array(1, np.float32))
  with open(own / "config.json", "w") as f:
    json.dump({"quantization_config": {"quant_method": "fp8"}}, f)
  assert foreign.detect(open_checkpoint(str(own))) is None
  assert foreign.detect(open_checkpoint(str(own / "model.safetensors"))) is None


@pytest.mark.parametrize("place", ["top", "text_config", "compression_config"])
def test_the_quantization_config_is_found_where_vllm_looks(place, tmp_path):
  qc = {"quant_method": "fp8"}
  config = {"top": {"quantization_config": qc},
            "text_config": {"text_config": {"quantization_config": qc, "hidden_size": 4}},
            "compression_config": {"compression_config": qc}}[place]
  folder = _save(tmp_path, {f"{M}.weight": _codes((2, 2), 0).view(F8),
                            f"{M}.weight_scale": torch.tensor(1.0)}, config)
  plan, _ = _ours(folder)
  assert set(plan.weights) == {f"{M}.weight"}
  assert plan.config(config) == ({"text_config": {"hidden_size": 4}}
                                 if place == "text_config" else {})


def test_default_dtype_follows_the_config(tmp_path):
  folder = _save(tmp_path, {f"{M}.weight": _codes((2, 2), 0).view(F8),
                            f"{M}.weight_scale": torch.tensor(1.0)},
                 {"dtype": "float16", "quantization_config": {"quant_method": "fp8"}})
  plan, _ = _ours(folder)
  assert plan.weights[f"{M}.weight"].dtype == "F16"


_CHANNEL = ref.ct_config(ref.ct_scheme("FP8_DYNAMIC"))
_NVFP4 = ref.ct_config(ref.ct_scheme("NVFP4"))
_INT8 = ref.ct_config(ref.ct_scheme("W8A16"))
_BAD = {
    "ct-missing-scale": (
        {f"{M}.weight": _codes((4, 32), 0).view(F8)}, {"quantization_config": _CHANNEL},
        [f"tensor '{M}.weight'", f"'{M}.weight_scale' is not in the checkpoint"]),
    "ct-scale-shape": (
        {f"{M}.weight": _codes((4, 32), 0).view(F8), f"{M}.weight_scale": torch.ones(4)},
        {"quantization_config": _CHANNEL},
        [f"tensor '{M}.weight_scale'", "expected shape [4, 1]", "got [4]"]),
    "ct-scale-dtype": (
        {f"{M}.weight_packed": _codes((4, 16), 0), f"{M}.weight_scale": torch.ones(4, 2),
         f"{M}.weight_global_scale": torch.ones(1)}, {"quantization_config": _NVFP4},
        [f"tensor '{M}.weight_scale'", "expected dtype F8_E4M3", "got F32"]),
    "ct-missing-global": (
        {f"{M}.weight_packed": _codes((4, 16), 0),
         f"{M}.weight_scale": torch.ones(4, 2).to(F8)}, {"quantization_config": _NVFP4},
        [f"tensor '{M}.weight_packed'", f"'{M}.weight_global_scale' is not in the checkpoint"]),
    "ct-unsupported-scheme": (
        {f"{M}.weight": torch.ones(4, 32, dtype=torch.int8), f"{M}.weight_scale": torch.ones(4, 1)},
        {"quantization_config": _INT8}, [f"tensor '{M}.weight'", "int 8-bit", "does not read"]),
    "ct-transform": (
        {f"{M}.weight": _codes((4, 32), 0).view(F8), f"{M}.weight_scale": torch.ones(4, 1)},
        {"quantization_config": _CHANNEL | {"transform_config": {"config_groups": {"r": {}}}}},
        ["transform_config", "cannot undo"]),
    "fp8-block-shape": (
        {f"{M}.weight": _codes((10, 20), 0).view(F8), f"{M}.weight_scale_inv": torch.ones(2, 2)},
        {"quantization_config": {"quant_method": "fp8", "weight_block_size": [4, 8]}},
        [f"tensor '{M}.weight_scale_inv'", "expected shape [3, 3]", "got [2, 2]"]),
    "fp8-no-scale": (
        {f"{M}.weight": _codes((10, 20), 0).view(F8)}, {"quantization_config": {
            "quant_method": "fp8"}}, [f"tensor '{M}.weight'", "without a scale"]),
    "unknown-method": (
        {f"{M}.qweight": torch.ones(2, 2, dtype=torch.int32)},
        {"quantization_config": {"quant_method": "gptq", "bits": 4}},
        ["config.json", "quant_method 'gptq'"]),
    "modelopt-algo": (
        {f"{M}.weight": _codes((2, 2), 0).view(F8)},
        {"quantization_config": {"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"}},
        ["quant_algo 'W4A8_AWQ'"]),
    "gpt-oss-no-blocks": (
        {"experts.down_proj_scales": _codes((1, 2, 1), 0)},
        {"quantization_config": {"quant_method": "mxfp4"}},
        ["tensor 'experts.down_proj_scales'", "'experts.down_proj_blocks'"]),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_bad_checkpoints_are_one_error_naming_the_tensor(case, tmp_path):
  tensors, config, expected = _BAD[case]
  folder = _save(tmp_path, tensors, config)
  with pytest.raises(CheckpointError) as e:
    foreign.detect(open_checkpoint(folder))
  message = str(e.value)
  assert "\n" not in message
  for part in expected:
    assert part in message, message


# --- through the command line -------------------------------------------------------

@pytest.mark.parametrize("case", ["fp8-block-bf16-edges", "nvfp4", "mxfp4"])
@pytest.mark.parametrize("dtype", [None, "f32"])
def test_fp8jax_dequantize_writes_what_the_producer_decompresses(case, dtype, tmp_path):
  from safetensors.torch import load_file

  from fp8jax import cli

  make_scheme, shape, wdtype = CT_CASES[case]
  src = tmp_path / "in"
  src.mkdir()
  ref.ct_checkpoint(str(src), make_scheme(), _wide(shape, wdtype, seed=7))
  with open(src / "tokenizer.json", "w") as f:
    f.write("{}")
  want = ref.ct_dequantize(str(src))
  out = tmp_path / "out"
  argv = ["dequantize", str(src), str(out), "-q"] + (["--dtype", dtype] if dtype else [])
  assert cli.main(argv) == 0
  got = load_file(str(out / "model.safetensors"))
  name = f"{M}.weight"
  expected = want[name].to(torch.float32 if dtype else wdtype)
  assert got[name].dtype == expected.dtype and got[name].shape == expected.shape
  _same(got[name].float().numpy(), expected.float())
  assert set(got) == {name, "lm_head.weight"}  # scales dropped, the ignored module kept
  config = json.load(open(out / "config.json"))
  assert "quantization_config" not in config
  assert (out / "tokenizer.json").read_text() == "{}"


def test_fp8jax_dequantize_refuses_an_inconsistent_checkpoint(tmp_path, capsys):
  from fp8jax import cli

  src = tmp_path / "in"
  src.mkdir()
  _save(src, {f"{M}.weight": _codes((4, 32), 1).view(F8)},
        {"quantization_config": ref.ct_config(ref.ct_scheme("FP8_DYNAMIC"))})
  assert cli.main(["dequantize", str(src), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"{M}.weight" in err[0], err
  assert not (tmp_path / "out").exists()


def test_fp8jax_inspect_shows_what_each_weight_dequantizes_to(tmp_path, capsys):
  from fp8jax import cli

  make_scheme, shape, wdtype = CT_CASES["fp8-block-bf16-edges"]
  ref.ct_checkpoint(str(tmp_path), make_scheme(), _wide(shape, wdtype, seed=9))
  want = ref.ct_dequantize(str(tmp_path))[f"{M}.weight"].float()
  assert cli.main(["inspect", str(tmp_path), "--match", f"{M}*"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "quantized by compressed-tensors float-quantized (block)"
  line = next(x for x in lines if x.startswith(f"{M}.weight  F8_E4M3 [10, 20]  -> "))
  top = float(line.split("amax ")[1].split(";")[0])
  assert top == pytest.approx(float(want.abs().max()), rel=1e-5)
  assert f"scales {M}.weight_scale" in line
  assert not any(x.startswith(f"{M}.weight_scale ") for x in lines)  # shown with its weight


@pytest.mark.parametrize("case", ["fp8-block-f32-128", "fp8-channel-bf16", "fp8-tensor-f32",
                                  "nvfp4", "mxfp6"])
def test_large_weights_dequantize_in_pieces_of_rows_to_the_same_bytes(case, tmp_path,
                                                                      monkeypatch):
  from fp8jax import cli
  from fp8jax.checkpoint import chunks

  make_scheme, shape, wdtype = CT_CASES[case]
  shape = (260, shape[1]) if case != "fp8-block-f32-128" else shape  # ragged last piece
  src = tmp_path / "in"
  src.mkdir()
  ref.ct_checkpoint(str(src), make_scheme(), _wide(shape, wdtype, seed=11))
  plan = foreign.detect(open_checkpoint(str(src)))
  w = plan.weights[next(iter(plan.weights))]
  assert cli.main(["dequantize", str(src), str(tmp_path / "whole"), "-q"]) == 0
  monkeypatch.setattr(chunks, "CHUNK_BYTES", 4 * shape[1] * 3)  # a few rows a piece
  assert len(list(w.read_rows())) >= 2
  assert cli.main(["dequantize", str(src), str(tmp_path / "pieces"), "-q"]) == 0
  a = (tmp_path / "whole" / "model.safetensors").read_bytes()
  b = (tmp_path / "pieces" / "model.safetensors").read_bytes()
  assert a == b
