"""Fusion boundaries: where XLA must not fuse a small computation into a large loop.

XLA fuses cheap elementwise producers into their consumers. When the producer
is per block (a scale) and the consumer per element, the fused loop redoes
the per-block arithmetic for every element; `apart` keeps it in a kernel of
its own, run once per block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax import lax
import jax.numpy as jnp


def apart(f: Callable[[Any], Any], v: Any) -> Any:
  """`f(v)`, computed where XLA cannot fuse it with the computation of `v`.

  Both branches of the conditional are `f`, so the result is `f(v)` either
  way; the predicate passes through an optimization barrier so that XLA
  cannot fold the conditional (a fusion boundary) away.
  """
  one = lax.optimization_barrier(jnp.float32(1))
  return lax.cond(one == one, f, f, v)
