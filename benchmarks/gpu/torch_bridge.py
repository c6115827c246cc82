"""Section b: the torch bridge (`interop`) on CUDA tensors, or on CPU tensors in CPU mode.

Checks: codes and decoded values on the device equal the CPU's and fp8jax's on the CPU
backend (both interop routes: the code table for small tensors, JAX above
`interop.TABLE_MAX_ELEMENTS`); `to_jax` / `to_torch` share the buffer both ways (same
data pointer); the DLPack stream handshake orders work queued on a side stream before
the other framework reads it; `out=` is left untouched when a call is refused.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.gpu.common import SKIPPED, Budget, Context, bits, run_check, summarize
import fp8jax


def torch_or_reason() -> tuple[Any, str | None]:
  """torch, or None and why not."""
  try:
    import torch
  except Exception as e:  # no torch, or a broken one: skip the section
    return None, f"torch is not importable: {e}"
  return torch, None


def jax_encode_on_cpu(x: np.ndarray, fmt: str, ctx: Context, **kw: Any) -> np.ndarray:
  """fp8jax's own codes on the CPU backend: the reference for the torch route."""
  return np.asarray(fp8jax.encode(jax.device_put(x, ctx.cpu), fmt, **kw))


def encode_matches(torch: Any, interop: Any, dev: str, ctx: Context, n: int) -> dict[str, Any]:
  """interop.encode / decode on `dev` against the CPU tensor route and the JAX CPU backend."""
  gen = torch.Generator().manual_seed(n)
  host = (torch.randn(n, generator=gen) * 100).to(torch.bfloat16)
  host[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
  t = host.to(dev)
  x = host.view(torch.int16).numpy().view(jnp.bfloat16)
  compared, bad = 0, []
  for fmt in ("e4m3fn", "e5m2", "e2m1fn"):
    for kw in ({}, {"overflow": "ieee"}, {"rounding": "stochastic", "seed": 5}):
      got = interop.encode(t, fmt, **kw)
      on_cpu = interop.encode(host, fmt, **kw).numpy()
      jkw = dict(kw)
      if "seed" in jkw:
        jkw["key"] = jax.random.key(jkw.pop("seed"))
      want = jax_encode_on_cpu(x, fmt, ctx, **jkw)
      g = got.cpu().numpy()
      compared += 2 * g.size
      if got.device.type != t.device.type:
        bad.append(f"{fmt} {kw}: result on {got.device}")
      if not (np.array_equal(g, on_cpu) and np.array_equal(g, want)):
        bad.append(f"{fmt} {kw}: {(g != want).sum()} codes differ from JAX on CPU")
      back = interop.decode(got, fmt, torch.float32).cpu().numpy()
      ref = np.asarray(fp8jax.decode(jax.device_put(want, ctx.cpu), fmt, jnp.float32))
      compared += back.size
      if not np.array_equal(bits(back), bits(ref)):
        bad.append(f"{fmt} {kw}: decoded values differ")
  return {"ok": not bad, "compared": compared, "elements": n, "problems": bad[:10],
          "route": "table" if n <= interop.TABLE_MAX_ELEMENTS else "jax"}


def zero_copy(torch: Any, interop: Any, dev: str, ctx: Context) -> dict[str, Any]:
  """to_jax / to_torch keep the data pointer, starting from torch and starting from JAX."""
  t = (torch.arange(4096, dtype=torch.float32, device=dev) % 256).to(torch.bfloat16)  # exact
  a = interop.to_jax(t)
  back = interop.to_torch(a)
  j = jax.device_put(jnp.arange(4096, dtype=jnp.float32), ctx.device)
  tj = interop.to_torch(j)
  j2 = interop.to_jax(tj)
  facts = {
      "torch->jax same pointer": a.unsafe_buffer_pointer() == t.data_ptr(),
      "torch->jax->torch same pointer": back.data_ptr() == t.data_ptr(),
      "jax->torch same pointer": tj.data_ptr() == j.unsafe_buffer_pointer(),
      "jax->torch->jax same pointer": j2.unsafe_buffer_pointer() == j.unsafe_buffer_pointer(),
      "jax array on the device under test": a.devices() == {ctx.device},
      "torch tensor on the torch device": tj.device.type == t.device.type,
      "values kept": bool(np.array_equal(np.asarray(a, np.float32), np.arange(4096) % 256)),
  }
  return {"ok": all(facts.values()), "compared": 4 * 4096, "facts": facts}


def stream_handshake(torch: Any, interop: Any, ctx: Context) -> dict[str, Any]:
  """Work queued on a side torch stream is finished before JAX reads the buffer, and a
  JAX result still being computed is finished before torch reads it."""
  n = 1 << 22
  side = torch.cuda.Stream()
  sleep = getattr(torch.cuda, "_sleep", None)  # a long kernel, so a missing wait shows
  with torch.cuda.stream(side):
    t = torch.zeros(n, device="cuda")
    if sleep is not None:
      sleep(200_000_000)  # about 0.1 s of GPU time
    else:
      m = torch.randn(4096, 4096, device="cuda")
      for _ in range(20):
        m = m @ m / 64
    t.fill_(3.0)
    a = interop.to_jax(t)  # the DLPack exchange passes JAX's stream to torch
  jax_saw = bool(jnp.all(a == 3.0))  # elementwise: exact, unlike a float sum
  torch.cuda.synchronize()

  @jax.jit
  def slow(x):  # a long JAX computation whose result torch reads before it is done
    return jax.lax.fori_loop(0, 200, lambda i, y: jnp.sin(y) * 0 + y + 1.0, x)

  y = slow(jax.device_put(jnp.zeros(n, jnp.float32), ctx.device))
  with torch.cuda.stream(side):
    ty = interop.to_torch(y)  # torch passes its stream to JAX
    torch_saw = bool(torch.all(ty == 200.0))
  facts = {"jax saw torch's last write": jax_saw, "torch saw jax's final value": torch_saw}
  return {"ok": all(facts.values()), "compared": 2 * n, "facts": facts,
          "long_kernel": "torch.cuda._sleep" if sleep is not None else "matmuls"}


def out_untouched(torch: Any, interop: Any, dev: str) -> dict[str, Any]:
  """A refused call (wrong shape, bad format, missing seed, wrong dtype) leaves out as it was;
  an accepted one fills and returns it."""
  n = 1 << 19  # above the table limit: the JAX route
  t = (torch.randn(n) * 10).to(torch.bfloat16).to(dev)
  out = torch.full((n,), 0xAB, dtype=torch.uint8, device=dev)
  before = out.clone()
  refused = {
      "wrong-shape input": lambda: interop.encode(t[:-1], "e4m3fn", out=out),
      "unknown format": lambda: interop.encode(t, "e9m9", out=out),
      "stochastic without seed": lambda: interop.encode(t, "e4m3fn", rounding="stochastic",
                                                        out=out),
      "wrong out dtype for decode": lambda: interop.decode(out, "e4m3fn", torch.float32,
                                                           out=t),
  }
  facts = {}
  for what, call in refused.items():
    try:
      call()
      facts[f"{what}: refused"] = False
    except (TypeError, ValueError):
      facts[f"{what}: refused"] = True
    facts[f"{what}: out untouched"] = bool(torch.equal(out, before))
  t_before = t.clone()
  facts["decode's out untouched"] = bool(torch.equal(t, t_before))
  res = interop.encode(t, "e4m3fn", out=out)
  facts["accepted call returns out"] = res is out
  facts["accepted call fills out"] = bool(torch.equal(out.cpu(), interop.encode(t.cpu(),
                                                                                "e4m3fn")))
  return {"ok": all(facts.values()), "compared": 2 * n, "facts": facts}


def run(ctx: Context) -> dict[str, Any]:
  """Section b, on CUDA tensors on a GPU run and CPU tensors in CPU mode."""
  torch, reason = torch_or_reason()
  if torch is None:
    return {"status": SKIPPED, "reason": reason, "checks": [], "compared": 0}
  cuda = torch.cuda.is_available()
  if not ctx.cpu_mode and not cuda:
    return {"status": SKIPPED, "reason": "torch.cuda is not available (a CPU build of torch?)",
            "checks": [], "compared": 0, "torch": torch.__version__}
  import interop

  dev = "cpu" if ctx.cpu_mode else "cuda"
  budget = Budget(40, ctx)
  checks = [
      run_check(f"interop encode/decode {dev} = CPU, table route (4096 elements)",
                lambda: encode_matches(torch, interop, dev, ctx, 4096), budget),
      run_check(f"interop encode/decode {dev} = CPU, JAX route (2^20 elements)",
                lambda: encode_matches(torch, interop, dev, ctx, 1 << 20), budget),
      run_check(f"zero-copy to_jax/to_torch on {dev}", lambda: zero_copy(torch, interop, dev, ctx),
                budget),
  ]
  if dev == "cuda":
    checks.append(run_check("DLPack stream handshake on a side stream",
                            lambda: stream_handshake(torch, interop, ctx), budget))
  else:
    checks.append({"name": "DLPack stream handshake", "status": SKIPPED, "ok": None,
                   "reason": "CPU tensors have no streams", "seconds": 0.0})
  checks.append(run_check(f"out= untouched on refused calls ({dev})",
                          lambda: out_untouched(torch, interop, dev), budget))
  result = summarize(checks)
  result.update(device=dev, torch=torch.__version__, torch_cuda=torch.version.cuda)
  return result
