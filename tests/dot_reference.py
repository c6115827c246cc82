"""The float32 reference for `fp8jax.dot` and the accumulation-error bound the tests allow.

Reference: `dequantize(a, float32) · dequantize(b, float32)`, one float32
`lax.dot_general` at HIGHEST precision.

Bound, per output element (Higham, Accuracy and Stability of Numerical
Algorithms, §3.1: a float32 dot product of length n, in any order, with or
without FMA, errs by at most γ_n Σ|x_k||y_k|, γ_n = n·u / (1 − n·u), u = 2^-24):

  |dot − reference| ≤ (γ_{K+3} + γ_{2K+3}) · Σ_k |â_k||b̂_k| + (2K + 6) · 2^-126

- the reference errs from the exact Σ â_k b̂_k by γ_K;
- `dot` multiplies the codes (exact products), sums each run of g ≤ K terms
  (γ_g), multiplies each partial by its two scales (2 roundings) and sums the
  runs ≤ K partials (γ_{runs−1}): at most γ_{K+K+1} from the exact Σ a_k b_k
  of the unrounded dequantized values a = code·scale;
- â = fl(a) differs from a by one rounding per operand (γ_2 for a product),
  which the +3 on both γ's covers;
- XLA on CPU flushes float32 subnormals, which can lose up to 2^-126 per
  rounding step: the absolute term. It is far below the relative term for
  any realistic data.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

import fp8jax

U = 2.0**-24
TINY = 2.0**-126
MATMUL = (((1,), (0,)), ((), ()))  # dimension numbers of a @ b


def gaussian(shape, seed, dtype=jnp.float32) -> jax.Array:
  """Gaussian data whose columns span 2^-4 to 2^4, so that scales differ across groups."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * np.exp2(rng.integers(-4, 5, shape[-1:]))
  return jnp.asarray(x, dtype)


def gamma(n: int) -> float:
  return n * U / (1 - n * U)


def values(x) -> jax.Array:
  """An operand's float32 values, as the reference sees them."""
  if isinstance(x, fp8jax.QArray):
    return fp8jax.dequantize(x, jnp.float32)
  return jnp.asarray(x, jnp.float32)


def reference_dot(a, b, dims) -> np.ndarray:
  out = lax.dot_general(values(a), values(b), dims, precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
  return np.asarray(out, np.float64)


def abs_product(x: np.ndarray, y: np.ndarray, dims) -> np.ndarray:
  """Σ_k |x_k||y_k| per output element of dot_general(x, y, dims), in float64."""
  (ca, cb), (ba, bb) = dims
  x, y = np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(y, np.float64))
  fa = [d for d in range(x.ndim) if d not in ca and d not in ba]
  fb = [d for d in range(y.ndim) if d not in cb and d not in bb]
  batch = tuple(x.shape[d] for d in ba)
  out_shape = batch + tuple(x.shape[d] for d in fa) + tuple(y.shape[d] for d in fb)
  k = int(np.prod([x.shape[d] for d in ca], dtype=np.int64))
  nb = int(np.prod(batch, dtype=np.int64))
  x = np.transpose(x, list(ba) + fa + list(ca)).reshape(nb, -1, k)
  y = np.transpose(y, list(bb) + list(cb) + fb).reshape(nb, k, -1)
  return np.matmul(x, y).reshape(out_shape)


def bound(x: np.ndarray, y: np.ndarray, dims) -> np.ndarray:
  """The allowed |dot − reference| per output element, for operand values x, y."""
  (ca, _), _ = dims
  k = int(np.prod([np.shape(x)[d] for d in ca], dtype=np.int64))
  return (gamma(k + 3) + gamma(2 * k + 3)) * abs_product(x, y, dims) + (2 * k + 6) * TINY


def assert_within_bound(out, a, b, dims, *, extra_rel: float = 0.0):
  """|out − reference| ≤ bound (+ extra_rel·|reference|, for a rounded output dtype)."""
  x, y = values(a), values(b)
  ref = np.asarray(lax.dot_general(x, y, dims, precision=lax.Precision.HIGHEST,
                                   preferred_element_type=jnp.float32), np.float64)
  got = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  err = np.abs(got - ref)
  allowed = bound(x, y, dims) + extra_rel * np.abs(ref)
  worst = np.unravel_index(np.argmax(err - allowed), err.shape) if err.size else ()
  assert np.all(err <= allowed), (
      f"error {err[worst]:.3g} exceeds the bound {allowed[worst]:.3g} at {worst} "
      f"(got {got[worst]!r}, reference {ref[worst]!r})")
