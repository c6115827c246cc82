"""The benchmark suite: fp8jax against its peers and the memory floor, side by side.

Usage:
  python benchmarks/run.py                       # 1K, 1M, 16M, 64M elements, both modes
  python benchmarks/run.py --sizes 1K,1M,16M --modes reused --only encode
  python benchmarks/run.py --repeat-run 3        # the whole suite 3 times; ratio ranges
  python benchmarks/run.py --quick --out /tmp/b  # smoke run: 1K and 64K, short timings

Every implementation converts the same bfloat16 data (standard normal values
times 100, so that some of them saturate e4m3fn's 448), held as a 2-D array of
shape (n / 1024, 1024): the JAX array, a NumPy array and a torch tensor that is
a view of the NumPy one. For each implementation, size and output mode it
reports the first call (compile and one run, for JAX) separately, then warms
up and times many calls one by one: enough for about 0.3 s of measurement, at
least 5 and at most 1000 (or exactly --repeats), and reports the median, the
minimum and the interquartile range.

Two output modes, each against the peers in the same mode (a fresh output of
more than ~32 MB is page-faulted in on every call, which dominates large
casts; see the design notes):
  fresh   a new output per call: `jax.jit(f)(x)` then `block_until_ready`,
          NumPy's `astype`, torch's `.to()`;
  reused  the output buffer is reused: JAX donates the previous output back
          (`jax.jit(..., donate_argnums=...)`, what fp8jax's `out=` does),
          torch fills `out` (`out.copy_(x)`, the `out=` argument), NumPy
          `np.copyto` into a preallocated array.

Throughput counts the bytes an implementation must at least move, read plus
written, per element: 3 for casts (read 2, write 1) and for decode (read 1,
write 2), 5 for per-tensor scaling (the amax pass reads 2, then the cast
reads 2 and writes 1: the amax must be known before the first code is
written), 3 for per-axis, per-block and MX scaling (a row of 1024 fits in
cache, so one pass over memory suffices; scales are negligible). The floors
are measured jitted copies that move 3 bytes per element in the same mode:
"memcpy floor (jax)" copies 1.5 n bytes (+1 to each, so that XLA cannot elide
it), "narrowing copy floor (jax)" keeps the low byte of n uint16 (reads 2,
writes 1 per element, as a cast, so a fresh output is as large as a cast's);
each is timed before and after the others and the faster kept, and the
faster of the two is the floor. An implementation's floor time is its byte
count over the floor's bandwidth, and "of floor" is that time over its own.
"memcpy floor (numpy)" is the host's np.copyto for comparison. At small
sizes every JAX call costs a dispatch (microseconds): fractions there say
little.

Outputs, under --out (default benchmarks/results), named after the JAX
platform (cpu, gpu): a table on stdout, <platform>.json with every number and
the environment, and <platform>.png (throughput in input elements per second
against size, one panel per mode). Files are written to a temporary name and
renamed, so a partial file never appears. With --quick the names end in
"-quick" so that a smoke run never replaces a real one.

Before timing, each size checks bits: fp8jax's encode with overflow="ieee"
against XLA's astype and ml_dtypes, with "satfinite" against torch's `.to()`,
decode against XLA's astype, and the torch bridge against fp8jax; after
timing, every implementation's last reused-mode output against its last
fresh-mode output. A mismatch is printed loudly and recorded as false under
"bit_identical"; the run still finishes.

Torch runs on its default thread count (recorded); on a busy machine its
multithreaded casts can wait a scheduler tick per call (a few ms, whatever the
size), which --torch-threads 1 avoids. Without torch the torch rows are skipped
(with a note). On GPU the JAX arrays and torch tensors live on the device and
torch calls end with `torch.cuda.synchronize()`; the NumPy rows stay on the
host. The GPU path is untested.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import ml_dtypes
import numpy as np

import fp8jax

try:
  import torch

  import interop
except ImportError:  # the torch rows are skipped
  torch = None
  interop = None

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_SIZES = "1K,1M,16M,64M"
QUICK_SIZES = "1K,64K"
MODES = ("fresh", "reused")
_ROW = 1024          # the data's last axis: (n / 1024, 1024)
_BLOCK = 128         # quantize block128: 1-D blocks along the last axis
_SCALE = 100.0       # N(0, 1) * 100: about 1 value in 10^5 exceeds e4m3fn's 448
_E4M3FN_MAX = 448.0
_TORCHAO_EPS = 1e-12  # torchao's floor on amax before dividing

# Minimal bytes moved per element (read + written), see the module docstring.
CAST_BYTES = 3
TENSOR_SCALING_BYTES = 5
# The JAX floors; an implementation is compared with the faster of them.
JAX_FLOORS = ("memcpy floor (jax)", "narrowing copy floor (jax)")

# (key, numerator, denominator, comparison, target): the ratio is time(numerator) /
# time(denominator); the targets are issue 6's, for 64M elements on the CPU machine.
RATIOS = (
    ("encode speedup vs xla astype", "xla astype e4m3fn", "encode e4m3fn", ">=", 1.5),
    ("encode speedup vs torch .to()", "torch .to(e4m3fn)", "encode e4m3fn", ">=", 1.5),
    ("decode speedup vs xla astype", "xla astype f8→bf16", "decode e4m3fn→bf16", ">=", 1.5),
    ("stochastic / nearest", "encode e4m3fn stochastic", "encode e4m3fn", "<=", 1.5),
    ("quantize tensor / encode", "quantize tensor", "encode e4m3fn", "<=", 1.7),
    ("torchao recipe / quantize tensor", "torchao recipe", "quantize tensor", ">=", 2.0),
)


# --- the data ----------------------------------------------------------------

@dataclasses.dataclass
class Data:
  """One size's inputs, the same values in every library's container."""
  n: int
  shape: tuple[int, int]
  x_np: np.ndarray                 # bfloat16, host
  x: jax.Array                     # bfloat16, JAX's default device
  codes: jax.Array                 # uint8 e4m3fn codes of x (saturate), the decode input
  codes_f8: jax.Array              # the same codes as jnp.float8_e4m3fn
  t: Any = None                    # torch.bfloat16 view of x_np (or a copy on CUDA)
  codes_t: Any = None              # torch.uint8 codes


def parse_size(text: str) -> int:
  """'1K' -> 1024, '16M' -> 16 * 2**20, '1000' -> 1000."""
  text = text.strip().upper()
  mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
  digits = text[:-1] if mult > 1 else text
  if not digits.isdigit() or int(digits) <= 0:
    raise argparse.ArgumentTypeError(f"a size is a positive integer with an optional K, M or G "
                                     f"suffix (got {text!r})")
  return int(digits) * mult


def size_label(n: int) -> str:
  for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
    if n % unit == 0:
      return f"{n // unit}{suffix}"
  return str(n)


def _torch_device() -> str:
  return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_sync() -> None:
  if torch is not None and _torch_device() == "cuda":
    torch.cuda.synchronize()


def make_data(n: int, seed: int = 0) -> Data:
  shape = (n // _ROW, _ROW) if n % _ROW == 0 else (1, n)
  rng = np.random.default_rng(seed)
  x_np = (rng.standard_normal(shape, dtype=np.float32) * _SCALE).astype(ml_dtypes.bfloat16)
  x = jax.block_until_ready(jax.device_put(x_np))
  # An outer jit of its own, so that the timed first call of encode still compiles.
  codes = jax.block_until_ready(jax.jit(lambda a: fp8jax.encode(a, "e4m3fn"))(x))
  codes_f8 = jax.block_until_ready(
      jax.jit(lambda c: jax.lax.bitcast_convert_type(c, jnp.float8_e4m3fn))(codes))
  data = Data(n, shape, x_np, x, codes, codes_f8)
  if torch is not None:
    device = _torch_device()
    # Copies made by torch's allocator, as a torch user's tensors are: NumPy's
    # buffers need not meet XLA's 64-byte alignment, which makes the bridge copy.
    data.t = torch.from_numpy(x_np.view(np.int16)).view(torch.bfloat16).to(device).clone()
    data.codes_t = torch.from_numpy(np.array(codes)).to(device).clone()
  return data


# --- implementations ------------------------------------------------------------

# A factory builds, for one size, `step` (one call that waits for its result)
# and `last` (the last result as host bytes, for the fresh/reused check).
Step = tuple[Callable[[], None], Callable[[], bytes]]
Factory = Callable[[Data], Step]


@dataclasses.dataclass(frozen=True)
class Impl:
  name: str
  kind: str                         # "fp8jax", "peer" or "floor"
  bytes_per_element: float
  fresh: Factory | None
  reused: Factory | None
  needs_torch: bool = False
  note: str = ""


def _host_bytes(result: Any) -> bytes:
  leaves = jax.tree_util.tree_leaves(result)
  out = []
  for leaf in leaves:
    if torch is not None and isinstance(leaf, torch.Tensor):
      leaf = leaf.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    out.append(np.ascontiguousarray(np.asarray(leaf)).view(np.uint8).tobytes())
  return b"".join(out)


def _jax_fresh(fn: Callable[[Data], Callable[[], Any]]) -> Factory:
  """A fresh-output JAX call: fn(data) returns the zero-argument call."""
  def factory(data: Data) -> Step:
    call = fn(data)
    box = [None]

    def step():
      box[0] = jax.block_until_ready(call())
    return step, lambda: _host_bytes(box[0])
  return factory


def _jax_reused(fn: Callable[[Data], Callable[[Any], Any]], init: Callable[[Data], Any],
                leaf: Callable[[Any], Any] = lambda r: r) -> Factory:
  """A reused-output JAX call: fn(data)(out) returns the result, which was
  written into the donated `out`; `leaf` picks the result's array that is
  donated to the next call."""
  def factory(data: Data) -> Step:
    call = fn(data)
    box = [None, init(data)]

    def step():
      res = jax.block_until_ready(call(box[1]))
      box[0], box[1] = res, leaf(res)
    return step, lambda: _host_bytes(box[0])
  return factory


def _donating(public: Callable[[jax.Array], Any]) -> Callable:
  """`public(x)` jitted with an extra, donated output buffer: the same as the
  library's `out=` (XLA writes the result into the donated buffer when shape
  and dtype match)."""
  return jax.jit(lambda x, out: public(x), donate_argnums=1, keep_unused=True)


def _zeros(dtype) -> Callable[[Data], jax.Array]:
  return lambda d: jnp.zeros(d.shape, dtype)


_KEY = jax.random.key(0)

# The library's public calls, with jitted donating twins for the reused mode
# where the library has no `out=` of its own. Module level, so that every
# implementation's jit cache behaves alike across sizes and repeated runs.
_ENC_E5M2_INTO = _donating(lambda x: fp8jax.encode(x, "e5m2"))
_ENC_SR_INTO = jax.jit(
    lambda x, key, out: fp8jax.encode(x, "e4m3fn", rounding="stochastic", key=key),
    donate_argnums=2, keep_unused=True)
_QUANTIZE = {
    "quantize tensor": {"scaling": "tensor"},
    "quantize axis": {"scaling": "axis", "axis": -1},
    "quantize block128": {"scaling": "block", "block_size": _BLOCK},
    "quantize mx": {"scaling": "mx"},
}
_QUANTIZE_INTO = {name: _donating(lambda x, kw=kw: fp8jax.quantize(x, "e4m3fn", **kw))
                  for name, kw in _QUANTIZE.items()}

# XLA's native converts.
_XLA = {
    "e4m3fn": jax.jit(lambda a: a.astype(jnp.float8_e4m3fn)),
    "e5m2": jax.jit(lambda a: a.astype(jnp.float8_e5m2)),
    "bf16": jax.jit(lambda a: a.astype(jnp.bfloat16)),
}
_XLA_INTO = {
    "e4m3fn": jax.jit(lambda a, o: a.astype(jnp.float8_e4m3fn), donate_argnums=1,
                      keep_unused=True),
    "e5m2": jax.jit(lambda a, o: a.astype(jnp.float8_e5m2), donate_argnums=1, keep_unused=True),
    "bf16": jax.jit(lambda a, o: a.astype(jnp.bfloat16), donate_argnums=1, keep_unused=True),
}

# The bit checks' own jits (separate caches, so that a check warms nothing
# that is timed); decode is checked in float32 for the same reason.
_CHECK = {
    "e4m3fn": jax.jit(lambda a: a.astype(jnp.float8_e4m3fn)),
    "e5m2": jax.jit(lambda a: a.astype(jnp.float8_e5m2)),
    "f32": jax.jit(lambda a: a.astype(jnp.float32)),
}

# The floors. A copy that adds 1 to every byte, so that XLA can neither elide
# it nor hand back the input's buffer (it streams as fast as a plain copy), of
# 1.5 n bytes; and a narrowing copy, the low byte of each of n uint16, which
# reads 2 and writes 1 byte per element as a cast does (so a fresh output is
# as large as a cast's). Both move 3 bytes per element.
_COPY = jax.jit(lambda a: a + 1)
_COPY_INTO = jax.jit(lambda a, o: a + 1, donate_argnums=1, keep_unused=True)
_NARROW = jax.jit(lambda a: a.astype(jnp.uint8))
_NARROW_INTO = jax.jit(lambda a, o: a.astype(jnp.uint8), donate_argnums=1, keep_unused=True)


def _floor_bytes(d: Data) -> int:
  """Bytes the floor copies: it reads and writes them, 3 per element moved."""
  return (CAST_BYTES * d.n + 1) // 2


def _floor_jax_fresh(d: Data) -> Step:
  src = jnp.ones((_floor_bytes(d),), jnp.uint8)
  return _jax_fresh(lambda _: lambda: _COPY(src))(d)


def _floor_jax_reused(d: Data) -> Step:
  src = jnp.ones((_floor_bytes(d),), jnp.uint8)
  return _jax_reused(lambda _: lambda o: _COPY_INTO(src, o),
                     lambda _: jnp.zeros((_floor_bytes(d),), jnp.uint8))(d)


def _narrow_src(d: Data) -> jax.Array:
  # Not all-equal bytes, so that the low bytes differ from the high ones.
  return jnp.arange(d.n, dtype=jnp.uint16).reshape(d.shape)


def _floor_narrow_fresh(d: Data) -> Step:
  src = _narrow_src(d)
  return _jax_fresh(lambda _: lambda: _NARROW(src))(d)


def _floor_narrow_reused(d: Data) -> Step:
  src = _narrow_src(d)
  return _jax_reused(lambda _: lambda o: _NARROW_INTO(src, o), _zeros(jnp.uint8))(d)


def _numpy_step(call: Callable[[], Any]) -> Step:
  box = [None]

  def step():
    box[0] = call()
  return step, lambda: _host_bytes(box[0])


def _floor_numpy_fresh(d: Data) -> Step:
  src = np.ones(_floor_bytes(d), np.uint8)
  return _numpy_step(src.copy)


def _floor_numpy_reused(d: Data) -> Step:
  src = np.ones(_floor_bytes(d), np.uint8)
  dst = np.empty_like(src)

  def call():
    np.copyto(dst, src)
    return dst
  return _numpy_step(call)


def _ml_dtypes_fresh(d: Data) -> Step:
  def call():
    with np.errstate(invalid="ignore", over="ignore"):
      return d.x_np.astype(ml_dtypes.float8_e4m3fn)
  return _numpy_step(call)


def _ml_dtypes_reused(d: Data) -> Step:
  dst = np.empty(d.shape, ml_dtypes.float8_e4m3fn)

  def call():
    with np.errstate(invalid="ignore", over="ignore"):
      np.copyto(dst, d.x_np, casting="unsafe")
    return dst
  return _numpy_step(call)


def _torch_step(call: Callable[[], Any]) -> Step:
  box = [None]

  def step():
    box[0] = call()
    _torch_sync()
  return step, lambda: _host_bytes(box[0])


def _torch_f8(name: str):
  return {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[name]


def _torch_to_fresh(fmt: str) -> Factory:
  return lambda d: _torch_step(lambda: d.t.to(_torch_f8(fmt)))


def _torch_to_reused(fmt: str) -> Factory:
  def factory(d: Data) -> Step:
    out = torch.empty(d.shape, dtype=_torch_f8(fmt), device=d.t.device)
    return _torch_step(lambda: out.copy_(d.t))
  return factory


def _torch_decode_fresh(d: Data) -> Step:
  f8 = d.codes_t.view(torch.float8_e4m3fn)
  return _torch_step(lambda: f8.to(torch.bfloat16))


def _torch_decode_reused(d: Data) -> Step:
  f8 = d.codes_t.view(torch.float8_e4m3fn)
  out = torch.empty(d.shape, dtype=torch.bfloat16, device=f8.device)
  return _torch_step(lambda: out.copy_(f8))


def torchao_recipe(t, out=None, work=None):
  """Per-tensor dynamic scaling as torchao's float8 training casts a tensor.

  amax = max |t|; scale = 448 / max(amax, 1e-12), formed in float64 and
  rounded to float32; codes = clamp(float32(t) * scale, -448, 448) cast to
  float8_e4m3fn. Returns (codes, scale). With `out` (float8_e4m3fn) and
  `work` (a float32 buffer and a bfloat16 one, like `t`) the same operations
  write into them instead of allocating.
  """
  if work is None:
    amax = torch.max(torch.abs(t))
  else:
    amax = torch.max(torch.abs(t, out=work[1]))
  scale = (_E4M3FN_MAX / torch.clamp(amax.to(torch.float64), min=_TORCHAO_EPS)).to(torch.float32)
  if work is None:
    scaled = t.to(torch.float32) * scale
    return scaled.clamp(-_E4M3FN_MAX, _E4M3FN_MAX).to(torch.float8_e4m3fn), scale
  scaled = work[0]
  scaled.copy_(t)
  scaled.mul_(scale).clamp_(-_E4M3FN_MAX, _E4M3FN_MAX)
  return out.copy_(scaled), scale


def _torchao_fresh(d: Data) -> Step:
  return _torch_step(lambda: torchao_recipe(d.t))


def _torchao_reused(d: Data) -> Step:
  out = torch.empty(d.shape, dtype=torch.float8_e4m3fn, device=d.t.device)
  work = (torch.empty(d.shape, dtype=torch.float32, device=d.t.device), torch.empty_like(d.t))
  return _torch_step(lambda: torchao_recipe(d.t, out, work))


def _interop_fresh(d: Data) -> Step:
  return _torch_step(lambda: interop.round_to_fp8_represented_as_int8(d.t, 3))


def _interop_reused(d: Data) -> Step:
  out = torch.empty(d.shape, dtype=torch.uint8, device=d.t.device)
  return _torch_step(lambda: interop.round_to_fp8_represented_as_int8(d.t, 3, out))


def _quantize_impl(name: str) -> Impl:
  kw = _QUANTIZE[name]
  into = _QUANTIZE_INTO[name]
  nbytes = TENSOR_SCALING_BYTES if kw["scaling"] == "tensor" else CAST_BYTES
  return Impl(name, "fp8jax", nbytes,
              _jax_fresh(lambda d: lambda: fp8jax.quantize(d.x, "e4m3fn", **kw)),
              _jax_reused(lambda d: lambda o: into(d.x, o), _zeros(jnp.uint8),
                          leaf=lambda q: q.bits),
              note="e4m3fn; reused: jit of quantize with the codes' buffer donated")


IMPLS: tuple[Impl, ...] = (
    Impl("encode e4m3fn", "fp8jax", CAST_BYTES,
         _jax_fresh(lambda d: lambda: fp8jax.encode(d.x, "e4m3fn")),
         _jax_reused(lambda d: lambda o: fp8jax.round_to_fp8_represented_as_int8(d.x, 3, out=o),
                     _zeros(jnp.uint8)),
         note="nearest, saturate; reused: round_to_fp8_represented_as_int8(x, 3, out=y)"),
    Impl("encode e5m2", "fp8jax", CAST_BYTES,
         _jax_fresh(lambda d: lambda: fp8jax.encode(d.x, "e5m2")),
         _jax_reused(lambda d: lambda o: _ENC_E5M2_INTO(d.x, o), _zeros(jnp.uint8)),
         note="nearest, saturate"),
    Impl("decode e4m3fn→bf16", "fp8jax", CAST_BYTES,
         _jax_fresh(lambda d: lambda: fp8jax.decode(d.codes, "e4m3fn")),
         _jax_reused(lambda d: lambda o: fp8jax.undo_int8_fp8(d.codes, 3, jnp.bfloat16, out=o),
                     _zeros(jnp.bfloat16)),
         note="reused: undo_int8_fp8(codes, 3, jnp.bfloat16, out=y)"),
    Impl("encode e4m3fn stochastic", "fp8jax", CAST_BYTES,
         _jax_fresh(lambda d: lambda: fp8jax.encode(d.x, "e4m3fn", rounding="stochastic",
                                                    key=_KEY)),
         _jax_reused(lambda d: lambda o: _ENC_SR_INTO(d.x, _KEY, o), _zeros(jnp.uint8)),
         note="key=jax.random.key(0) every call"),
    *(_quantize_impl(name) for name in _QUANTIZE),
    Impl("interop round_to_fp8 (torch)", "fp8jax", CAST_BYTES, _interop_fresh, _interop_reused,
         needs_torch=True,
         note="torch tensors in and out; reused: the out= argument (filled in place)"),
    Impl("xla astype e4m3fn", "peer", CAST_BYTES,
         _jax_fresh(lambda d: lambda: _XLA["e4m3fn"](d.x)),
         _jax_reused(lambda d: lambda o: _XLA_INTO["e4m3fn"](d.x, o),
                     _zeros(jnp.float8_e4m3fn))),
    Impl("xla astype e5m2", "peer", CAST_BYTES,
         _jax_fresh(lambda d: lambda: _XLA["e5m2"](d.x)),
         _jax_reused(lambda d: lambda o: _XLA_INTO["e5m2"](d.x, o), _zeros(jnp.float8_e5m2))),
    Impl("xla astype f8→bf16", "peer", CAST_BYTES,
         _jax_fresh(lambda d: lambda: _XLA["bf16"](d.codes_f8)),
         _jax_reused(lambda d: lambda o: _XLA_INTO["bf16"](d.codes_f8, o),
                     _zeros(jnp.bfloat16))),
    Impl("ml_dtypes astype e4m3fn", "peer", CAST_BYTES, _ml_dtypes_fresh, _ml_dtypes_reused,
         note="NumPy on the host; reused: np.copyto(out, x, casting='unsafe')"),
    Impl("torch .to(e4m3fn)", "peer", CAST_BYTES, _torch_to_fresh("e4m3fn"),
         _torch_to_reused("e4m3fn"), needs_torch=True, note="reused: out.copy_(x)"),
    Impl("torch .to(e5m2)", "peer", CAST_BYTES, _torch_to_fresh("e5m2"),
         _torch_to_reused("e5m2"), needs_torch=True, note="reused: out.copy_(x)"),
    Impl("torch .to(bf16) from e4m3fn", "peer", CAST_BYTES, _torch_decode_fresh,
         _torch_decode_reused, needs_torch=True, note="reused: out.copy_(codes_f8)"),
    Impl("torchao recipe", "peer", TENSOR_SCALING_BYTES, _torchao_fresh, _torchao_reused,
         needs_torch=True,
         note="amax, scale, clamp, cast (torchao float8 training); reused: the same ops "
              "into a preallocated float32 workspace and output"),
    Impl(JAX_FLOORS[0], "floor", CAST_BYTES, _floor_jax_fresh, _floor_jax_reused,
         note="jitted a + 1 over 1.5 n uint8 bytes (reads and writes 3 n bytes in all); "
              "reused: into a donated buffer"),
    Impl(JAX_FLOORS[1], "floor", CAST_BYTES, _floor_narrow_fresh, _floor_narrow_reused,
         note="jitted uint16 -> uint8 truncation of n elements (reads 2 n, writes n bytes, "
              "as a cast); reused: into a donated buffer"),
    Impl("memcpy floor (numpy)", "floor", CAST_BYTES, _floor_numpy_fresh,
         _floor_numpy_reused, note="copy of 1.5 n bytes; reused: np.copyto"),
)
IMPL_NAMES = tuple(i.name for i in IMPLS)


# --- measuring -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Timing:
  """How long to measure: a time budget, bounds on the count, warm-up calls."""
  min_time_s: float = 0.3
  min_repeats: int = 5
  max_repeats: int = 1000
  warmup: int = 2
  repeats: int | None = None       # exact count, overriding the budget


def measure(step: Callable[[], None], timing: Timing) -> dict[str, Any]:
  """First call, warm-up, then per-call times; returns the statistics in seconds."""
  donation_unused = False
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
  for w in caught:
    if "donated buffers were not usable" in str(w.message):
      donation_unused = True
  warm = []
  for _ in range(timing.warmup):
    t0 = time.perf_counter()
    step()
    warm.append(time.perf_counter() - t0)
  if timing.repeats is not None:
    reps = timing.repeats
  else:
    est = max(min(warm) if warm else first, 1e-7)
    reps = min(timing.max_repeats, max(timing.min_repeats, math.ceil(timing.min_time_s / est)))
  times = []
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    for _ in range(reps):
      t0 = time.perf_counter()
      step()
      times.append(time.perf_counter() - t0)
  finally:
    if gc_was_enabled:
      gc.enable()
  times.sort()
  q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
  return {"first_call_s": first, "median_s": statistics.median(times), "min_s": times[0],
          "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "repeats": reps,
          "donation_unused": donation_unused}


def _bits(a: Any) -> np.ndarray:
  if torch is not None and isinstance(a, torch.Tensor):
    return a.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
  return np.ascontiguousarray(np.asarray(a)).reshape(-1).view(np.uint8)


def check_bits(d: Data) -> dict[str, bool]:
  """Bit-for-bit agreement of fp8jax with the peers it claims to reproduce."""
  checks: dict[str, Callable[[], tuple[Any, Any]]] = {
      "encode e4m3fn ieee == xla astype": lambda: (
          fp8jax.encode(d.x, "e4m3fn", overflow="ieee"), _CHECK["e4m3fn"](d.x)),
      "encode e5m2 ieee == xla astype": lambda: (
          fp8jax.encode(d.x, "e5m2", overflow="ieee"), _CHECK["e5m2"](d.x)),
      "encode e4m3fn ieee == ml_dtypes astype": lambda: (
          fp8jax.encode(d.x, "e4m3fn", overflow="ieee"),
          d.x_np.astype(ml_dtypes.float8_e4m3fn)),
      "decode e4m3fn == xla astype": lambda: (
          fp8jax.decode(d.codes, "e4m3fn", jnp.float32), _CHECK["f32"](d.codes_f8)),
  }
  if torch is not None:
    checks["encode e4m3fn satfinite == torch .to()"] = lambda: (
        fp8jax.encode(d.x, "e4m3fn", overflow="satfinite"), d.t.to(torch.float8_e4m3fn))
  out = {}
  for name, pair in checks.items():
    with np.errstate(invalid="ignore", over="ignore"):
      a, b = pair()
    out[name] = bool(np.array_equal(_bits(a), _bits(b)))
  return out


def selected(only: str | None) -> tuple[list[Impl], list[dict[str, str]]]:
  impls, skipped = [], []
  for impl in IMPLS:
    if only and only.lower() not in impl.name.lower() and impl.kind != "floor":
      continue
    if impl.needs_torch and torch is None:
      skipped.append({"name": impl.name, "reason": "torch is not installed"})
      continue
    impls.append(impl)
  return impls, skipped


def run_once(sizes: list[int], modes: list[str], impls: list[Impl], timing: Timing,
             log: Callable[[str], None]) -> dict[str, Any]:
  """One pass over every size, mode and implementation."""
  rows: list[dict[str, Any]] = []
  bit_identical: dict[str, dict[str, bool]] = {}
  for n in sizes:
    label = size_label(n)
    log(f"[{label}] preparing data")
    d = make_data(n)
    checks = check_bits(d)
    digests: dict[tuple[str, str], int] = {}
    for mode in modes:
      # The floors run first and again last, and keep the faster median: a floor
      # is a lower bound, and on a busy machine one measurement can be unlucky.
      floors = [i for i in impls if i.kind == "floor"]
      measured: dict[str, dict[str, Any]] = {}
      for impl in floors + [i for i in impls if i.kind != "floor"] + floors:
        factory = impl.fresh if mode == "fresh" else impl.reused
        if factory is None:
          continue
        step, last = factory(d)
        stats = measure(step, timing)
        digests[(impl.name, mode)] = zlib.crc32(last())
        del step, last
        log(f"[{label}] {mode:6s} {impl.name:30s} {fmt_time(stats['median_s']):>9s}  "
            f"(first {fmt_time(stats['first_call_s'])}, {stats['repeats']} repeats)")
        if stats["donation_unused"]:
          log(f"  !!! {impl.name}: JAX did not use the donated buffer")
        earlier = measured.get(impl.name)
        if earlier is not None:
          medians = [earlier["median_s"], stats["median_s"]]
          stats = min(earlier, stats, key=lambda st: st["median_s"])
          stats["first_call_s"] = earlier["first_call_s"]
          stats["medians_s"] = medians
        measured[impl.name] = stats
      for impl in impls:
        stats = measured.get(impl.name)
        if stats is None:
          continue
        nbytes = impl.bytes_per_element * n
        rows.append({"name": impl.name, "kind": impl.kind, "mode": mode, "size": label,
                     "elements": n, "bytes_per_element": impl.bytes_per_element,
                     "gb_per_s": nbytes / stats["median_s"] / 1e9,
                     "elements_per_s": n / stats["median_s"], **stats})
    for impl in impls:
      fresh, reused = digests.get((impl.name, "fresh")), digests.get((impl.name, "reused"))
      if fresh is not None and reused is not None and impl.kind != "floor":
        checks[f"{impl.name}: reused == fresh"] = fresh == reused
    # Checked here, from the outputs kept above, so that no check warms a timed jit.
    for mode in modes:
      ours = digests.get(("interop round_to_fp8 (torch)", mode))
      ref = digests.get(("encode e4m3fn", mode))
      if ours is not None and ref is not None:
        checks[f"interop round_to_fp8 == encode e4m3fn ({mode})"] = ours == ref
    for name, ok in checks.items():
      if not ok:
        log(f"!!! BIT MISMATCH at {label}: {name} is FALSE")
    bit_identical[label] = checks
    del d
    gc.collect()
  add_floor_fractions(rows)
  return {"results": rows, "bit_identical": bit_identical, "ratios": ratios(rows)}


def add_floor_fractions(rows: list[dict[str, Any]]) -> None:
  """floor_fraction = (bytes moved / floor bandwidth) / time, same mode and size."""
  floors: dict[tuple[str, str], float] = {}
  for r in rows:
    if r["name"] in JAX_FLOORS:
      key = (r["mode"], r["size"])
      floors[key] = max(floors.get(key, 0.0), r["gb_per_s"])
  for r in rows:
    bw = floors.get((r["mode"], r["size"]))
    r["floor_fraction"] = None if bw is None else r["gb_per_s"] / bw


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  t = {(r["name"], r["mode"], r["size"]): r["median_s"] for r in rows}
  keys = sorted({(r["mode"], r["size"], r["elements"]) for r in rows},
                key=lambda k: (MODES.index(k[0]), k[2]))
  out = []
  for key, num, den, op, target in RATIOS:
    for mode, size, _ in keys:
      a, b = t.get((num, mode, size)), t.get((den, mode, size))
      if a is None or b is None:
        continue
      value = a / b
      meets = value >= target if op == ">=" else value <= target
      out.append({"ratio": key, "numerator": num, "denominator": den, "mode": mode,
                  "size": size, "value": value, "target": f"{op} {target}", "meets": meets})
  return out


# --- reporting -------------------------------------------------------------------

def fmt_time(s: float) -> str:
  if s < 1e-3:
    return f"{s * 1e6:.1f} µs"
  if s < 1:
    return f"{s * 1e3:.2f} ms"
  return f"{s:.2f} s"


def _table(head: list[str], body: list[list[str]]) -> str:
  widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(row, widths))) for row in [head] + body]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def report(run: dict[str, Any], impl_names: list[str]) -> str:
  rows = run["results"]
  sizes = sorted({(r["elements"], r["size"]) for r in rows})
  by = {(r["name"], r["mode"], r["size"]): r for r in rows}
  parts = []
  for mode in MODES:
    names = [n for n in impl_names if any((n, mode, s) in by for _, s in sizes)]
    if not names:
      continue
    body = []
    for name in names:
      cells = [name]
      for _, s in sizes:
        r = by.get((name, mode, s))
        cells.append("—" if r is None else f"{fmt_time(r['median_s'])} "
                     f"±{100 * r['iqr_s'] / r['median_s']:.0f}% {r['gb_per_s']:6.2f}")
      body.append(cells)
    parts.append(f"## {mode} output: median time, ±interquartile range as a % of it, GB/s "
                 "(bytes read + written)\n"
                 + _table(["implementation"] + [s for _, s in sizes], body))
    body = []
    for name in names:
      cells = [name]
      for _, s in sizes:
        r = by.get((name, mode, s))
        frac = None if r is None else r["floor_fraction"]
        cells.append("—" if frac is None else f"{frac:.2f}")
      body.append(cells)
    parts.append(f"## {mode} output: fraction of the memory floor (floor time / time)\n"
                 + _table(["implementation"] + [s for _, s in sizes], body))
  body = []
  for name in impl_names:
    for mode in MODES:
      if any((name, mode, s) in by for _, s in sizes):
        body.append([f"{name} [{mode}]"] + [
            fmt_time(by[(name, mode, s)]["first_call_s"]) if (name, mode, s) in by else "—"
            for _, s in sizes])
  parts.append("## first call (compile and one run for JAX; table build for the torch "
               "bridge's small sizes)\n" + _table(["implementation"] + [s for _, s in sizes],
                                                  body))
  parts.append(ratio_table(run["ratios"]))
  return "\n\n".join(parts)


def _ratio_grid(entries: list[dict[str, Any]], cell: Callable[[dict[str, Any]], str]) -> str:
  """A table of ratios (rows) by mode and size (columns), one `cell` each."""
  cols = sorted({(MODES.index(e["mode"]), e["mode"], e["size"]) for e in entries},
                key=lambda c: (c[0], parse_size(c[2])))
  by = {(e["ratio"], e["mode"], e["size"]): e for e in entries}
  body = []
  for key, _, _, op, target in RATIOS:
    if not any((key, m, s) in by for _, m, s in cols):
      continue
    cells = [key, f"{op} {target}"]
    for _, m, s in cols:
      e = by.get((key, m, s))
      cells.append("—" if e is None else cell(e))
    body.append(cells)
  return _table(["ratio", "target"] + [f"{m} {s}" for _, m, s in cols], body)


def ratio_table(entries: list[dict[str, Any]]) -> str:
  return ("## ratios of median times (targets are for 64M elements on the CPU machine; "
          "✗ misses)\n" + _ratio_grid(
              entries, lambda e: f"{e['value']:.2f}{'' if e['meets'] else ' ✗'}"))


def summarize_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Each ratio's min and max over repeated runs."""
  acc: dict[tuple[str, str, str], list[float]] = {}
  meta = {}
  for run in runs:
    for e in run["ratios"]:
      k = (e["ratio"], e["mode"], e["size"])
      acc.setdefault(k, []).append(e["value"])
      meta[k] = e["target"]
  out = []
  for (key, mode, size), values in acc.items():
    op, target = meta[(key, mode, size)].split()
    lo, hi = min(values), max(values)
    worst = lo if op == ">=" else hi
    meets = worst >= float(target) if op == ">=" else worst <= float(target)
    out.append({"ratio": key, "mode": mode, "size": size, "min": lo, "max": hi,
                "runs": len(values), "target": meta[(key, mode, size)],
                "meets_in_every_run": meets})
  return out


