"""What the results were measured on: host, accelerator, driver, library versions, commit.

The host, the versions and the commit come from benchmarks/common.py; the accelerator,
nvidia-smi and the CUDA distributions installed with JAX and torch are this check's own.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
from typing import Any

from benchmarks import common
from benchmarks.gpu.common import Context

# The libraries the check uses: the benchmarks' usual ones, and torch, matplotlib, pytest.
LIBRARIES = common.LIBRARIES + ("torch", "matplotlib", "pytest")
# Distributions whose versions matter for the numbers (the CUDA plugin of JAX, cuBLAS).
PREFIXES = ("jax", "nvidia-cublas", "nvidia-cuda-runtime", "nvidia-cudnn", "triton")


def versions() -> dict[str, str | None]:
  """Versions of the libraries the check uses, and of the CUDA pieces installed with them."""
  found = common.versions(*LIBRARIES)
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(PREFIXES) and name not in found:
      found[name] = dist.version
  return dict(sorted(found.items()))


def nvidia_smi() -> dict[str, Any]:
  """GPU name, driver and memory from nvidia-smi, when it is there."""
  if shutil.which("nvidia-smi") is None:
    return {"available": False}
  query = "name,driver_version,memory.total,clocks.max.memory,power.limit"
  try:
    proc = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=20, check=False)
    head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20,
                          check=False)
  except (OSError, subprocess.SubprocessError) as e:
    return {"available": False, "error": str(e)}
  cuda = [line for line in head.stdout.splitlines() if "CUDA Version" in line]
  return {"available": True, "gpus": proc.stdout.strip().splitlines(),
          "header": cuda[0].strip(" |") if cuda else None}


def describe(ctx: Context, args: list[str]) -> dict[str, Any]:
  """The machine part of results.json."""
  import jax

  dev = ctx.device
  host = common.machine()
  info: dict[str, Any] = {
      "hostname": socket.gethostname(), "platform": platform.platform(),
      "python": host["python"], "cpu_count": host["cpu_count"], "argv": args,
      "mode": ("cpu" if ctx.cpu_mode else "gpu") + (" quick" if ctx.quick else ""),
      "jax_backend": jax.default_backend(), "device": str(dev), "device_platform": dev.platform,
      "device_kind": getattr(dev, "device_kind", None),
      "compute_capability": getattr(dev, "compute_capability", None),
      "device_count": len(jax.devices(dev.platform)), "versions": versions(),
      "git": common.git_commit(ctx.root), "nvidia_smi": nvidia_smi(),
      "env": {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS",
                                             "XLA_PYTHON_CLIENT_PREALLOCATE")},
  }
  try:
    import torch
    info["torch_cuda"] = torch.version.cuda
    info["torch_cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
      info["torch_device"] = torch.cuda.get_device_name(0)
  except Exception as e:  # torch is optional
    info["torch_cuda"] = f"torch not importable: {e}"
  return info
