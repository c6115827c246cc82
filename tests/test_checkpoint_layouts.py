"""The stored layouts: names, dtypes and shapes per (format, scaling), configs, defaults, refusals.

What the stacks themselves make of these files is in test_checkpoint_consumers.py.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from fp8jax.checkpoint.layouts import (
    LAYOUT_NAMES,
    LAYOUTS,
    ONLY_FP8JAX,
    default_layout,
    get_layout,
    read_config,
)
from fp8jax.checkpoint.safetensors_io import DTYPES, TensorInfo
from fp8jax.checkpoint.selection import Selection, kept_module
from fp8jax.checkpoint.stored import WeightLayout
from fp8jax.quant.spec import NVFP4, Axis, Block, QuantSpec

CT, VLLM, MODELOPT, FP8JAX = (get_layout(n) for n in LAYOUT_NAMES)
SHAPE = (96, 64)


def wl(fmt: str, scaling: str) -> WeightLayout:
  return WeightLayout.parse(fmt, scaling)


def nvfp4(rule: str, **kw) -> WeightLayout:
  return WeightLayout(QuantSpec("e2m1fn", NVFP4(rule, **kw)))


def _id(w: WeightLayout) -> str:
  return w.describe().replace(" ", "-")


# (weight layout, layout) -> the tensors of `w.weight` of SHAPE [96, 64].
TENSORS = [
    (wl("e4m3fn", "tensor"), CT, [("w.weight", "F8_E4M3", (96, 64)),
                                  ("w.weight_scale", "F32", (1,))]),
    (wl("e4m3fn", "axis"), CT, [("w.weight", "F8_E4M3", (96, 64)),
                                ("w.weight_scale", "F32", (96, 1))]),
    (wl("e4m3fn", "block:32"), CT, [("w.weight", "F8_E4M3", (96, 64)),
                                    ("w.weight_scale", "F32", (96, 2))]),
    (wl("e4m3fn", "block:64x48"), CT, [("w.weight", "F8_E4M3", (96, 64)),
                                       ("w.weight_scale", "F32", (2, 2))]),
    (nvfp4("compressed-tensors"), CT, [("w.weight_packed", "U8", (96, 32)),
                                       ("w.weight_scale", "F8_E4M3", (96, 4)),
                                       ("w.weight_global_scale", "F32", (1,))]),
    (wl("e4m3fn", "mx"), CT, [("w.weight", "F8_E4M3", (96, 64)), ("w.weight_scale", "U8", (96, 2))]),
    (wl("e2m1fn", "mx"), CT, [("w.weight_packed", "U8", (96, 32)),
                              ("w.weight_scale", "U8", (96, 2))]),
    (wl("e2m3fn", "mx:rceil"), CT, [("w.weight_packed", "U8", (96, 48)),
                                    ("w.weight_scale", "U8", (96, 2))]),
    (wl("e4m3fn", "tensor"), VLLM, [("w.weight", "F8_E4M3", (96, 64)),
                                    ("w.weight_scale", "F32", ())]),
    (wl("e4m3fn", "block:128x128"), VLLM, [("w.weight", "F8_E4M3", (96, 64)),
                                           ("w.weight_scale_inv", "F32", (1, 1))]),
    (nvfp4("modelopt"), MODELOPT, [("w.weight", "U8", (96, 32)),
                                   ("w.weight_scale", "F8_E4M3", (96, 4)),
                                   ("w.weight_scale_2", "F32", ())]),
    (nvfp4("torchao"), MODELOPT, [("w.weight", "U8", (96, 32)),
                                  ("w.weight_scale", "F8_E4M3", (96, 4)),
                                  ("w.weight_scale_2", "F32", ())]),
    (wl("e5m2", "tensor"), FP8JAX, [("w.weight_fp8jax_codes", "F8_E5M2", (96, 64)),
                                    ("w.weight_fp8jax_scale", "F32", ())]),
    (wl("e3m4", "block:32"), FP8JAX, [("w.weight_fp8jax_codes", "U8", (96, 64)),
                                      ("w.weight_fp8jax_scale", "F32", (96, 2))]),
    (wl("e3m2fn", "mx"), FP8JAX, [("w.weight_fp8jax_codes", "U8", (96, 64)),
                                  ("w.weight_fp8jax_scale", "U8", (96, 2))]),
    (nvfp4("te"), FP8JAX, [("w.weight_fp8jax_codes", "U8", (96, 64)),
                           ("w.weight_fp8jax_scale", "F8_E4M3", (96, 4)),
                           ("w.weight_fp8jax_tensor_scale", "F32", ())]),
]


def _tensor_id(case) -> str:
  w, layout, _ = case
  return f"{layout.name}-{_id(w)}"


@pytest.mark.parametrize("case", TENSORS, ids=_tensor_id)
def test_tensors_have_the_names_dtypes_and_shapes_their_loaders_expect(case):
  w, layout, expected = case
  assert [(e.name, e.dtype, e.shape) for e in layout.tensors("w.weight", SHAPE, w)] == expected


def _weight(shape=SHAPE, dtype=jnp.bfloat16) -> jnp.ndarray:
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  return jnp.asarray(x * np.linspace(0.01, 3, shape[-1], dtype=np.float32)).astype(dtype)


@pytest.mark.parametrize("case", TENSORS, ids=_tensor_id)
def test_stored_tensors_fit_their_entries_and_read_back(case):
  w, layout, _ = case
  x = _weight()
  q = w.quantize(x)
  stored = layout.stored_tensors("w.weight", q)
  entries = layout.tensors("w.weight", SHAPE, w)
  assert list(stored) == [e.name for e in entries]
  for e in entries:
    a = stored[e.name]
    assert a.shape == e.shape and a.dtype.itemsize == DTYPES[e.dtype].itemsize, e
  back = layout.qarray("w.weight", stored, w, x.dtype)
  np.testing.assert_array_equal(np.asarray(fp8jax.dequantize(back, jnp.float32)),
                                np.asarray(fp8jax.dequantize(q, jnp.float32)))


def test_packed_fp4_codes_read_back_packed():
  w = WeightLayout(QuantSpec("e2m1fn", NVFP4("compressed-tensors"), pack=True))
  q = w.quantize(_weight())
  back = CT.qarray("w.weight", CT.stored_tensors("w.weight", q), w, jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(back.bits), np.asarray(q.bits))
  assert back.packed and back.shape == SHAPE


def test_compressed_tensors_scales_are_what_it_multiplies_by():
  # Per tensor, the [1] scale is the multiplier; NVFP4's global scale is its encoding 2688/amax.
  x = _weight(dtype=jnp.float32)
  q = wl("e4m3fn", "tensor").quantize(x)
  assert CT.stored_tensors("w.weight", q)["w.weight_scale"][0] == np.float32(q.scale)
  q = nvfp4("compressed-tensors").quantize(x)
  g = CT.stored_tensors("w.weight", q)["w.weight_global_scale"][0]
  assert g == np.float32(q.tensor_scale) and 2688 / g == pytest.approx(float(jnp.abs(x).max()),
                                                                       rel=1e-6)


def test_fp6_codes_pack_as_compressed_tensors_packs_them():
  torch = pytest.importorskip("torch")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    helpers = pytest.importorskip("compressed_tensors.compressors.mxfp6.helpers")
  codes = np.arange(64, dtype=np.uint8).reshape(2, 32)  # every code, one MX block a row
  q = fp8jax.QArray(jnp.asarray(codes), jnp.full((2, 1), 127, jnp.uint8),
                    QuantSpec("e2m3fn", fp8jax.MX()).resolved(2), np.dtype(np.float32))
  packed = CT.stored_tensors("w.weight", q)["w.weight_packed"]
  values = np.asarray(fp8jax.decode(jnp.asarray(codes), "e2m3fn", jnp.float32))
  expected = helpers.pack_fp6_to_uint8(torch.from_numpy(values.copy()))
  np.testing.assert_array_equal(packed, expected.numpy())


# --- which layout holds what ------------------------------------------------------------------

DEFAULTS = [
    (wl("e4m3fn", "tensor"), "compressed-tensors"),
    (wl("e4m3fn", "channel"), "compressed-tensors"),
    (wl("e4m3fn", "block:128"), "compressed-tensors"),
    (wl("e4m3fn", "block:128x128"), "vllm"),  # what transformers and vLLM's CPU build load
    (wl("e4m3fn", "block:64x64"), "compressed-tensors"),
    (wl("e4m3fn", "mx"), "compressed-tensors"),
    (wl("e2m1fn", "mx:even"), "compressed-tensors"),
    (wl("e2m3fn", "mx"), "compressed-tensors"),
    (nvfp4("compressed-tensors"), "compressed-tensors"),
    (nvfp4("modelopt"), "modelopt"),
    (nvfp4("torchao"), "modelopt"),
    (nvfp4("te"), "fp8jax"),
    (nvfp4("compressed-tensors", block=(16, 16)), "fp8jax"),
    (nvfp4("modelopt", stacked=True), "fp8jax"),
    (wl("e5m2", "tensor"), "fp8jax"),
    (wl("e5m2", "block:128x128"), "fp8jax"),
    (wl("e4m3fnuz", "tensor"), "fp8jax"),
    (wl("e3m4", "axis"), "fp8jax"),
    (wl("e2m3fn", "axis"), "fp8jax"),
    (wl("e3m2fn", "mx"), "fp8jax"),
    (wl("e5m2", "mx"), "fp8jax"),
    (WeightLayout(QuantSpec("e4m3fn", Axis(-2))), "fp8jax"),
    (WeightLayout(QuantSpec("e4m3fn", Block((32,), (-2,)))), "fp8jax"),
    (WeightLayout(QuantSpec(fp8jax.Format(4, 3, 9, "fn"), Axis(-1))), "fp8jax"),
]


@pytest.mark.parametrize("w, expected", DEFAULTS, ids=[_id(w) for w, _ in DEFAULTS])
def test_default_layout_is_the_first_that_holds_the_weights(w, expected):
  assert default_layout(w) == expected
  assert LAYOUTS[expected].holds(w)
  if expected == "vllm":
    return  # chosen over compressed-tensors for 128x128 tiles, which both hold
  for name in LAYOUT_NAMES[:LAYOUT_NAMES.index(expected)]:
    if name != "vllm":  # vLLM's fp8 holds a subset of compressed-tensors' FP8
      assert not LAYOUTS[name].holds(w), name


REFUSALS = [
    (VLLM, wl("e5m2", "tensor"), "vllm holds e4m3fn per tensor or in 128x128 tiles "
                                 "(got e5m2 tensor)"),
    (VLLM, wl("e4m3fn", "axis"), "vllm holds e4m3fn per tensor or in 128x128 tiles "
                                 "(got e4m3fn axis)"),
    (CT, wl("e5m2", "axis"), "compressed-tensors holds FP8 weights as e4m3fn (got e5m2 axis)"),
    (CT, wl("e3m2fn", "mx"), "compressed-tensors holds MX elements e4m3fn, e2m1fn or e2m3fn "
                             "(got e3m2fn mx)"),
    (CT, nvfp4("te"), "compressed-tensors holds NVFP4 made with nvfp4_rule 'compressed-tensors', "
                      "whose tensor scale it stores (got e2m1fn nvfp4:te)"),
    (CT, WeightLayout(QuantSpec("e4m3fn", Axis(-2))),
     "compressed-tensors holds scales per tensor, per output channel, in 1-D groups along the "
     "input axis, in 2-D blocks, MX or NVFP4 (got e4m3fn axis)"),
    (MODELOPT, wl("e4m3fn", "tensor"), "modelopt holds NVFP4 in 16-element blocks along the "
                                       "input axis made with nvfp4_rule 'modelopt' or 'torchao' "
                                       "(got e4m3fn tensor)"),
]


@pytest.mark.parametrize("layout, w, why", REFUSALS, ids=[f"{c[0].name}-{_id(c[1])}"
                                                         for c in REFUSALS])
def test_a_layout_says_in_one_line_why_it_cannot_hold_weights(layout, w, why):
  assert layout.refusal(w) == why
  with pytest.raises(ValueError, match="holds"):
    layout.stored_tensors("w.weight", w.quantize(_weight()))


def test_fp8jax_holds_everything_and_warns():
  assert all(FP8JAX.holds(w) for w, _ in DEFAULTS)
  assert FP8JAX.warning == ONLY_FP8JAX == "only `fp8jax dequantize` reads this layout"
  assert all(LAYOUTS[n].warning is None for n in LAYOUT_NAMES[:-1])


@pytest.mark.parametrize("layout, name, shape, w, why", [
    (CT, "w.weight", (8, 96, 64), wl("e4m3fn", "tensor"), "stores 2-D weights"),
    (CT, "experts.gate_up_proj", (96, 64), wl("e4m3fn", "tensor"), "named X.weight"),
    (CT, "w.weight", (96, 48), wl("e4m3fn", "block:32"), "multiple of 32"),
    (CT, "w.weight", (96, 48), wl("e2m1fn", "mx"), "multiple of 32"),
    (MODELOPT, "w.weight", (96, 40), nvfp4("modelopt"), "multiple of 16"),
    (VLLM, "w.weight", (96, 64), wl("e5m2", "tensor"), "holds e4m3fn"),
])
def test_tensor_refusal_names_what_a_loader_could_not_read(layout, name, shape, w, why):
  assert why in layout.tensor_refusal(name, shape, w)


@pytest.mark.parametrize("layout, name, shape, w", [
    (CT, "w.weight", (100, 70), wl("e4m3fn", "block:32x32")),  # tiles need not divide
    (VLLM, "w.weight", (100, 70), wl("e4m3fn", "block:128x128")),
    (FP8JAX, "experts", (8, 96, 40), nvfp4("te", stacked=True)),
])
def test_tensor_refusal_is_none_where_the_loaders_cope(layout, name, shape, w):
  assert layout.tensor_refusal(name, shape, w) is None


def test_unknown_layouts_are_refused_by_name():
  with pytest.raises(ValueError, match="layout must be one of compressed-tensors, vllm, "
                                       "modelopt, fp8jax"):
    get_layout("gguf")


# --- quantization_config ----------------------------------------------------------------------

CT_HELD = [w for w, name in DEFAULTS if name == "compressed-tensors"]
IGNORED = ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.mlp.gate.weight"]


@pytest.mark.parametrize("w", CT_HELD, ids=_id)
def test_compressed_tensors_accepts_its_config(w):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    quant = pytest.importorskip("compressed_tensors.quantization")
  for weight_only in (False, True):
    config = CT.quantization_config(w, IGNORED, weight_only)
    parsed = quant.QuantizationConfig.model_validate(config)
    scheme = parsed.config_groups["group_0"]
    assert isinstance(scheme, quant.QuantizationScheme)
    acts = scheme.input_activations
    fp8 = w.fmt.name == "e4m3fn" and w.spec.kind in ("tensor", "axis") or (
        w.spec.kind == "block" and len(w.block) == 2)
    if weight_only or not fp8:
      assert acts is None
    else:  # llm-compressor's FP8_DYNAMIC and FP8_BLOCK: what vLLM serves on every backend
      assert (acts.num_bits, acts.type, acts.dynamic, acts.symmetric) == (8, "float", True, True)
      assert acts.strategy == ("group" if w.spec.kind == "block" else "token")
      if w.spec.kind == "block":
        assert acts.group_size == w.block[1]
    assert parsed.quantization_status == "compressed" and parsed.format == CT.format(w)
    assert parsed.ignore == ["lm_head", "model.embed_tokens", "model.layers.0.mlp.gate"]
    assert quant.QuantizationScheme.model_validate(config["config_groups"]["group_0"]) == scheme


@pytest.mark.parametrize("w, fmt, weights", [
    (wl("e4m3fn", "tensor"), "float-quantized", {"strategy": "tensor"}),
    (wl("e4m3fn", "axis"), "float-quantized", {"strategy": "channel"}),
    (wl("e4m3fn", "block:64"), "float-quantized", {"strategy": "group", "group_size": 64}),
    (wl("e4m3fn", "block:128x64"), "float-quantized",
     {"strategy": "block", "block_structure": [128, 64]}),
    (nvfp4("compressed-tensors"), "nvfp4-pack-quantized",
     {"num_bits": 4, "strategy": "tensor_group", "group_size": 16,
      "scale_dtype": "torch.float8_e4m3fn"}),
    (wl("e4m3fn", "mx"), "mxfp8-quantized",
     {"num_bits": 8, "strategy": "group", "group_size": 32, "scale_dtype": "torch.uint8"}),
    (wl("e2m1fn", "mx"), "mxfp4-pack-quantized", {"num_bits": 4, "group_size": 32}),
    (wl("e2m3fn", "mx"), "mxfp6-pack-quantized", {"num_bits": 6, "group_size": 32}),
], ids=lambda v: _id(v) if isinstance(v, WeightLayout) else None)
def test_compressed_tensors_config_names_format_and_strategy(w, fmt, weights):
  config = CT.quantization_config(w, [])
  assert config["quant_method"] == "compressed-tensors" and config["format"] == fmt
  scheme = config["config_groups"]["group_0"]
  assert scheme["targets"] == ["Linear"] and scheme["format"] == fmt
  assert weights.items() <= scheme["weights"].items()
  assert scheme["weights"]["type"] == "float" and scheme["weights"]["symmetric"]


def test_vllm_config_is_the_fp8_method():
  config = VLLM.quantization_config(wl("e4m3fn", "block:128x128"), ["lm_head.weight"])
  assert config == {"quant_method": "fp8", "activation_scheme": "dynamic",
                    "weight_block_size": [128, 128], "ignored_layers": ["lm_head"],
                    "modules_to_not_convert": ["lm_head"]}
  assert "weight_block_size" not in VLLM.quantization_config(wl("e4m3fn", "tensor"), [])


def test_modelopt_config_and_hf_quant_config():
  w = nvfp4("modelopt")
  assert MODELOPT.quantization_config(w, ["lm_head.weight"]) == {
      "quant_method": "modelopt", "quant_algo": "W4A16_NVFP4", "group_size": 16,
      "ignore": ["lm_head"], "kv_cache_scheme": None}
  side = MODELOPT.side_files(w, ["lm_head.weight"])
  assert side == {"hf_quant_config.json": {
      "producer": {"name": "fp8jax", "version": fp8jax.__version__},
      "quantization": {"quant_algo": "W4A16_NVFP4", "kv_cache_quant_algo": None,
                       "group_size": 16, "exclude_modules": ["lm_head"]}}}
  assert all(LAYOUTS[n].side_files(wl("e4m3fn", "tensor"), []) == {}
             for n in ("compressed-tensors", "vllm", "fp8jax"))


def test_fp8jax_config_has_no_quant_method():
  # transformers refuses a quantization_config without quant_method; an unknown one it loads
  # with its weights randomly initialized.
  config = FP8JAX.quantization_config(wl("e5m2", "tensor"), ["lm_head.weight"])
  assert "quant_method" not in config
  assert config == {"layout": "fp8jax", "note": ONLY_FP8JAX, "format": "e5m2",
                    "scaling": "tensor", "codes_suffix": "_fp8jax_codes", "codes_dtype": "F8_E5M2",
                    "scale_suffix": "_fp8jax_scale", "scale_dtype": "F32", "ignore": ["lm_head"]}


ROUND_TRIPS = [(LAYOUTS[name], w) for w, name in DEFAULTS] + [
    (VLLM, wl("e4m3fn", "tensor")), (VLLM, wl("e4m3fn", "block:128x128")),
    (FP8JAX, wl("e4m3fn", "tensor")), (FP8JAX, nvfp4("te", block=(16, 16))),
    (FP8JAX, nvfp4("torchao", stacked=True)), (FP8JAX, nvfp4("te", axis=-2)),
    (FP8JAX, WeightLayout(QuantSpec("e5m2", Block((32, 8), (-1, -2))))),
    (FP8JAX, WeightLayout(QuantSpec("e4m3fn", fp8jax.MX(axis=-2, rule="ceil"))))]


@pytest.mark.parametrize("layout, w", ROUND_TRIPS, ids=[f"{c[0].name}-{_id(c[1])}"
                                                       for c in ROUND_TRIPS])
def test_read_config_gives_back_layout_and_weight_layout(layout, w):
  got_layout, got = read_config(layout.quantization_config(w, []))
  assert got_layout is layout and got.fmt == w.fmt
  if layout.name == "modelopt" or (layout.name == "compressed-tensors" and w.spec.kind == "mx"):
    # The rule decides the codes, not how they decode: the config does not record it.
    assert got.spec.kind == w.spec.kind
  else:
    assert got.spec.granularity == w.spec.granularity


def test_read_config_refuses_other_configs():
  with pytest.raises(ValueError, match="not a quantization_config fp8jax writes"):
    read_config({"quant_method": "gptq"})


# --- the router rule --------------------------------------------------------------------------

@pytest.mark.parametrize("name, why", [
    ("model.layers.0.block_sparse_moe.gate.weight", "router"),  # Mixtral
    ("model.layers.3.mlp.gate.weight", "router"),  # Qwen MoE, DeepSeek, OLMoE
    ("model.layers.3.mlp.shared_expert_gate.weight", "router"),  # Qwen2-MoE
    ("model.layers.1.feed_forward.router.weight", "router"),  # Llama 4
    ("transformer.blocks.0.ffn.router.layer.weight", "router"),  # DBRX
    ("model.visual.blocks.0.attn.qkv.weight", "vision or audio tower"),
    ("vision_tower.encoder.layers.0.mlp.fc1.weight", "vision or audio tower"),
    ("multi_modal_projector.linear_1.weight", "vision or audio tower"),
    ("model.embed_tokens.weight", "embed"),
    ("lm_head.weight", "lm_head"),
    ("model.layers.0.self_attn.q_norm.weight", "norm"),
    ("model.layers.0.mlp.gate_proj.weight", None),
    ("model.layers.0.mlp.gate_up_proj.weight", None),
    ("model.layers.0.block_sparse_moe.experts.3.w1.weight", None),
    ("model.layers.0.mlp.experts.gate_up_proj", None),
    ("model.layers.0.self_attn.o_proj.weight", None),
])
def test_the_default_rule_keeps_what_the_stacks_keep(name, why):
  assert kept_module(name) == why
  t = TensorInfo(name, "BF16", (16, 8), 0, 256)
  assert Selection().reason(t) == ("quantized" if why is None else f"kept ({why})")


def test_include_quantizes_a_router_and_exclude_wins():
  t = TensorInfo("model.layers.0.mlp.gate.weight", "BF16", (8, 64), 0, 1024)
  assert Selection(include=("*.gate.weight",)).reason(t) == "quantized (--include)"
  assert Selection(include=("*.gate.weight",), exclude=("*gate*",)).reason(t) == "kept (--exclude)"
