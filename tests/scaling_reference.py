"""A slow NumPy reference for scaled quantization: loops over blocks, the
scale formula written out, ml_dtypes for the casts."""

from __future__ import annotations

import itertools
import math

import numpy as np

from tests.conftest import clip_then_convert, ml_codes


def block_slices(shape, axes, block):
  """Yields (grid index, slices) for every block; `axes`/`block` as lists."""
  ranges = []
  for d, n in enumerate(shape):
    if d in axes:
      b = block[axes.index(d)]
      ranges.append([(i, slice(i * b, min((i + 1) * b, n))) for i in range(max(-(-n // b), 0))])
    else:
      ranges.append([(i, slice(i, i + 1)) for i in range(n)])
  for combo in itertools.product(*ranges):
    yield tuple(c[0] for c in combo), tuple(c[1] for c in combo)


def finite_amax(block: np.ndarray) -> np.float32:
  a = np.abs(block.astype(np.float32))
  a = a[np.isfinite(a)]
  return np.float32(a.max()) if a.size else np.float32(0)


def dynamic_scale(amax: np.float32, fmax: float, pow2: bool, margin: int) -> np.float32:
  if amax == 0:
    return np.float32(1)
  with np.errstate(over="ignore"):
    s = np.float32(amax) / np.float32(fmax * 2.0**-margin)
  s = np.clip(s, 2.0**-126, np.finfo(np.float32).max)  # a normal float
  if pow2:
    m, e = np.frexp(np.float64(s))  # s = m * 2^e, m in [0.5, 1)
    s = min(2.0 ** (e - 1) if m == 0.5 else 2.0**e, 2.0**127)
  return np.float32(s)


def mx_scale_exponent(amax: np.float32, fmax: float) -> int:
  """OCP MX v1.0: X = 2^(floor(log2(amax)) - emax_elem), clamped to E8M0."""
  if amax == 0:
    return 0
  emax = math.floor(math.log2(fmax))
  _, e = np.frexp(np.float64(amax))
  return int(np.clip((e - 1) - emax, -127, 127))


def encode_block(v: np.ndarray, fmt, overflow: str) -> np.ndarray:
  if overflow == "ieee":
    return ml_codes(v.astype(np.float32), fmt)
  return clip_then_convert(v.astype(np.float32), fmt, keep_inf=overflow == "saturate")


def quantize(x, fmt, granularity, axes=(), block=(), pow2=False, margin=0, overflow="saturate"):
  """Returns (codes, scale grid as float32, dequantized float32)."""
  x = np.asarray(x)
  nd = x.ndim
  if granularity == "tensor":
    axes, block = list(range(nd)), [max(n, 1) for n in x.shape]
  elif granularity == "axis":
    axes, block = [axes[0] % nd], [max(x.shape[axes[0]], 1)]
  else:
    axes, block = [a % nd for a in axes], list(block)
  grid_shape = tuple(-(-n // block[axes.index(d)]) if d in axes else n
                     for d, n in enumerate(x.shape))
  codes = np.zeros(x.shape, np.uint8)
  scales = np.zeros(grid_shape, np.float32)
  deq = np.zeros(x.shape, np.float32)
  for idx, sl in block_slices(x.shape, axes, block):
    blk = x[sl].astype(np.float32)
    a = finite_amax(blk)
    if granularity == "mx":
      s = np.float32(2.0 ** mx_scale_exponent(a, fmt.max))
    else:
      s = dynamic_scale(a, fmt.max, pow2, margin)
    c = encode_block(blk / s, fmt, overflow)
    codes[sl] = c
    scales[idx] = s
    deq[sl] = c.view(fmt.dtype).astype(np.float32) * s
  return codes, scales, deq
