"""Quantization error of one tensor: SQNR, and the share of values that overflow or underflow.

SQNR is 10·log10(Σx² / Σ(x − x̂)²) in dB over the finite values (higher is
better; +inf when the round trip is exact). A value *overflows* when
|x / s| is beyond what rounding brings back to the format's largest finite
value (more than half a step above it, so that it saturates: for e4m3fn,
above 464), and *underflows* when it is nonzero but its code is zero
(flushed), s being the scale of its group (1 for a raw cast).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fp8jax.quant.qarray import QArray
from fp8jax.quant.scaled import dequantize


@dataclasses.dataclass(frozen=True)
class CastStats:
  """Error of one tensor under one format and scaling.

  Attributes:
    overflow: fraction of the values beyond the format's range after scaling.
    underflow: fraction of the nonzero values flushed to zero.
    sqnr_db: signal to quantization noise ratio in dB.
  """

  overflow: float
  underflow: float
  sqnr_db: float


@jax.jit
def sqnr_sums(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The SQNR's sums over the finite x: the largest |x|, Σ(x/top)² and Σ((x - y)/top)².

  Normalized by the amax so that the squares cannot overflow float32; the
  sums of the pieces of one tensor combine with `sqnr_from_sums`.
  """
  x = x.astype(jnp.float32)
  finite = jnp.isfinite(x)
  top = jnp.max(jnp.where(finite, jnp.abs(x), 0), initial=0)
  top = jnp.where(top > 0, top, 1)
  s = jnp.where(finite, x / top, 0)
  d = jnp.where(finite, (x - jnp.asarray(y, jnp.float32)) / top, 0)
  return top, jnp.sum(s * s), jnp.sum(d * d)


def sqnr_from_sums(parts: list[tuple[Any, Any, Any]]) -> float:
  """The SQNR in dB of a tensor from its pieces' `sqnr_sums` (one host transfer for all)."""
  if len(parts) == 1:
    _, signal, noise = jax.device_get(parts[0])
    return _db(float(signal), float(noise))
  signal = noise = 0.0
  for top, s, d in jax.device_get(parts):
    w = float(top) ** 2
    signal += float(s) * w
    noise += float(d) * w
  return _db(signal, noise)


def _db(signal: float, noise: float) -> float:
  if noise == 0:
    return math.inf
  if signal == 0:
    return -math.inf
  return 10 * math.log10(signal / noise)


def sqnr_db(x: jax.Array, y: jax.Array) -> float:
  """SQNR in dB of `y` as an approximation of `x` (finite values of x only).

  Example:
    >>> round(sqnr_db(jnp.array([1.0, 2.0]), jnp.array([1.0, 2.1])), 1)
    27.0
  """
  return sqnr_from_sums([sqnr_sums(x, jnp.asarray(y, jnp.float32))])


@jax.jit
def _counts(x: jax.Array, y: jax.Array, unit: jax.Array, limit: float):
  x = x.astype(jnp.float32)
  finite = jnp.isfinite(x)
  over = finite & (jnp.abs(x) > limit * unit)
  under = finite & (x != 0) & (y == 0)
  return jnp.sum(over, dtype=jnp.int32), jnp.sum(under, dtype=jnp.int32)


def cast_stats(x: jax.Array, q: QArray) -> CastStats:
  """Overflow, underflow and SQNR of `x` quantized as `q`.

  Args:
    x: the original bfloat16, float16 or float32 array.
    q: `quantize(x, ...)`, any granularity (a static scale for a raw cast).

  Returns:
    A `CastStats`.
  """
  y = dequantize(q, jnp.float32)
  # Each value's group scale, exactly: decode(code of 1.0) * scale = scale.
  one = jnp.full(q.bits.shape, one_code(q.fmt), jnp.uint8)
  unit = dequantize(dataclasses.replace(q, bits=one, spec=dataclasses.replace(q.spec, pack=False),
                                         odd=False),
                             jnp.float32)
  over, under = _counts(x, y, unit, overflow_threshold(q.fmt))
  n = max(int(np.prod(x.shape)), 1)
  return CastStats(int(over) / n, int(under) / n, sqnr_db(x, y))


def overflow_threshold(fmt) -> float:
  """The largest finite value plus half its step: beyond it, a value saturates."""
  step = 2.0 ** (math.floor(math.log2(fmt.max)) - fmt.mantissa_bits)
  return fmt.max + step / 2


@functools.cache
def one_code(fmt) -> int:
  """The code of 1.0 in `fmt` (its group scale times this code is the scale)."""
  for code in range(1 << fmt.bits):
    if fmt.value(code) == 1.0:
      return code
  raise ValueError(f"{fmt.name} cannot represent 1.0")
