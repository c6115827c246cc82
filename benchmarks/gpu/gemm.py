"""Section d: the FP8 GEMM. Does XLA lower `fp8jax.dot` on per-tensor e4m3fn QArrays to its
cuBLASLt FP8 custom call, is the result within the bound of dequantize-then-matmul in
float32 (bounds.py), and how fast is it against a bfloat16 `jnp.dot`?

The lowering is read from the compiled HLO text: every custom-call target is recorded, and
Triton GEMM fusions too (newer XLA can autotune an FP8 dot into one instead of cuBLASLt).
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks.gpu import bounds
from benchmarks.gpu.common import SKIPPED, Budget, Context, run_check, summarize
from benchmarks.gpu.timing import time_jax
import fp8jax

CUBLASLT_F8 = "__cublas$lt$matmul$f8"


def operands(ctx: Context, m: int, k: int, n: int, seed: int = 0) -> tuple[Any, Any]:
  """bfloat16 Gaussian a [m, k] and b [k, n], made on the device under test."""
  ka, kb = jax.device_put(jax.random.split(jax.random.key(seed)), ctx.device)
  make = jax.jit(lambda key, shape: jax.random.normal(key, shape, jnp.bfloat16),
                 static_argnums=1)
  return make(ka, (m, k)), make(kb, (k, n))  # computed where the (committed) keys are


def lowering(qa: Any, qb: Any) -> dict[str, Any]:
  """The custom calls and GEMM fusions in the compiled HLO of dot(qa, qb)."""
  hlo = jax.jit(fp8jax.dot).lower(qa, qb).compile().as_text()
  targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
  triton = sorted(set(re.findall(r'"kind":"(__triton[^"]*)"', hlo)))
  f8_in_gemm_fusion = bool(triton) and bool(re.search(r"f8e4m3fn\[", hlo))
  return {"custom_call_targets": targets, "triton_fusion_kinds": triton,
          "cublaslt_f8": CUBLASLT_F8 in hlo, "triton_gemm_with_f8_operands": f8_in_gemm_fusion,
          "hlo_chars": len(hlo)}


def lowering_check(ctx: Context) -> dict[str, Any]:
  """On a GPU the compiled dot must hold the cuBLASLt FP8 call; on CPU it is only recorded."""
  a, b = operands(ctx, 256, 512, 128)
  quant = jax.jit(lambda x: fp8jax.quantize(x, "e4m3fn"))
  found = lowering(quant(a), quant(b))
  if ctx.cpu_mode:
    return {"status": SKIPPED, "ok": None, "reason": "no cuBLASLt on cpu; targets recorded",
            **found}
  return {"ok": found["cublaslt_f8"], **found}


def accuracy_check(ctx: Context, m: int, k: int, n: int) -> dict[str, Any]:
  """The device's dot against a float32 dot of the dequantized operands on the CPU."""
  a, b = operands(ctx, m, k, n, seed=1)
  a = jax.jit(lambda v: v * jnp.exp2(jnp.arange(k) % 9 - 4.0).astype(jnp.bfloat16))(a)
  # (columns of varied scale)
  quant = jax.jit(lambda x: fp8jax.quantize(x, "e4m3fn"))
  qa, qb = quant(a), quant(b)
  got = np.asarray(jax.jit(fp8jax.dot)(qa, qb))
  va = np.asarray(fp8jax.dequantize(jax.device_put(qa, ctx.cpu), jnp.float32))
  vb = np.asarray(fp8jax.dequantize(jax.device_put(qb, ctx.cpu), jnp.float32))
  ref = lax.dot_general(jax.device_put(va, ctx.cpu), jax.device_put(vb, ctx.cpu),
                        (((1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
  result = bounds.compare(got, np.asarray(ref), va, vb, on_accelerator=not ctx.cpu_mode)
  result["shape"] = [m, k, n]
  return result


def speed_check(ctx: Context, size: int, repeats: int) -> dict[str, Any]:
  """TFLOP/s of fp8jax.dot (float32 and bfloat16 output) against a bfloat16 jnp.dot."""
  a, b = operands(ctx, size, size, size, seed=2)
  quant = jax.jit(lambda x: fp8jax.quantize(x, "e4m3fn"))
  qa, qb = quant(a), quant(b)
  flops = 2.0 * size**3
  runs = {
      "fp8 dot, float32 out": (jax.jit(fp8jax.dot), (qa, qb)),
      "fp8 dot, bfloat16 out": (jax.jit(lambda x, y: fp8jax.dot(
          x, y, preferred_element_type=jnp.bfloat16)), (qa, qb)),
      "bf16 jnp.dot": (jax.jit(jnp.dot), (a, b)),
  }
  timings = {}
  for name, (fn, args) in runs.items():
    t = time_jax(fn, args, repeats)
    t["tflops"] = flops / t["median_s"] / 1e12
    timings[name] = t
  bf16 = timings["bf16 jnp.dot"]["tflops"]
  best = max(timings["fp8 dot, float32 out"]["tflops"], timings["fp8 dot, bfloat16 out"]["tflops"])
  return {"ok": True, "size": size, "timings": timings,
          "ratio_fp8_bf16_out_vs_bf16": timings["fp8 dot, bfloat16 out"]["tflops"] / bf16,
          "ratio_fp8_f32_out_vs_bf16": timings["fp8 dot, float32 out"]["tflops"] / bf16,
          "ratio_best_vs_bf16": best / bf16}


def run(ctx: Context) -> dict[str, Any]:
  """Section d."""
  budget = Budget(60, ctx)
  small = ctx.quick or ctx.cpu_mode
  mkn = (256, 512, 128) if small else (1024, 4096, 1024)
  size = 512 if small else 8192
  checks = [
      run_check("dot lowers to " + CUBLASLT_F8, lambda: lowering_check(ctx), budget),
      run_check(f"dot within the bound of dequantize+f32 matmul {list(mkn)}",
                lambda: accuracy_check(ctx, *mkn), budget),
      run_check(f"fp8 dot vs bf16 dot TFLOP/s at {size}^3",
                lambda: speed_check(ctx, size, 5 if small else 20), budget),
  ]
  return summarize(checks)
