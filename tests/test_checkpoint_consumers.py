"""The layouts against their real readers: transformers and compressed-tensors, on CPU.

Tiny random models (Llama, Mixtral, BERT) are built here and saved with
`save_pretrained`; `write_quantized` writes each as a quantized folder through
`fp8jax.checkpoint.layouts`, and `write_dequantized` writes the plain checkpoint
of the weights fp8jax dequantizes. The checks take folders, so that they
can be pointed at the output of `fp8jax quantize --layout ...` as well:

- `check_transformers_loads`: `from_pretrained` on the quantized folder, unchanged,
  gives the logits of the dequantized folder (exactly, or with cosine >= 0.9999
  where transformers dequantizes otherwise: bfloat16 models round compressed-tensors'
  float32 scales to bfloat16), and its weights are fp8jax's dequantized values;
- `check_ct_decompresses`: compressed-tensors' own decompression of each stored
  weight equals fp8jax's dequantized weight bit for bit;
- the fp8jax layout and ModelOpt's are refused, never read as raw codes.

vLLM is not installed here; what vLLM reads is in `layouts`' docstring.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from fp8jax.checkpoint import safetensors_io as st
from fp8jax.checkpoint.layouts import default_layout, get_layout, read_config
from fp8jax.checkpoint.pipeline import quantize_checkpoint
from fp8jax.checkpoint.selection import Selection
from fp8jax.checkpoint.stored import WeightLayout
from fp8jax.quant.spec import NVFP4, QuantSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here; nothing to download
torch = pytest.importorskip("torch", reason="the consumers need torch (extra 'torch')")
transformers = pytest.importorskip("transformers", reason="the consumers need transformers")
with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  ct_compressors = pytest.importorskip("compressed_tensors.compressors",
                                       reason="the consumers need compressed-tensors")
  from compressed_tensors.quantization import QuantizationConfig

transformers.logging.set_verbosity_error()

TOKENS = [[1, 5, 9, 13, 200, 77, 3, 42]]
_TORCH = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U8": torch.uint8,
          "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_JNP = {torch.float32: jnp.float32, torch.bfloat16: jnp.bfloat16}
_NP = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}
_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              vocab_size=256, max_position_embeddings=64)


def spec(fmt: str, scaling: str) -> WeightLayout:
  return WeightLayout.parse(fmt, scaling)


NVFP4_CT = WeightLayout(QuantSpec("e2m1fn", NVFP4("compressed-tensors")))
NVFP4_MODELOPT = WeightLayout(QuantSpec("e2m1fn", NVFP4("modelopt")))


# --- writing (to be replaced by `fp8jax quantize --layout`) ----------------------------------

def _read(folder: str) -> tuple[dict[str, st.TensorInfo], dict[str, np.ndarray]]:
  path = os.path.join(folder, "model.safetensors")
  infos = {t.name: t for t in st.read_header(path).tensors}
  with open(path, "rb") as f:
    return infos, {name: st.read_tensor(f, t) for name, t in infos.items()}


def _write(path: str, entries: list[st.Entry], arrays: dict[str, np.ndarray]) -> None:
  with st.Writer(path, entries, {"format": "pt"}) as w:
    for e in entries:
      w.write(e.name, arrays[e.name])


def _copy_side_files(src: str, out: str) -> dict:
  os.makedirs(out, exist_ok=True)
  for name in os.listdir(src):
    if name.endswith(".json") and name != "config.json":
      shutil.copy(os.path.join(src, name), out)
  with open(os.path.join(src, "config.json")) as f:
    return json.load(f)


def _quantized(src: str, wl: WeightLayout, layout_name: str):
  """Each selected weight's QArray (those the layout can store), and the names left as they are."""
  layout = get_layout(layout_name)
  infos, arrays = _read(src)
  qarrays, kept = {}, []
  for name, t in infos.items():
    if Selection().selects(t) and layout.tensor_refusal(name, t.shape, wl) is None:
      qarrays[name] = wl.quantize(jnp.asarray(arrays[name]))
    else:
      kept.append(name)
  return infos, arrays, qarrays, kept


def write_quantized(src: str, out: str, wl: WeightLayout, layout_name: str,
                    weight_only: bool = True) -> str:
  """The model folder `src` quantized as `wl` by `fp8jax quantize`'s pipeline, stored in the
  layout `layout_name`."""
  os.rmdir(out)  # the pipeline makes OUT itself
  # vLLM's fp8 layout always declares dynamic activations; the others can go without.
  quantize_checkpoint(src, out, wl, stored=layout_name,
                      weight_only=weight_only and layout_name != "vllm")
  return out


