"""What the suite measures: the data, the sizes, and every case, peer and floor.

Each implementation (`Impl`) is a name, a kind ("fp8jax", "peer" or "floor"), the
bytes it must move per element, and one factory per output mode that builds, for one
size's `Data`, a call that waits for its result. `IMPLS` lists them in the order of the
tables; `check_bits` lists what must agree bit for bit. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import fp8jax

try:
  import torch

  import interop
except ImportError:  # the torch rows are skipped
  torch = None
  interop = None

DEFAULT_SIZES = "1K,1M,16M,64M"
QUICK_SIZES = "1K,64K"
MODES = ("fresh", "reused")
_ROW = 1024          # the data's last axis: (n / 1024, 1024)
_BLOCK = 128         # quantize block128: 1-D blocks along the last axis
_TILE = (128, 128)   # quantize block128x128: 2-D tiles over the last two axes
NVFP4_BLOCK = 16     # quantize nvfp4: 1x16 blocks along the last axis
_SCALE = 100.0       # N(0, 1) * 100: about 1 value in 10^5 exceeds e4m3fn's 448
_E4M3FN_MAX = 448.0
_TORCHAO_EPS = 1e-12  # torchao's floor on amax before dividing

# Minimal bytes moved per element (read + written), see benchmarks/README.md.
CAST_BYTES = 3
TENSOR_SCALING_BYTES = 5
# The JAX floors; an implementation is compared with the faster of them.
JAX_FLOORS = ("memcpy floor (jax)", "narrowing copy floor (jax)")


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
  # The dequantize cases' inputs, by quantize case name, made once (`_qarray`).
  qarrays: dict[str, Any] = dataclasses.field(default_factory=dict)


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
  """1024 -> '1K', 16 * 2**20 -> '16M', 1000 -> '1000'."""
  for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
    if n % unit == 0:
      return f"{n // unit}{suffix}"
  return str(n)


def torch_device() -> str:
  """Where the torch tensors live: "cuda" when JAX runs on a GPU that torch sees too."""
  return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_sync() -> None:
  if torch is not None and torch_device() == "cuda":
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
    device = torch_device()
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


def _bits(a: Any) -> np.ndarray:
  """An array's or a tensor's bytes, flat, on the host."""
  if torch is not None and isinstance(a, torch.Tensor):
    return a.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
  return np.ascontiguousarray(np.asarray(a)).reshape(-1).view(np.uint8)


def _host_bytes(result: Any) -> bytes:
  """All the bytes of a result (an array, a tensor, or a tree of them), on the host."""
  return b"".join(_bits(leaf).tobytes() for leaf in jax.tree_util.tree_leaves(result))


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
# name: (element format, quantize's keywords, what it is). The codes are one per byte
# (FP4 unpacked), so every case writes n code bytes, as a cast does.
_QUANTIZE: dict[str, tuple[str, dict[str, Any], str]] = {
    "quantize tensor": ("e4m3fn", {"scaling": "tensor"}, "e4m3fn"),
    "quantize axis": ("e4m3fn", {"scaling": "axis", "axis": -1}, "e4m3fn"),
    "quantize block128": ("e4m3fn", {"scaling": "block", "block_size": _BLOCK}, "e4m3fn"),
    "quantize block128x128": ("e4m3fn", {"scaling": "block", "block_size": _TILE},
                              "e4m3fn, 128x128 tiles over the last two axes"),
    "quantize mx": ("e4m3fn", {"scaling": "mx"}, "e4m3fn"),
    "quantize mx rceil": ("e4m3fn", {"scaling": "mx", "scale_rounding": "rceil"},
                          "e4m3fn, MX with scale_rounding='rceil'"),
    "quantize mxfp4": ("e2m1fn", {"scaling": "mx"},
                       "e2m1fn (unpacked), MX with scale_rounding='floor'"),
    "quantize nvfp4": ("e2m1fn", {"scaling": "nvfp4", "nvfp4_rule": "torchao",
                                  "block_size": NVFP4_BLOCK},
                       "e2m1fn (unpacked), NVFP4 torchao rule, 1x16 blocks along the last "
                       "axis, counted as per-tensor scaling (the tensor amax comes first)"),
}
_QUANTIZE_INTO = {name: _donating(lambda x, fmt=fmt, kw=kw: fp8jax.quantize(x, fmt, **kw))
                  for name, (fmt, kw, _) in _QUANTIZE.items()}
# dequantize case name: the quantize case that makes its input. The input QArray is made
# once per size, outside the timed calls, by a jit of its own (`_qarray`); the timed call
# is dequantize(q, jnp.bfloat16), and its reused twin takes a donated bfloat16 output
# (a QArray is a pytree, so it passes through jit as it is).
_DEQUANTIZE = {
    "dequantize tensor": "quantize tensor",
    "dequantize axis": "quantize axis",
    "dequantize block128": "quantize block128",
    "dequantize block128x128": "quantize block128x128",
    "dequantize mx": "quantize mx",
    "dequantize nvfp4": "quantize nvfp4",
}
_QARRAY = {name: jax.jit(lambda x, fmt=fmt, kw=kw: fp8jax.quantize(x, fmt, **kw))
           for name, (fmt, kw, _) in _QUANTIZE.items() if name in _DEQUANTIZE.values()}
_DEQUANTIZE_INTO = {name: jax.jit(lambda q, out: fp8jax.dequantize(q, jnp.bfloat16),
                                  donate_argnums=1, keep_unused=True) for name in _DEQUANTIZE}

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
  fmt, kw, what = _QUANTIZE[name]
  into = _QUANTIZE_INTO[name]
  # A tensor amax (per-tensor scaling, NVFP4's tensor scale) must be known before the
  # first code is written: the input is read twice.
  nbytes = (TENSOR_SCALING_BYTES if kw["scaling"] in ("tensor", "nvfp4") else CAST_BYTES)
  return Impl(name, "fp8jax", nbytes,
              _jax_fresh(lambda d: lambda: fp8jax.quantize(d.x, fmt, **kw)),
              _jax_reused(lambda d: lambda o: into(d.x, o), _zeros(jnp.uint8),
                          leaf=lambda q: q.bits),
              note=f"{what}; reused: jit of quantize with the codes' buffer donated")


def _qarray(d: Data, name: str) -> Any:
  """The QArray of quantize case `name` of d.x, made on first use and kept with `d`."""
  if name not in d.qarrays:
    d.qarrays[name] = jax.block_until_ready(_QARRAY[name](d.x))
  return d.qarrays[name]


def _dequantize_impl(name: str) -> Impl:
  source = _DEQUANTIZE[name]
  into = _DEQUANTIZE_INTO[name]

  def fresh(d: Data) -> Callable[[], Any]:
    q = _qarray(d, source)
    return lambda: fp8jax.dequantize(q, jnp.bfloat16)

  def reused(d: Data) -> Callable[[Any], Any]:
    q = _qarray(d, source)
    return lambda o: into(q, o)
  return Impl(name, "fp8jax", CAST_BYTES, _jax_fresh(fresh),
              _jax_reused(reused, _zeros(jnp.bfloat16)),
              note=f"to bfloat16, from a QArray made once per size by `{source}`'s call; "
                   "reused: jit of dequantize with the output's buffer donated")


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
    *(_dequantize_impl(name) for name in _DEQUANTIZE),
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
# The floor targets' groups: every quantize case, the MX and NVFP4 ones, every dequantize.
QUANTIZE_NAMES = tuple(_QUANTIZE)
MX_NVFP4_QUANTIZE = ("quantize mx", "quantize mx rceil", "quantize mxfp4", "quantize nvfp4")
DEQUANTIZE_NAMES = tuple(_DEQUANTIZE)


def selected(only: str | None) -> tuple[list[Impl], list[dict[str, str]]]:
  """The implementations to run (those whose name contains `only`, and the floors), and
  those skipped for want of torch, with the reason."""
  impls, skipped = [], []
  for impl in IMPLS:
    if only and only.lower() not in impl.name.lower() and impl.kind != "floor":
      continue
    if impl.needs_torch and torch is None:
      skipped.append({"name": impl.name, "reason": "torch is not installed"})
      continue
    impls.append(impl)
  return impls, skipped


# --- what must agree ---------------------------------------------------------------

# The bit checks' own jits (separate caches, so that a check warms nothing
# that is timed); decode is checked in float32 for the same reason.
_CHECK = {
    "e4m3fn": jax.jit(lambda a: a.astype(jnp.float8_e4m3fn)),
    "e5m2": jax.jit(lambda a: a.astype(jnp.float8_e5m2)),
    "f32": jax.jit(lambda a: a.astype(jnp.float32)),
}


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
