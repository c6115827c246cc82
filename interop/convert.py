"""The torch-facing conversions, bit-identical to fp8jax's JAX functions.

Two routes give the same bits:

- small bfloat16/float16 inputs under deterministic rounding, unscaled,
  go through a 65,536-entry code table per (format, rounding, overflow,
  dtype, device), computed once by fp8jax's JAX encoder from every bit
  pattern and applied with one `torch.take`; decoding likewise uses a
  256-entry value table. This avoids the DLPack and dispatch overhead that
  dominates small calls (exact by construction; tested exhaustively);
- everything else (float32 inputs, stochastic rounding, scaling factors,
  tensors above `TABLE_MAX_ELEMENTS`) is shared with JAX through DLPack,
  converted by the jitted kernel and shared back.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from fp8jax.core import checks, codec
from fp8jax.core.formats import Format, FormatLike, get_format, resolve_format
from fp8jax.core.layout import FLOATS
from interop.dlpack import _check_tensor, _dense, to_jax, to_torch

# Above this many elements the JAX route is faster than a table gather
# (measured on the 2-core CPU machine; see the README).
TABLE_MAX_ELEMENTS = 1 << 18

_FLOATS = {getattr(torch, f.torch): f.dtype for f in FLOATS}
_FLOAT_NAMES = "torch.bfloat16, torch.float16 or torch.float32"
_CODES = (torch.uint8, torch.int8)


def _float_input(t: Any, argname: str) -> torch.Tensor:
  t = _check_tensor(t, argname)
  if t.dtype not in _FLOATS:
    raise TypeError(f"{argname} must be {_FLOAT_NAMES} (got {t.dtype})")
  return t


def _code_input(t: Any, argname: str) -> torch.Tensor:
  t = _check_tensor(t, argname)
  if t.dtype not in _CODES:
    raise TypeError(f"{argname} must be torch.uint8 (or int8) codes (got {t.dtype})")
  return t


def _target(dtype: Any, argname: str) -> torch.dtype:
  if dtype not in _FLOATS:
    raise TypeError(f"{argname} must be {_FLOAT_NAMES} (got {dtype!r})")
  return dtype


def _check_out(out: Any, like: torch.Tensor, dtype: torch.dtype) -> None:
  """Validates `out` before any work, so that it is untouched on error.

  Besides shape, dtype, device and layout, `out` must be writable in
  place here: not an inference tensor outside inference mode, not a view
  of a tensor that requires grad, not a lazily negated or conjugated view
  (torch refuses such writes only after making them).
  """
  if out is None:
    return
  if not isinstance(out, torch.Tensor):
    raise TypeError(f"out must be a torch.Tensor (got {type(out).__name__})")
  problems = []
  if out.layout != torch.strided:
    problems.append(f"a dense layout (got {out.layout})")
  elif not out.is_contiguous():
    problems.append("a contiguous layout (got a strided view)")
  if out.shape != like.shape:
    problems.append(f"shape {tuple(like.shape)} (got {tuple(out.shape)})")
  if out.dtype != dtype:
    problems.append(f"dtype {dtype} (got {out.dtype})")
  if out.device != like.device:
    problems.append(f"device {like.device} (got {out.device})")
  if out.requires_grad or (out._base is not None and out._base.requires_grad):
    problems.append("no autograd history (got requires_grad=True, or a view of such a tensor)")
  if out.is_inference() and not torch.is_inference_mode_enabled():
    problems.append("no inference-mode flag outside torch.inference_mode() (got an inference "
                    "tensor; pass a clone)")
  if out.is_neg() or out.is_conj():
    problems.append("no lazy negation (got a negative or conjugate view)")
  if problems:
    raise ValueError("out must have " + ", ".join(problems))


def _seed_key(rounding: str, seed: Any, generator: Any) -> jax.Array | None:
  if rounding != "stochastic":
    if seed is not None or generator is not None:
      raise ValueError(f"seed and generator are only used with rounding='stochastic' "
                       f"(got rounding={rounding!r})")
    return None
  if (seed is None) == (generator is None):
    raise ValueError("rounding='stochastic' needs exactly one of seed=int or "
                     "generator=torch.Generator")
  if generator is not None:
    if not isinstance(generator, torch.Generator):
      raise TypeError(f"generator must be a torch.Generator (got {type(generator).__name__})")
    # One draw per call: reproducible from the generator's state, and it advances.
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f"seed must be an int (got {type(seed).__name__})")
  return jax.random.key(int(seed) % 2**63)


def _scale(scaling_factor: Any, shape: tuple[int, ...]) -> Any:
  """The checked `scaling_factor` (see `checks.scale_or_none`): a real number or real array.

  A torch tensor may be of any real dtype (bfloat16 and float16 widen to
  float32 exactly); bool, complex and string values are refused, not cast
  (a complex scale would lose its imaginary part).
  """
  if isinstance(scaling_factor, torch.Tensor):
    t = _dense(scaling_factor.detach(), "scaling_factor")
    if t.dtype == torch.bool or t.is_complex():
      raise TypeError(f"scaling_factor must be a real number or array (got {t.dtype})")
    if t.is_floating_point():
      t = t.to(torch.float32)
    scaling_factor = t.cpu().numpy()
  dtype = getattr(scaling_factor, "dtype", None)
  if dtype is not None and not (jnp.issubdtype(dtype, jnp.floating)
                                or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"scaling_factor must be a real number or array (got {dtype})")
  return checks.scale_or_none(scaling_factor, shape)


@functools.cache
def _encode_table(fmt: Format, rounding: str, overflow: str, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
  patterns = jnp.asarray(np.arange(1 << 16, dtype=np.uint16)).view(_FLOATS[dtype])
  codes = np.asarray(codec.encode(patterns, fmt, rounding=rounding, overflow=overflow))
  return torch.from_numpy(codes.copy()).to(device)


@functools.cache
def _decode_table(fmt: Format, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
  values = codec.decode(jnp.arange(256, dtype=jnp.uint8), fmt, _FLOATS[dtype])
  return to_torch(values).clone().to(device)


def _lookup(table: torch.Tensor, codes: torch.Tensor, unsigned: torch.dtype,
            out: torch.Tensor | None) -> torch.Tensor:
  """table[bit pattern of each element], into `out` when given."""
  idx = codes.contiguous().view(unsigned).to(torch.int64)
  if out is not None:
    return torch.take(table, idx, out=out)
  return torch.take(table, idx)


def _finish(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
  if out is None:
    return result
  out.copy_(result)
  return out


def _encode(t: torch.Tensor, fmt: Format, rounding: str, overflow: str, key: Any, scale: Any,
            out: torch.Tensor | None) -> torch.Tensor:
  if (scale is None and key is None and t.dtype != torch.float32
      and t.numel() <= TABLE_MAX_ELEMENTS):
    table = _encode_table(fmt, rounding, overflow, t.dtype, t.device)
    return _lookup(table, t, torch.uint16, out)
  a = to_jax(t)
  res = codec.encode_into(a, fmt, scale, None, rounding=rounding, overflow=overflow, key=key)
  return _finish(to_torch(res), out)


def _decode(bits: torch.Tensor, fmt: Format, dtype: torch.dtype, scale: Any,
            out: torch.Tensor | None) -> torch.Tensor:
  if scale is None and bits.numel() <= TABLE_MAX_ELEMENTS:
    return _lookup(_decode_table(fmt, dtype, bits.device), bits, torch.uint8, out)
  a = to_jax(bits.view(torch.uint8))
  res = codec.decode_into(a, fmt, _FLOATS[dtype], scale, None)
  return _finish(to_torch(res), out)


def encode(t: torch.Tensor, fmt: FormatLike, *, rounding: str = "nearest",
           overflow: str = "saturate", seed: int | None = None,
           generator: torch.Generator | None = None, out: torch.Tensor | None = None
           ) -> torch.Tensor:
  """`fp8jax.encode` on a torch tensor: codes as torch.uint8 on its device.

  Args:
    t: torch.bfloat16, float16 or float32 tensor.
    fmt: a format name, `fp8jax.Format` or float8 dtype.
    rounding: "nearest", "toward_zero" or "stochastic".
    overflow: "saturate", "satfinite" or "ieee".
    seed: for stochastic rounding, an int: the JAX key `jax.random.key(seed)`,
      so torch and JAX give the same bits for the same seed.
    generator: instead of `seed`, a torch.Generator: one int is drawn from it
      per call (reproducible from its state; it advances).
    out: optional contiguous torch.uint8 tensor of `t`'s shape and device; the
      codes are written into it and it is returned.

  Returns:
    A torch.uint8 tensor of codes (`out` when given).

  Example:
    >>> encode(torch.tensor([1.0, 500.0], dtype=torch.bfloat16), "e4m3fn").tolist()
    [56, 126]
  """
  t = _float_input(t, "t")
  f = get_format(fmt)
  checks.rounding_name(rounding)
  checks.overflow(overflow)
  key = _seed_key(rounding, seed, generator)
  _check_out(out, t, torch.uint8)
  return _encode(t, f, rounding, overflow, key, None, out)


def decode(bits: torch.Tensor, fmt: FormatLike, dtype: torch.dtype = torch.bfloat16, *,
           out: torch.Tensor | None = None) -> torch.Tensor:
  """`fp8jax.decode` on a torch tensor of codes.

  Args:
    bits: torch.uint8 (or int8) codes.
    fmt: a format name, `fp8jax.Format` or float8 dtype.
    dtype: torch.bfloat16 (default), float16 or float32.
    out: optional contiguous tensor of `dtype`, `bits`' shape and device.

  Returns:
    A tensor of `dtype` (`out` when given).

  Example:
    >>> decode(torch.tensor([56, 126], dtype=torch.uint8), "e4m3fn", torch.float32).tolist()
    [1.0, 448.0]
  """
  bits = _code_input(bits, "bits")
  f = get_format(fmt)
  _target(dtype, "dtype")
  _check_out(out, bits, dtype)
  return _decode(bits, f, dtype, None, out)


def round_to_fp8_represented_as_int8(t: torch.Tensor, n_mantissa: int | None,
                                     out: torch.Tensor | None = None,
                                     scaling_factor: Any = 1.0, *, rounding: str = "nearest",
                                     overflow: str = "saturate", seed: int | None = None,
                                     generator: torch.Generator | None = None,
                                     format: FormatLike | None = None) -> torch.Tensor:
  """The original API on torch tensors: `t * scaling_factor` rounded to FP8 codes.

  Same meaning as `fp8jax.round_to_fp8_represented_as_int8`; `out` is
  filled in place and returned, as torch users expect. Stochastic rounding
  takes `seed` or `generator` as in `encode`.

  Example:
    >>> round_to_fp8_represented_as_int8(torch.tensor([1.0, -2.0]), 3).tolist()
    [56, 192]
  """
  t = _float_input(t, "t")
  fmt = resolve_format(n_mantissa, format)
  checks.rounding_name(rounding)
  checks.overflow(overflow)
  key = _seed_key(rounding, seed, generator)
  scale = _scale(scaling_factor, tuple(t.shape))
  _check_out(out, t, torch.uint8)
  return _encode(t, fmt, rounding, overflow, key, scale, out)


def undo_int8_fp8(fp8_tensor: torch.Tensor, n_mantissa: int | None,
                  target_dt: torch.dtype = torch.bfloat16, out: torch.Tensor | None = None,
                  scaling_factor: Any = 1.0, *, format: FormatLike | None = None
                  ) -> torch.Tensor:
  """The original API on torch tensors: decode, then divide by `scaling_factor`.

  Example:
    >>> undo_int8_fp8(torch.tensor([56, 192], dtype=torch.uint8), 3, torch.float32).tolist()
    [1.0, -2.0]
  """
  fp8_tensor = _code_input(fp8_tensor, "fp8_tensor")
  fmt = resolve_format(n_mantissa, format)
  _target(target_dt, "target_dt")
  scale = _scale(scaling_factor, tuple(fp8_tensor.shape))
  _check_out(out, fp8_tensor, target_dt)
  return _decode(fp8_tensor, fmt, target_dt, scale, out)


def int32_to_bfloat16(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
  """The low 16 bits of each int32 read as a bfloat16 bit pattern.

  Example:
    >>> int32_to_bfloat16(torch.tensor([0x3F80], dtype=torch.int32)).tolist()
    [1.0]
  """
  x = _check_tensor(x, "x")
  if x.dtype != torch.int32:
    raise TypeError(f"x must be torch.int32 (got {x.dtype})")
  _check_out(out, x, torch.bfloat16)
  low = x & 0xFFFF
  signed = torch.where(low >= 0x8000, low - 0x10000, low).to(torch.int16)
  return _finish(signed.view(torch.bfloat16), out)