def write_dequantized(src: str, out: str, wl: WeightLayout, layout_name: str) -> str:
  """The model folder `src` with each weight `write_quantized` quantizes replaced by
  fp8jax's dequantized values, in the weight's dtype."""
  infos, arrays, qarrays, _ = _quantized(src, wl, layout_name)
  for name, q in qarrays.items():
    arrays[name] = np.asarray(fp8jax.dequantize(q, _NP[infos[name].dtype]))
  config = _copy_side_files(src, out)
  _write(os.path.join(out, "model.safetensors"),
         [st.Entry(n, t.dtype, t.shape) for n, t in infos.items()], arrays)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return out


# --- the consumers' checks, on folders -------------------------------------------------------

def _load(folder: str):
  with open(os.path.join(folder, "config.json")) as f:
    arch = json.load(f)["architectures"][0]
  auto = transformers.AutoModel if arch.startswith("Bert") else transformers.AutoModelForCausalLM
  return auto.from_pretrained(folder).eval()


def _outputs(model) -> torch.Tensor:
  with torch.no_grad():
    out = model(torch.tensor(TOKENS))
  return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def check_transformers_loads(quantized: str, dequantized: str, exact: bool) -> float:
  """`from_pretrained(quantized)` computes as `from_pretrained(dequantized)`; returns the cosine.

  The loaded weights (after the first forward pass, which decompresses
  compressed-tensors' layers) equal fp8jax's dequantized ones where `exact`.
  """
  model, ref = _load(quantized), _load(dequantized)
  got, want = _outputs(model), _outputs(ref)
  cos = float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0))
  if exact:
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    params = dict(model.named_parameters())
    for name, p in ref.named_parameters():
      assert torch.equal(params[name].data, p.data), name
  assert cos >= 0.9999, cos
  return cos


def _torch_tensors(folder: str) -> dict[str, torch.Tensor]:
  infos, arrays = _read(folder)
  out = {}
  for name, t in infos.items():
    a = torch.from_numpy(np.array(arrays[name]).reshape(-1).view(np.uint8)).view(_TORCH[t.dtype])
    out[name] = a.reshape(t.shape)
  return out


def check_ct_decompresses(quantized: str, dequantized: str) -> int:
  """compressed-tensors' decompression of every stored weight is fp8jax's, bit for bit.

  compressed-tensors' output (float32 for FP8, bfloat16 for NVFP4 and MX)
  equals `fp8jax.dequantize` of the weight read back with `layouts`, in that
  dtype, and the dequantized folder's weight once both are in the narrower
  of the two dtypes. Returns how many weights were compared.
  """
  with open(os.path.join(quantized, "config.json")) as f:
    config = json.load(f)["quantization_config"]
  qc = QuantizationConfig.model_validate(config)
  scheme = qc.config_groups["group_0"]
  compressor = ct_compressors.BaseCompressor.get_value_from_registry(scheme.format or qc.format)
  layout, wl = read_config(config)
  _, arrays = _read(quantized)
  stored, ref = _torch_tensors(quantized), _torch_tensors(dequantized)
  modules = {n.rpartition(".")[0] for n in stored if n.endswith(".weight_scale")}
  for module in sorted(modules):
    local = {n[len(module) + 1:]: v for n, v in stored.items() if n.rpartition(".")[0] == module}
    got = compressor.decompress(local, scheme)["weight"]
    want = ref[module + ".weight"]
    q = layout.qarray(module + ".weight", arrays, wl, np.float32)
    ours = fp8jax.dequantize(q, _JNP[got.dtype]).astype(jnp.float32)
    assert torch.equal(got, torch.from_numpy(np.array(ours)).to(got.dtype)), module
    narrow = got.dtype if got.element_size() < want.element_size() else want.dtype
    assert torch.equal(got.to(narrow), want.to(narrow)), module
  return len(modules)


# --- the models ------------------------------------------------------------------------------

