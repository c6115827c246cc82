"""Helpers shared by every benchmark script: result files, timing and medians, the machine.

Only the standard library is imported when the module loads (benchmarks/gpu runs where
little else is installed); NumPy values are handled if NumPy happens to be imported.

Nothing here imports JAX (or fp8jax, which imports it) when the module loads: passes.py
and sharded_quantize.py set XLA_FLAGS after importing this and before JAX starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import datetime
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import IO, Any

# The repository root, and where the committed results live (benchmarks/results).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The libraries whose versions a result records, in the order it records them.
LIBRARIES = ("jax", "jaxlib", "numpy", "ml_dtypes", "fp8jax")


# --- result files -------------------------------------------------------------------

def results_path(name: str) -> str:
  """benchmarks/results/<name>."""
  return os.path.join(RESULTS, name)


def atomic_write(path: str, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
  """Writes a file through a temporary one beside it, renamed over `path` when complete.

  `write(f)` fills the open temporary file (UTF-8 text, or bytes with `binary`). This is
  fp8jax.checkpoint.files.atomic_write: a partial file never appears under `path`, a
  failed write leaves no temporary file behind, and the file gets the usual permissions
  (0666 less the umask). The folder is created if needed.
  """
  # Imported here, not above: importing fp8jax imports JAX, and passes.py and
  # sharded_quantize.py set XLA_FLAGS after importing this module.
  from fp8jax.checkpoint.files import atomic_write as atomic_file

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic_file(path, "wb" if binary else "w",
                   **({} if binary else {"encoding": "utf-8"})) as f:
    write(f)


def write_json(path: str, obj: Any, indent: int = 2, ensure_ascii: bool = True) -> None:
  """json.dump(obj) to `path`, atomically."""
  atomic_write(path, lambda f: json.dump(obj, f, indent=indent, ensure_ascii=ensure_ascii))


def write_text(path: str, text: str) -> None:
  """`text` to `path`, atomically."""
  atomic_write(path, lambda f: f.write(text))


def write_bytes(path: str, data: bytes) -> None:
  """`data` to `path`, atomically."""
  atomic_write(path, lambda f: f.write(data), binary=True)


def clean(obj: Any) -> Any:
  """Plain JSON values: NumPy arrays and scalars unwrapped, NaN and inf as None, tuples as
  lists, keys as text, any other object as its text."""
  if isinstance(obj, dict):
    return {str(k): clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [clean(v) for v in obj]
  np = sys.modules.get("numpy")  # no NumPy value exists unless NumPy has been imported
  if np is not None:
    if isinstance(obj, np.ndarray):
      return clean(obj.tolist())
    if isinstance(obj, np.generic):
      obj = obj.item()
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if obj is None or isinstance(obj, (bool, int, str)):
    return obj
  return str(obj)


def to_json(obj: Any, indent: int = 1) -> str:
  """clean(obj) as strict JSON text (no NaN or Infinity)."""
  return json.dumps(clean(obj), indent=indent, allow_nan=False)


def read_json(path: str, default: Any = None) -> Any:
  """The JSON at `path`, or `default` if there is no such file."""
  if not os.path.exists(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# --- timing and medians -------------------------------------------------------------

def time_calls(fn: Callable[[], Any], repeats: int, *, warmup: int = 0,
               calls: int = 1) -> list[float]:
  """Seconds per call of `repeats` timed runs of `calls` calls each, after `warmup` calls.

  `fn` must wait for its own result (jax.block_until_ready, torch.cuda.synchronize).
  Python's garbage collector is off while the runs are timed.
  """
  for _ in range(warmup):
    fn()
  times = []
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(calls):
        fn()
      times.append((time.perf_counter() - t0) / calls)
  finally:
    if gc_was_enabled:
      gc.enable()
  return times


def median(values: Iterable[float]) -> float:
  return statistics.median(values)


def median_time(fn: Callable[[], Any], repeats: int, *, warmup: int = 3,
                calls: int = 1) -> float:
  """The median of time_calls(...): seconds per call."""
  return median(time_calls(fn, repeats, warmup=warmup, calls=calls))


def spread(times: list[float]) -> dict[str, float]:
  """Median, minimum, quartiles and interquartile range of `times`, in their unit."""
  times = sorted(times)
  q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
  return {"median_s": median(times), "min_s": times[0], "q1_s": q1, "q3_s": q3,
          "iqr_s": q3 - q1}


def fmt_time(s: float) -> str:
  """1.2e-5 -> '12.0 µs', 0.0123 -> '12.30 ms', 2 -> '2.00 s'."""
  if s < 1e-3:
    return f"{s * 1e6:.1f} µs"
  if s < 1:
    return f"{s * 1e3:.2f} ms"
  return f"{s:.2f} s"


# --- the machine and the versions ---------------------------------------------------

def now() -> str:
  """The UTC date and time, to the second, in ISO 8601."""
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def command(argv: list[str]) -> str:
  """The command line that ran: the interpreter's name, then argv (script first)."""
  return " ".join([os.path.basename(sys.executable)] + list(argv))


def machine() -> dict[str, Any]:
  """Python's version and the host: architecture, processor, CPU count."""
  return {"python": platform.python_version(), "machine": platform.machine(),
          "processor": platform.processor(), "cpu_count": os.cpu_count()}


def versions(*names: str) -> dict[str, str | None]:
  """Each library's __version__ (default: LIBRARIES), None where it is not installed (or
  fails to import, or has no __version__).

  Imports the library if it is not imported yet, so ask for jax only once XLA_FLAGS is set.
  """
  out: dict[str, str | None] = {}
  for name in names or LIBRARIES:
    try:
      out[name] = getattr(importlib.import_module(name), "__version__", None)
    except Exception:  # not installed, or a broken install: recorded as missing
      out[name] = None
  return out


def git_commit(root: str = ROOT) -> dict[str, Any]:
  """The checkout's commit and whether it has local changes, when git and .git are there.

  {"commit": sha, "dirty": bool}, or {"commit": None, "reason": why not}.
  """
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, timeout=10, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10, check=False)
  except (OSError, subprocess.SubprocessError) as e:
    return {"commit": None, "reason": str(e)}
  if head.returncode != 0:
    return {"commit": None, "reason": head.stderr.strip()[:200]}
  return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def device() -> dict[str, Any]:
  """JAX's default device: platform, name, kind, and the number of devices."""
  import jax

  dev = jax.devices()[0]
  return {"platform": dev.platform, "device": str(dev), "device_kind": dev.device_kind,
          "device_count": jax.device_count()}