def summary_table(summary: list[dict[str, Any]]) -> str:
  runs = summary[0]["runs"] if summary else 0
  return (f"## ratio ranges over {runs} runs (min–max; ✗: the target is missed in some run)\n"
          + _ratio_grid(summary, lambda e: f"{e['min']:.2f}–{e['max']:.2f}"
                        f"{'' if e['meets_in_every_run'] else ' ✗'}"))


def environment(argv: list[str]) -> dict[str, Any]:
  dev = jax.devices()[0]
  env = {
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": " ".join([os.path.basename(sys.executable)] + argv),
      "python": platform.python_version(), "machine": platform.machine(),
      "processor": platform.processor(), "cpu_count": os.cpu_count(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
      "ml_dtypes": ml_dtypes.__version__,
      "fp8jax": fp8jax.__version__, "platform": dev.platform, "device": str(dev),
      "device_kind": dev.device_kind, "device_count": jax.device_count()}
  if torch is not None:
    env.update(torch=torch.__version__, torch_num_threads=torch.get_num_threads(),
               torch_device=_torch_device())
  else:
    env.update(torch=None)
  return env


def write_atomic(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
  """Writes through a temporary file in the same directory, then renames it."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path), suffix=".tmp")
  try:
    with os.fdopen(fd, "wb" if binary else "w") as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; results are for everyone
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


_FLOOR_STYLES = {JAX_FLOORS[0]: "--", JAX_FLOORS[1]: (0, (6, 2, 1, 2))}


def plot(run: dict[str, Any], impl_names: list[str], path: str, title: str) -> str | None:
  """Throughput against size, one panel per mode; None, or why no plot was made."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return "matplotlib is not installed (pip install matplotlib, or the 'plot' extra)"
  rows = run["results"]
  modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
  fig, axes = plt.subplots(1, len(modes), figsize=(7.5 * len(modes), 6.5), squeeze=False,
                           sharey=True)
  cmap = plt.get_cmap("tab20")
  for ax, mode in zip(axes[0], modes):
    for i, name in enumerate(impl_names):
      pts = sorted((r["elements"], r) for r in rows if r["name"] == name and r["mode"] == mode)
      if not pts:
        continue
      xs = [p[0] for p in pts]
      floor = pts[0][1]["kind"] == "floor"
      # A floor is drawn as the throughput of a 3-byte-per-element op at its bandwidth.
      ys = [p[1]["gb_per_s"] * 1e9 / CAST_BYTES if floor else p[1]["elements_per_s"]
            for p in pts]
      ax.plot(xs, ys, label=name, color="black" if floor else cmap(i % 20),
              linestyle=_FLOOR_STYLES.get(name, ":") if floor else
              ("-" if pts[0][1]["kind"] == "fp8jax" else "-."),
              marker=None if floor else "os^vD<>"[i % 7], linewidth=2 if floor else 1.3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input elements (bfloat16)")
    ax.set_title(f"{mode} output")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][0].set_ylabel("input elements per second (floors: 3 B/element at the copy's GB/s)")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.17, 1, 0.97))
  write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
  plt.close(fig)
  return None


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.splitlines()[1:]))
  parser.add_argument("--sizes", default=None,
                      help=f"comma-separated element counts with K/M/G suffixes "
                           f"(default {DEFAULT_SIZES}; {QUICK_SIZES} with --quick)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per measurement (default: adaptive, >= 0.3 s, 5 to 1000)")
  parser.add_argument("--modes", default=",".join(MODES), help="fresh, reused or both")
  parser.add_argument("--out", default=RESULTS, help="output directory (default %(default)s)")
  parser.add_argument("--only", default=None,
                      help="measure only implementations whose name contains this (the floors "
                           "always run)")
  parser.add_argument("--repeat-run", type=int, default=1,
                      help="run the whole suite this many times; report each ratio's min–max")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads(N) first (default: torch's own choice, "
                           "reported in the JSON)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: tiny sizes, short timings; files named *-quick")
  args = parser.parse_args(argv)
  try:
    sizes = [parse_size(s) for s in (args.sizes or (QUICK_SIZES if args.quick else
                                                    DEFAULT_SIZES)).split(",")]
  except argparse.ArgumentTypeError as e:
    parser.error(f"--sizes: {e}")
  modes = [m.strip() for m in args.modes.split(",")]
  bad = [m for m in modes if m not in MODES]
  if bad:
    parser.error(f"--modes takes fresh and/or reused (got {', '.join(bad)})")
  if args.repeats is not None and args.repeats < 1:
    parser.error(f"--repeats must be at least 1 (got {args.repeats})")
  if args.repeat_run < 1:
    parser.error(f"--repeat-run must be at least 1 (got {args.repeat_run})")
  timing = (Timing(min_time_s=0.01, min_repeats=3, max_repeats=20, warmup=1,
                   repeats=args.repeats) if args.quick else Timing(repeats=args.repeats))
  if args.torch_threads is not None:
    if args.torch_threads < 1:
      parser.error(f"--torch-threads must be at least 1 (got {args.torch_threads})")
    if torch is not None:
      torch.set_num_threads(args.torch_threads)
  impls, skipped = selected(args.only)
  names = [i.name for i in impls]

  def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

  for s in skipped:
    log(f"skipping {s['name']}: {s['reason']}")
  env = environment([sys.argv[0]] + argv)
  log(f"{env['device']} ({env['device_kind']}), {env['cpu_count']} CPUs, jax {env['jax']}, "
      f"torch {env['torch']} ({env.get('torch_num_threads')} threads)")
  wall = time.perf_counter()
  runs = []
  for k in range(args.repeat_run):
    if args.repeat_run > 1:
      log(f"=== run {k + 1} of {args.repeat_run}")
    runs.append(run_once(sizes, modes, impls, timing, log))
    if args.repeat_run > 1:
      print(f"# run {k + 1} of {args.repeat_run}\n" + ratio_table(runs[-1]["ratios"]) + "\n")
  summary = summarize_runs(runs)
  print(report(runs[-1], names))
  if args.repeat_run > 1:
    print("\n" + summary_table(summary))
  mismatches = [f"{size}: {name}" for run in runs for size, checks in run["bit_identical"].items()
                for name, ok in checks.items() if not ok]
  if mismatches:
    print("\n!!! BIT MISMATCHES (the timings above compare different results):\n  "
          + "\n  ".join(mismatches))
  stem = env["platform"] + ("-quick" if args.quick else "")
  json_path = os.path.join(args.out, stem + ".json")
  png_path = os.path.join(args.out, stem + ".png")
  result = {
      "environment": env, "sizes": [size_label(n) for n in sizes], "modes": modes,
      "timing": dataclasses.asdict(timing), "wall_s": time.perf_counter() - wall,
      "implementations": [
          {"name": i.name, "kind": i.kind, "bytes_per_element": i.bytes_per_element,
           "modes": [m for m in modes if (i.fresh if m == "fresh" else i.reused)],
           "note": i.note} for i in impls],
      "skipped": skipped,
      "notes": [
          ("times in seconds; gb_per_s counts bytes read + written: 3 per element for casts "
           "and decode, 5 for per-tensor quantize (amax pass + cast), 3 for per-axis, "
           "per-block and MX quantize"),
          (f"floor_fraction: (bytes / the faster of {' and '.join(JAX_FLOORS)}'s "
           "bandwidth in the same mode and size) / time; 1 would be a copy's speed"),
          ("ratios: time(numerator) / time(denominator); targets are for 64M elements on "
           "the CPU machine"),
          "first_call_s of runs after the first can hit the jit caches",
      ],
      "runs": runs, "ratio_summary": summary, "bit_identical_all": not mismatches}
  write_atomic(json_path, lambda f: json.dump(result, f, indent=1, ensure_ascii=False))
  why = plot(runs[-1], names, png_path,
             f"fp8jax benchmarks, bf16 input, {env['device_kind']} ({env['platform']}), "
             f"jax {env['jax']}, {env['date']}")
  log(f"wrote {json_path}" + (f" and {png_path}" if why is None else f"; no plot: {why}"))
  log(f"total {time.perf_counter() - wall:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