def _save(model, folder: str) -> str:
  model.save_pretrained(folder, safe_serialization=True)
  return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
  root = tmp_path_factory.mktemp("models")
  torch.manual_seed(0)
  llama = transformers.LlamaConfig(num_key_value_heads=2, **_SMALL)
  mixtral = transformers.MixtralConfig(num_key_value_heads=2, num_local_experts=4,
                                       num_experts_per_tok=2, **_SMALL)
  bert = transformers.BertConfig(**_SMALL)
  return {
      "llama": _save(transformers.LlamaForCausalLM(llama), str(root / "llama")),
      "llama-bf16": _save(transformers.LlamaForCausalLM(llama).to(torch.bfloat16),
                          str(root / "llama-bf16")),
      "mixtral": _save(transformers.MixtralForCausalLM(mixtral), str(root / "mixtral")),
      "mixtral-bf16": _save(transformers.MixtralForCausalLM(mixtral).to(torch.bfloat16),
                            str(root / "mixtral-bf16")),
      "bert": _save(transformers.BertModel(bert), str(root / "bert")),
  }


@pytest.fixture(scope="module")
def folders(models, tmp_path_factory):
  """`folders(model, wl, layout, dequantized=False)`: the folder `write_quantized` (or
  `write_dequantized`) makes of a model, written once per module."""
  made: dict[tuple, str] = {}

  def make(model: str, wl: WeightLayout, layout: str, dequantized: bool = False) -> str:
    key = (model, wl, layout, dequantized)
    if key not in made:
      write = write_dequantized if dequantized else write_quantized
      made[key] = write(models[model], str(tmp_path_factory.mktemp("folder")), wl, layout)
    return made[key]

  return make


# (model, weight layout, layout, exact, bug): what transformers reads as fp8jax dequantizes.
# bug: (why transformers misreads or refuses it, the error that shows): a strict xfail, so that
# a transformers that reads it right fails here and the case moves up.
CASES = [
    ("llama", spec("e4m3fn", "tensor"), "compressed-tensors", True, None),
    ("llama", spec("e4m3fn", "axis"), "compressed-tensors", True, None),
    ("llama", spec("e4m3fn", "block:32"), "compressed-tensors", True, None),
    ("llama", spec("e4m3fn", "block:32x32"), "compressed-tensors", True, None),
    ("llama", spec("e4m3fn", "block:48x40"), "compressed-tensors", True, None),
    ("llama", spec("e4m3fn", "block:128x128"), "vllm", True, None),
    ("llama", spec("e4m3fn", "tensor"), "vllm", True,
     ("transformers 5.24 reads only weight_scale_inv, in 128x128 tiles", AssertionError)),
    # compressed-tensors decompresses NVFP4 and MX to bfloat16, which a float32 model
    # cannot multiply by: those are bfloat16 models' formats.
    ("llama-bf16", NVFP4_CT, "compressed-tensors", True, None),
    ("llama-bf16", spec("e4m3fn", "mx"), "compressed-tensors", True, None),
    ("llama-bf16", spec("e2m1fn", "mx"), "compressed-tensors", True, None),
    ("llama-bf16", spec("e2m3fn", "mx"), "compressed-tensors", True, None),
    # transformers casts the float32 scales to the model's bfloat16.
    ("llama-bf16", spec("e4m3fn", "axis"), "compressed-tensors", False, None),
    ("mixtral", spec("e4m3fn", "tensor"), "compressed-tensors", True, None),
    ("mixtral", spec("e4m3fn", "axis"), "compressed-tensors", True, None),
    ("mixtral", spec("e4m3fn", "block:32x32"), "compressed-tensors", True,
     ("transformers 5.24 folds FP8 expert scales in by broadcasting, which tiles do not",
      RuntimeError)),
    ("mixtral-bf16", NVFP4_CT, "compressed-tensors", True,
     ("transformers 5.24 decompresses NVFP4 experts without their weight_global_scale",
      AssertionError)),
    ("bert", spec("e4m3fn", "axis"), "compressed-tensors", True, None),
]


def _id(model: str, wl: WeightLayout, layout: str) -> str:
  return f"{model}-{wl.describe().replace(' ', '-')}-{layout}"


def _params(cases, marks: bool) -> list:
  def xfail(bug):
    return pytest.mark.xfail(strict=True, reason=bug[0], raises=bug[1]) if bug and marks else ()

  return [pytest.param(model, wl, layout, exact, id=_id(model, wl, layout), marks=xfail(bug))
          for model, wl, layout, exact, bug in cases]


@pytest.mark.parametrize("model, wl, layout, exact", _params(CASES, marks=True))
def test_transformers_loads_the_layout(folders, model, wl, layout, exact):
  check_transformers_loads(folders(model, wl, layout), folders(model, wl, layout, True), exact)


