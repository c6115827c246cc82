"""The error bound a `dot` result is held to, on CPU and on an FP8 tensor-core GPU.

The float32 part is the test suite's (tests/dot_reference.py), imported when it is
there and otherwise restated here, so that the check still runs if the tests move:

  |dot − reference| ≤ (γ_{K+3} + γ_{2K+3}) · Σ_k |â_k||b̂_k| + (2K + 6) · 2^-126,
  γ_n = n·u / (1 − n·u), u = 2^-24.

On a GPU the FP8 GEMM may accumulate with fewer bits than float32: Hopper's FP8 tensor
cores keep about 14 significant bits in their accumulators (DeepSeek-V3 technical report,
§3.3.2), i.e. a unit roundoff of 2^-13 for truncation. The accelerator's extra term is
the same γ-bound with that unit: γ_{K+3}(2^-13) · Σ|â||b̂|. A GPU result compared with the
CPU one is then allowed the sum of both; the float32-only verdict is recorded beside it.
"""

from __future__ import annotations

import numpy as np

try:  # the suite's own bound, when the tests are importable (tests/ is a package)
  from tests.dot_reference import abs_product as _abs_product, bound as _f32_bound
  SOURCE = "tests.dot_reference"
except Exception:  # any import problem falls back to the restatement below
  _abs_product = None
  _f32_bound = None
  SOURCE = "benchmarks.gpu.bounds (restated)"

U = 2.0**-24
TINY = 2.0**-126
U_FP8_ACCUMULATE = 2.0**-13  # about 14 bits kept by Hopper's FP8 MMA accumulators


def gamma(n: int, u: float = U) -> float:
  """Higham's γ_n: the relative error bound of n roundings with unit roundoff u."""
  return n * u / (1 - n * u)


def _theirs(fn, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
  """The suite's function on a plain [M, K] · [K, N] product, or None if it cannot be used."""
  if fn is None:
    return None
  try:
    out = np.asarray(fn(x, y, (((1,), (0,)), ((), ()))), np.float64)
  except Exception:  # its signature changed: use the restatement
    return None
  return out if out.shape == (np.shape(x)[0], np.shape(y)[1]) else None


def abs_product(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Σ_k |x_ik||y_kj| in float64, for a plain [M, K] · [K, N] product."""
  theirs = _theirs(_abs_product, x, y)
  if theirs is not None:
    return theirs
  return np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(y, np.float64))


def f32_bound(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """The suite's float32 bound per output element of x @ y (x, y the dequantized operands)."""
  theirs = _theirs(_f32_bound, x, y)
  if theirs is not None:
    return theirs
  k = np.shape(x)[1]
  return (gamma(k + 3) + gamma(2 * k + 3)) * abs_product(x, y) + (2 * k + 6) * TINY


def compare(got: np.ndarray, want: np.ndarray, x: np.ndarray, y: np.ndarray,
            on_accelerator: bool) -> dict:
  """|got − want| against the bound: ok, the float32-only verdict, and the worst ratios."""
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  err = np.abs(got - want)
  strict = f32_bound(x, y)
  magnitude = abs_product(x, y)  # once: a float64 matmul as large as the product itself
  k = np.shape(x)[1]
  allowed = strict + (gamma(k + 3, U_FP8_ACCUMULATE) * magnitude if on_accelerator else 0.0)
  scale = np.maximum(magnitude, TINY)
  finite = bool(np.isfinite(got).all() and np.isfinite(want).all())
  return {
      "ok": finite and bool(np.all(err <= allowed)),
      "within_float32_bound": finite and bool(np.all(err <= strict)),
      "compared": int(got.size),
      "max_abs_error": float(err.max()) if err.size else 0.0,
      "max_error_over_bound": float((err / allowed).max()) if err.size else 0.0,
      "max_error_over_abs_product": float((err / scale).max()) if err.size else 0.0,
      "bound": "float32" + (" + fp8 accumulation (u=2^-13)" if on_accelerator else ""),
      "bound_source": SOURCE,
  }
