"""Inputs for the block-scaled peer comparisons (MX, NVFP4): wide dynamic range, whole
blocks of edge cases, ragged shapes; and the padding that lets a peer which needs whole
blocks see the same blocks fp8jax does."""

from __future__ import annotations

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)

# Kinds of block, with their probabilities; the rest are plain wide-range blocks.
KINDS = {
    "zero": 0.05,  # all zeros (some negative)
    "tiny": 0.05,  # subnormal values of the input dtype
    "small": 0.04,  # normal values far below 1 (amax 2^-100 .. 2^-125)
    "huge": 0.04,  # values near the dtype's largest
    "nan": 0.03,  # one NaN among ordinary values
    "inf": 0.03,  # one infinity among ordinary values
    "nan_inf": 0.02,  # both
    "neg_zero": 0.03,  # ordinary values with some -0.0
}
FINITE_KINDS = ("zero", "tiny", "small", "huge", "neg_zero")


def wide(shape, dtype, seed: int, block: int, kinds=KINDS, tile: int = 1) -> np.ndarray:
  """normal * exp(uniform(-20, 20)) per element (exp(uniform(-8, 8)) for float16, whose
  range ends at 65504), with whole blocks (runs of `block` along the last axis; `tile`
  rows at a time) replaced by the edge cases of `kinds`."""
  rng = np.random.default_rng(seed)
  dtype = np.dtype(dtype)
  info = ml_dtypes.finfo(dtype)
  spread = 8 if dtype == np.float16 else 20
  x = rng.standard_normal(shape) * np.exp(rng.uniform(-spread, spread, shape))
  x = x.reshape(-1, shape[-1]).astype(np.float64)
  rows, n = x.shape
  nb = -(-n // block)
  names = list(kinds)
  probs = np.array([kinds[k] for k in names] + [1 - sum(kinds.values())])
  kind = rng.choice(len(probs), size=(-(-rows // tile), nb), p=probs)
  kind = np.repeat(kind, tile, axis=0)[:rows]
  col_block = np.arange(n) // block
  per = kind[:, col_block]  # the kind of each element's block
  sub = float(info.smallest_subnormal)
  signs = rng.choice([-1.0, 1.0], x.shape)
  for i, name in enumerate(names):
    m = per == i
    if name == "zero":
      x[m] = np.where(rng.random(x.shape) < 0.3, -0.0, 0.0)[m]
    elif name == "tiny":
      x[m] = (signs * sub * rng.integers(0, 40, x.shape))[m]
    elif name == "small":
      x[m] = (signs * rng.uniform(0.5, 1, x.shape) * np.exp2(rng.integers(-125, -100, x.shape)))[m]
    elif name == "huge":
      x[m] = (signs * float(info.max) * rng.uniform(0.25, 1, x.shape))[m]
    elif name == "neg_zero":
      x[m] = np.where(rng.random(x.shape) < 0.3, -0.0, x)[m]
  # One special value per NaN / inf block, at a random position inside it.
  for i, name in enumerate(names):
    if name not in ("nan", "inf", "nan_inf"):
      continue
    r, b = np.nonzero(kind == i)
    for value in ((np.nan,) if name == "nan" else (np.inf,) if name == "inf"
                  else (np.nan, -np.inf)):
      c = np.minimum(b * block + rng.integers(0, block, b.size), n - 1)
      x[r, c] = value * rng.choice([-1.0, 1.0], r.size)
  with np.errstate(over="ignore"):
    return x.reshape(shape).astype(dtype)


def pad_last(x: np.ndarray, block: int, rows: int = 1) -> np.ndarray:
  """x with zeros appended along the last axis to whole blocks (and the second-last to
  whole runs of `rows`): a peer that needs whole blocks then sees fp8jax's blocks."""
  pads = [(0, 0)] * x.ndim
  pads[-1] = (0, -x.shape[-1] % block)
  if rows > 1:
    pads[-2] = (0, -x.shape[-2] % rows)
  return np.pad(x, pads)


def same_bits(got: np.ndarray, want: np.ndarray) -> np.ndarray:
  """Elementwise: equal float bits, or both NaN."""
  got = np.asarray(got, np.float32)
  want = np.asarray(want, np.float32)
  return (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