@pytest.mark.parametrize("model, wl, layout, exact", _params(
    [c for c in CASES if c[2] == "compressed-tensors"], marks=False))
def test_compressed_tensors_decompresses_as_fp8jax(folders, model, wl, layout, exact):
  del exact
  assert check_ct_decompresses(folders(model, wl, layout), folders(model, wl, layout, True)) > 0


def test_the_default_layouts_are_the_ones_transformers_reads():
  for _, wl, layout, _, bug in CASES:
    if bug is None and wl.scaling != "block:128x128":
      assert default_layout(wl) == layout, wl.describe()
  assert default_layout(spec("e4m3fn", "block:128x128")) == "vllm"  # read exactly, above


def test_routers_stay_unquantized(folders):
  quantized = folders("mixtral", spec("e4m3fn", "tensor"), "compressed-tensors")
  infos, _ = _read(quantized)
  gates = [n for n in infos if n.endswith("block_sparse_moe.gate.weight")]
  assert gates and all(infos[n].dtype == "F32" for n in gates)
  with open(os.path.join(quantized, "config.json")) as f:
    ignore = json.load(f)["quantization_config"]["ignore"]
  assert {n[:-len(".weight")] for n in gates} <= set(ignore)


FP8JAX_ONLY = [spec("e5m2", "tensor"), spec("e3m2fn", "mx")]


@pytest.mark.parametrize("wl", FP8JAX_ONLY, ids=lambda wl: wl.describe().replace(" ", "-"))
def test_transformers_refuses_the_fp8jax_layout(folders, wl):
  assert default_layout(wl) == "fp8jax"
  with pytest.raises(ValueError, match="quant_method"):
    _load(folders("llama", wl, "fp8jax"))


def test_transformers_never_reads_fp8jax_codes_as_weights(folders, tmp_path):
  # Even without its quantization_config, the codes are not where a loader looks for weights.
  quantized = shutil.copytree(folders("llama", FP8JAX_ONLY[0], "fp8jax"), tmp_path / "q")
  with open(quantized / "config.json") as f:
    config = json.load(f)
  del config["quantization_config"]
  with open(quantized / "config.json", "w") as f:
    json.dump(config, f)
  codes = {n[:-len("_fp8jax_codes")]: v for n, v in _torch_tensors(str(quantized)).items()
           if n.endswith("_fp8jax_codes")}
  params = dict(_load(str(quantized)).named_parameters())
  assert codes
  for name, c in codes.items():
    assert not torch.equal(params[name].data, c.to(params[name].dtype)), name


def test_transformers_refuses_the_modelopt_layout(folders):
  # transformers has no ModelOpt loader: the packed weights do not fit its Linear layers.
  with pytest.raises(RuntimeError, match="size mismatch|ignore_mismatched_sizes"):
    _load(folders("llama-bf16", NVFP4_MODELOPT, "modelopt"))


@pytest.mark.parametrize("scaling", ["tensor", "axis", "block:32x32"])
def test_transformers_loads_the_default_layout_with_fp8_activations(models, tmp_path, scaling):
  # By default e4m3fn weights declare dynamic FP8 activations (llm-compressor's FP8_DYNAMIC
  # and FP8_BLOCK), which transformers and vLLM quantize as they run: the weights are
  # fp8jax's, and the logits differ from the dequantized model's only by that rounding of
  # the activations (e4m3fn: relative error up to 2^-4 per element).
  wl = spec("e4m3fn", scaling)
  quantized = str(tmp_path / "q")
  quantize_checkpoint(models["llama"], quantized, wl)
  with open(os.path.join(quantized, "config.json")) as f:
    scheme = json.load(f)["quantization_config"]["config_groups"]["group_0"]
  acts = scheme["input_activations"]
  assert acts["dynamic"] is True and acts["type"] == "float" and acts["num_bits"] == 8
  assert acts["strategy"] == ("group" if scaling.startswith("block") else "token")
  (tmp_path / "d").mkdir()
  dequantized = write_dequantized(models["llama"], str(tmp_path / "d"), wl, "compressed-tensors")
  model, ref = _load(quantized), _load(dequantized)
  got, want = _outputs(model), _outputs(ref)
  cos = float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0))
  assert 0.995 <= cos < 1, cos  # < 1: the activations really are quantized
  params = dict(model.named_parameters())
  for name, p in ref.named_parameters():
    assert torch.equal(params[name].data, p.data), name
