"""Delayed scaling: per-tensor scales from an amax history, as functional state."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from fp8jax.core import f32
from fp8jax.core.formats import FormatLike, get_format
from fp8jax.quant import scales
from fp8jax.quant.qarray import QArray
from fp8jax.quant.scaled import quantize_as
from fp8jax.quant.spec import Overflow, QuantSpec, Rounding, Static, Tensor

AMAX_FROM = ("max", "most_recent")


class DelayedState(NamedTuple):
  """The state carried between steps (a pytree).

  Attributes:
    amax_history: float32 `[history]`, most recent first.
    scale: float32 scalar, the dequantizing scale the next step will use.
  """

  amax_history: jax.Array
  scale: jax.Array


@dataclasses.dataclass(frozen=True)
class DelayedScaling:
  """The delayed-scaling recipe: quantize with the scale from past steps.

  Each `quantize` call encodes `x` with `state.scale` (computed before `x`
  was seen), then pushes `amax(x)` (finite values only) onto the history
  and computes the next scale from it: `amax / max * 2^margin`, where amax
  is the history's maximum ("max") or its newest entry ("most_recent"), and
  1 while that amax is 0. Values beyond the delayed scale's range follow the
  overflow policy (saturate by default). Pure and jittable: use it inside
  `jax.jit` and `lax.scan`.

  Attributes:
    history: length of the amax history.
    margin: headroom exponent, >= 0.
    amax_from: "max" or "most_recent".

  Example:
    >>> ds = DelayedScaling(history=4)
    >>> state = ds.init()
    >>> q, state = ds.quantize(jnp.ones((8,)), state)
    >>> state.scale
    Array(0.00223214, dtype=float32)
  """

  history: int = 16
  margin: int = 0
  amax_from: str = "max"

  def __post_init__(self):
    if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
      raise ValueError(f"history must be a positive int (got {self.history!r})")
    if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
      raise ValueError(f"margin must be a non-negative int (got {self.margin!r})")
    if self.amax_from not in AMAX_FROM:
      raise ValueError(f"amax_from must be one of {', '.join(map(repr, AMAX_FROM))} "
                       f"(got {self.amax_from!r})")

  def init(self, scale: float = 1.0) -> DelayedState:
    """A fresh state: an all-zero history and the given first scale."""
    return DelayedState(jnp.zeros((self.history,), jnp.float32), jnp.float32(scale))

  def quantize(self, x: ArrayLike, state: DelayedState,
               fmt: QuantSpec | FormatLike = "e4m3fn", *,
               rounding: Rounding = "nearest", overflow: Overflow = "saturate",
               key: jax.Array | None = None, axis_name: Any = None
               ) -> tuple[QArray, DelayedState]:
    """Quantizes `x` with the state's scale; returns the QArray and the next state.

    Args:
      x: bfloat16, float16 or float32 array.
      state: the current `DelayedState`.
      fmt: element format, or a per-tensor `QuantSpec` giving the format,
        rounding and overflow (the headroom is this recipe's `margin`).
      rounding, overflow, key: as in `fp8jax.quantize`.
      axis_name: inside `shard_map`, the mesh axes x is split over; the amax
        is then one all-reduce over them. Under `jax.jit` on sharded arrays
        XLA inserts that all-reduce itself. The history stays replicated.

    Returns:
      `(QArray, DelayedState)`.
    """
    if isinstance(fmt, QuantSpec):
      if rounding != "nearest" or overflow != "saturate":
        raise ValueError("DelayedScaling.quantize(x, state, spec) takes rounding and overflow "
                         "from the spec; pass either a QuantSpec or keyword options, not both")
      spec = fmt
    else:
      spec = QuantSpec(fmt, rounding=rounding, overflow=overflow)
    if spec.kind != Tensor.kind or spec.pow2 or spec.margin:
      raise ValueError("DelayedScaling scales per tensor with its own margin; the spec must "
                       f"be QuantSpec(format, Tensor(), rounding=..., overflow=...) (got {spec})")
    q = quantize_as(x, dataclasses.replace(spec, granularity=Static(np.shape(state.scale))),
                    key, state.scale, "state.scale")
    return q, self.update(state, scales.amax(x, axis_name), spec.format)

  def used_amax(self, history: jax.Array) -> jax.Array:
    """The amax a history gives the scale: its maximum, or its newest entry."""
    return f32.max_positive(history) if self.amax_from == "max" else history[0]

  def update(self, state: DelayedState, amax: jax.Array, fmt: FormatLike = "e4m3fn"
             ) -> DelayedState:
    """Pushes one amax onto the history and recomputes the scale."""
    hist = jnp.roll(state.amax_history, 1).at[0].set(jnp.asarray(amax, jnp.float32))
    used = self.used_amax(hist)
    scale = scales.scale_from_amax(used, get_format(fmt), margin=self.margin)
    return DelayedState(hist, scale)
