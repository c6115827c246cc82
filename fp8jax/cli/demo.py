"""`fp8jax demo`: the command's main job on a built-in example, with no arguments.

It writes a small deterministic transformer-shaped model folder (a
`config.json` and two safetensors shards with an index, about 7 MB of
bfloat16) to a temporary folder, quantizes it to e4m3fn with 128x128 block
scales (the layout vLLM's `fp8` method loads), prints the per-tensor report
and the size saving, dequantizes it, and checks the round trip: names,
shapes and dtypes preserved, every weight equal bit for bit to
`fp8jax.dequantize(fp8jax.quantize(x))`, every other tensor byte-identical.
Exit status 0 when the check passes.

`fp8jax demo --tour` (or `python -m fp8jax.cli.demo --tour`) shows instead one
bfloat16 tensor through every named format: codes, values and errors.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from fp8jax.checkpoint import safetensors_io as st
from fp8jax.checkpoint.pipeline import dequantize_checkpoint, quantize_checkpoint
from fp8jax.checkpoint.selection import Selection
from fp8jax.checkpoint.source import open_checkpoint, shard_names
from fp8jax.checkpoint.stored import WeightLayout
from fp8jax.core.codec import decode, encode
from fp8jax.core.formats import FORMATS, Format
from fp8jax.quant.scaled import dequantize

EXAMPLE = [0.0, -0.0, 1.0, -1.5, 3.14159, 0.1, 1e-3, -13.7, 300.0, 7e4, float("inf"), float("nan")]
DEMO_LAYOUT = ("e4m3fn", "block:128x128")


def example_tensors(layers: int = 4, hidden: int = 256, intermediate: int = 704,
                    vocab: int = 1024, kv_hidden: int = 128) -> dict[str, np.ndarray]:
  """A deterministic Llama-shaped set of bfloat16 weights, in checkpoint order.

  Weights are Student-t distributed (heavy tails, like trained weights),
  scaled to about 0.02; norms are near 1.

  Example:
    >>> example_tensors(layers=1)["model.layers.0.mlp.up_proj.weight"].shape
    (704, 256)
  """
  rng = np.random.default_rng(0)

  def weight(*shape: int) -> np.ndarray:
    return (0.02 * rng.standard_t(4, size=shape)).astype(ml_dtypes.bfloat16)

  def norm(n: int) -> np.ndarray:
    return (1 + 0.05 * rng.standard_normal(n)).astype(ml_dtypes.bfloat16)

  out = {"model.embed_tokens.weight": weight(vocab, hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = norm(hidden)
    out[p + "self_attn.q_proj.weight"] = weight(hidden, hidden)
    out[p + "self_attn.k_proj.weight"] = weight(kv_hidden, hidden)
    out[p + "self_attn.v_proj.weight"] = weight(kv_hidden, hidden)
    out[p + "self_attn.o_proj.weight"] = weight(hidden, hidden)
    out[p + "post_attention_layernorm.weight"] = norm(hidden)
    out[p + "mlp.gate_proj.weight"] = weight(intermediate, hidden)
    out[p + "mlp.up_proj.weight"] = weight(intermediate, hidden)
    out[p + "mlp.down_proj.weight"] = weight(hidden, intermediate)
  out["model.norm.weight"] = norm(hidden)
  out["lm_head.weight"] = weight(vocab, hidden)
  return out


def write_example_model(folder: str, shards: int = 2, **sizes: int) -> dict[str, np.ndarray]:
  """Writes `example_tensors(**sizes)` as a model folder: config.json, shards, index.

  Returns:
    The tensors written.
  """
  tensors = example_tensors(**sizes)
  names = list(tensors)
  per = -(-len(names) // shards)
  files = shard_names(shards)
  weight_map = {}
  for i, file in enumerate(files):
    part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
    st.write_file(os.path.join(folder, file), part, {"format": "pt"})  # as torch writes it
    weight_map.update(dict.fromkeys(part, file))
  total = sum(a.nbytes for a in tensors.values())
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f, indent=2)
  emb = tensors["model.embed_tokens.weight"]
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": emb.shape[1], "vocab_size": emb.shape[0],
            "intermediate_size": tensors["model.layers.0.mlp.up_proj.weight"].shape[0],
            "num_hidden_layers": sum(n.endswith("q_proj.weight") for n in names),
            "num_attention_heads": 4, "num_key_value_heads": 2, "torch_dtype": "bfloat16"}
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"model_max_length": 2048}, f)
  return tensors


def check_round_trip(src: str, dequantized: str, layout: WeightLayout) -> list[str]:
  """Compares a dequantized checkpoint with its source; returns the mismatches (none: OK)."""
  problems = []
  a, b = open_checkpoint(src), open_checkpoint(dequantized)
  selection = Selection()
  before = {t.name: (h.path, t) for h in a.headers for t in h.tensors}
  after = {t.name: (h.path, t) for h in b.headers for t in h.tensors}
  if set(before) != set(after):
    return [f"names differ: {sorted(set(before) ^ set(after))}"]
  for name, (path, t) in before.items():
    path2, t2 = after[name]
    if (t.dtype, t.shape) != (t2.dtype, t2.shape):
      problems.append(f"{name}: {t.dtype} {t.shape} became {t2.dtype} {t2.shape}")
      continue
    with open(path, "rb") as f, open(path2, "rb") as f2:
      x, y = st.read_tensor(f, t), st.read_tensor(f2, t2)
    if selection.selects(t):
      expect = np.asarray(dequantize(layout.quantize(jnp.asarray(x)), x.dtype))
    else:
      expect = x
    if expect.tobytes() != y.tobytes():
      problems.append(f"{name}: values differ")
  return problems


def main() -> int:
  """Runs the demo; returns 0 when the round trip checks out."""
  layout = WeightLayout.parse(*DEMO_LAYOUT)
  with tempfile.TemporaryDirectory(prefix="fp8jax-demo-") as tmp:
    src, q, back = (os.path.join(tmp, n) for n in ("model", "model-fp8", "model-bf16"))
    os.mkdir(src)
    start = time.perf_counter()
    tensors = write_example_model(src)
    n_bytes = sum(a.nbytes for a in tensors.values())
    print(f"example model: {len(tensors)} bfloat16 tensors, {n_bytes / 2**20:.1f} MiB, "
          f"written in {time.perf_counter() - start:.1f} s to {tmp}{os.sep}model")
    print(f"\n$ fp8jax quantize model model-fp8 --format {DEMO_LAYOUT[0]} "
          f"--scaling {DEMO_LAYOUT[1]} -v")
    summary = quantize_checkpoint(src, q, layout, sqnr=True)
    for t in summary.tensors:
      print(t.line())
    print(summary.line())
    saved = 1 - summary.bytes_after / summary.bytes_before
    print(f"size: {summary.bytes_before:,} -> {summary.bytes_after:,} bytes, saving {saved:.1%}")
    with open(os.path.join(q, "config.json")) as f:
      qc = json.load(f)["quantization_config"]
    print("config.json quantization_config:", json.dumps(qc))
    print("\n$ fp8jax dequantize model-fp8 model-bf16")
    print(dequantize_checkpoint(q, back).line())
    problems = check_round_trip(src, back, layout)
    for p in problems:
      print("MISMATCH", p)
    if problems:
      print(f"round trip: FAILED ({len(problems)} tensors)")
      return 1
    print(f"round trip: OK: {len(tensors)} tensors, names, shapes and dtypes preserved; "
          f"{len(summary.changed)} weights equal dequantize(quantize(x)) bit for bit; "
          f"{len(tensors) - len(summary.changed)} others byte-identical")
  return 0


def tour() -> None:
  """One bfloat16 tensor through every named format: codes, values, errors."""
  x = jnp.asarray(EXAMPLE, jnp.bfloat16)
  xs = np.asarray(x, np.float32)
  print("input (bfloat16):", " ".join(_fmt(v) for v in xs))
  print("overflow='saturate', rounding='nearest'\n")
  for name, fmt in FORMATS.items():
    _show(name, fmt, x, xs)


def _fmt(v: float) -> str:
  return f"{v:.4g}"


def _show(name: str, fmt: Format, x: jax.Array, xs: np.ndarray) -> None:
  bits = encode(x, fmt)
  back = np.asarray(decode(bits, fmt, jnp.float32))
  finite = np.isfinite(xs) & (np.abs(xs) <= fmt.max) & (np.abs(xs) >= fmt.min_normal)
  rel = np.abs(back[finite] - xs[finite]) / np.abs(xs[finite])
  print(f"{name:12s} max={_fmt(fmt.max):>8s}  min_subnormal={_fmt(fmt.min_subnormal)}")
  print("  bits  ", " ".join(f"{int(b):#04x}".rjust(7) for b in np.asarray(bits)))
  print("  value ", " ".join(_fmt(v).rjust(7) for v in back))
  with np.errstate(invalid="ignore"):
    err = back - xs
  print("  error ", " ".join(_fmt(v).rjust(7) for v in err))
  worst = f"{rel.max():.3g}" if rel.size else "n/a"
  print(f"  largest relative error on in-range normal inputs: {worst} "
        f"(bound: eps/2 = {fmt.eps / 2:.3g})\n")


if __name__ == "__main__":
  if sys.argv[1:] == ["--tour"]:
    tour()
  else:
    sys.exit(main())
