"""Zero-copy exchange between torch tensors and JAX arrays, and float8 views.

`to_jax` and `to_torch` go through the DLPack protocol objects (not
capsules), so each side is told the other's stream: on CUDA the consumer's
stream waits for the producer's work. The same buffer is shared whenever
XLA accepts it:

- contiguous tensors whose data pointer is 64-byte aligned (every fresh
  torch allocation is) are shared, both ways;
- a view whose storage offset breaks that alignment is copied once by
  JAX's importer (the values are right; the pointer differs);
- non-contiguous (strided) tensors are made contiguous first, one copy;
- 0-d and empty tensors work like any other;
- tensors that require grad are refused with a TypeError: call
  `.detach()` yourself, so that leaving the autograd graph is explicit;
- a tensor with torch's lazy negative or conjugate bit (`x.conj().imag`)
  is resolved first (one copy), so the values are right;
- sparse and meta tensors, and devices other than the CPU and CUDA, are
  refused before any work.
"""

from __future__ import annotations

from typing import Any

import jax
import torch

from fp8jax.core.formats import EXTERNAL_NAMES, FORMATS, FormatLike, get_format

# Torch's float8 dtypes by fp8jax format name (those this torch has).
TORCH_FLOAT8 = {name: getattr(torch, ext.torch) for name, ext in EXTERNAL_NAMES.items()
                if ext.torch and FORMATS[name].bits == 8 and hasattr(torch, ext.torch)}
_FORMAT_OF_DTYPE = {dt: name for name, dt in TORCH_FLOAT8.items()}
_DEVICES = ("cpu", "cuda")


def _check_tensor(t: Any, argname: str) -> torch.Tensor:
  """Checks a tensor argument; returns it with lazy negation or conjugation resolved.

  A tensor can carry torch's negative or conjugate bit (`x.conj().imag`,
  `torch._neg_view`): its storage holds the values un-negated and torch
  negates them on access. DLPack and `.view(dtype)` see the storage, so the
  bit is resolved first (a copy, only for such tensors).
  """
  if not isinstance(t, torch.Tensor):
    raise TypeError(f"{argname} must be a torch.Tensor (got {type(t).__name__})")
  if t.requires_grad:
    raise TypeError(f"{argname} requires grad; pass {argname}.detach() to convert it "
                    "outside the autograd graph")
  return _dense(t, argname)


def _dense(t: torch.Tensor, argname: str) -> torch.Tensor:
  """`t` if it is a dense tensor with data on the CPU or a CUDA device, negation resolved."""
  if t.layout != torch.strided:
    raise TypeError(f"{argname} must be a dense tensor (got layout {t.layout}); call "
                    f"{argname}.to_dense() first")
  if t.device.type not in _DEVICES:
    raise ValueError(f"{argname} must be on the CPU or a CUDA device (got {t.device}"
                     f"{', which holds no data' if t.is_meta else ''})")
  return t.resolve_conj().resolve_neg()


def to_jax(t: torch.Tensor) -> jax.Array:
  """Shares a torch tensor with JAX through DLPack, without a copy where possible.

  Args:
    t: a CPU or CUDA tensor of any dtype DLPack carries (bfloat16, float16,
      float32, uint8, int32, the float8 dtypes, ...). A non-contiguous tensor
      is copied to a contiguous one first.

  Returns:
    A jax.Array on the matching device (CUDA device i maps to JAX's GPU i).

  Example:
    >>> to_jax(torch.ones(3, dtype=torch.bfloat16)).dtype
    dtype(bfloat16)
  """
  t = _check_tensor(t, "t")
  if not t.is_contiguous():
    t = t.contiguous()
  return jax.dlpack.from_dlpack(t)


def to_torch(a: jax.Array) -> torch.Tensor:
  """Shares a JAX array with torch through DLPack, without a copy.

  Args:
    a: a jax.Array on one device.

  Returns:
    A torch.Tensor on the matching device, sharing `a`'s buffer. Writing to
    it writes to `a`'s buffer; JAX assumes arrays are immutable, so don't.

  Example:
    >>> to_torch(jnp.arange(3)).tolist()
    [0, 1, 2]
  """
  if not isinstance(a, jax.Array):
    raise TypeError(f"a must be a jax.Array (got {type(a).__name__})")
  return torch.from_dlpack(a)


def as_torch_float8(bits: torch.Tensor, fmt: FormatLike) -> torch.Tensor:
  """Views uint8 codes as the matching torch float8 tensor, without a copy.

  Args:
    bits: a torch.uint8 (or int8) tensor of codes.
    fmt: a format torch has a dtype for: e4m3fn, e5m2, e4m3fnuz, e5m2fnuz
      (and e8m0fnu where torch has it).

  Returns:
    A tensor of the torch float8 dtype sharing `bits`' storage.

  Example:
    >>> as_torch_float8(torch.tensor([56], dtype=torch.uint8), "e4m3fn").float()
    tensor([1.])
  """
  bits = _check_tensor(bits, "bits")
  if bits.dtype not in (torch.uint8, torch.int8):
    raise TypeError(f"bits must be torch.uint8 codes (got {bits.dtype})")
  f = get_format(fmt)
  if f.name not in TORCH_FLOAT8 or f != get_format(f.name):
    raise ValueError(f"fmt {f.name!r} has no torch float8 dtype; formats with one: "
                     f"{', '.join(TORCH_FLOAT8)}")
  return bits.view(TORCH_FLOAT8[f.name])


def from_torch_float8(t: torch.Tensor) -> torch.Tensor:
  """Views a torch float8 tensor as its uint8 codes, without a copy.

  Example:
    >>> from_torch_float8(torch.ones(1, dtype=torch.float8_e4m3fn)).tolist()
    [56]
  """
  t = _check_tensor(t, "t")
  if t.dtype not in _FORMAT_OF_DTYPE:
    names = ", ".join(map(str, TORCH_FLOAT8.values()))
    raise TypeError(f"t must be a torch float8 tensor ({names}) (got {t.dtype})")
  return t.view(torch.uint8)


def format_of(dtype: torch.dtype) -> str | None:
  """The fp8jax format name of a torch float8 dtype, or None."""
  return _FORMAT_OF_DTYPE.get(dtype)


