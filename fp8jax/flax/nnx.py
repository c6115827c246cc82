"""Flax nnx modules for FP8 training: `nnx.Linear(dot_general=...)`, `nnx.Einsum(einsum_op=...)`.

The delayed-scaling state (amax histories and scales) lives in `Fp8State`
variables of the module. Differentiate with respect to them along with the
parameters (`nnx.grad(loss, argnums=nnx.DiffState(0, WRT))`) and write their
gradients back with `update_state`: the gradient of a state is its next value.
Stochastic rounding (the "nvfp4" recipe) draws keys from a stream of the
module's own, forked at construction from `rngs`' "fp8" stream (else
"default"), which advances with each call.

Example:
  >>> from flax import nnx
  >>> layer = nnx.Linear(8, 4, dot_general=Fp8DotGeneral("delayed"), rngs=nnx.Rngs(0))
  >>> x = jnp.ones((2, 8))
  >>> grads = nnx.grad(lambda m: m(x).sum(), argnums=nnx.DiffState(0, WRT))(layer)
  >>> update_state(layer, grads)
  >>> float(layer.dot_general.input_amax_history[...][0])
  1.0
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax

from fp8jax.flax import RNG, STATE_NAMES
from fp8jax.ops.recipes import Fp8DotState, Fp8Recipe, get_recipe
from fp8jax.ops.training import fp8_dot_general, fp8_einsum
from fp8jax.quant.delayed import DelayedState


class Fp8State(nnx.Variable):
  """Delayed-scaling state: its gradient is its next value (overwrite with gradient)."""


WRT = nnx.Any(nnx.Param, Fp8State)
"""What to differentiate with respect to: the parameters and the scaling state."""


def update_state(model: nnx.Module, grads: nnx.State) -> None:
  """Writes the next scaling state, `grads`' `Fp8State` entries, into `model`.

  Args:
    model: the module whose state was differentiated.
    grads: the gradient `nnx.grad` returned (with respect to `WRT`).
  """
  nnx.update(model, nnx.filter_state(grads, Fp8State))


def _own_stream(recipe: Fp8Recipe, rngs: Any) -> nnx.RngStream | None:
  """A stream of the module's own, forked from `rngs`' "fp8" stream (else "default").

  Forked as `nnx.Dropout` forks its own: a reference to the caller's `Rngs`
  would be the unsplit object that `nnx.split_rngs` restores on exit, so a
  layer stack made with `nnx.vmap` would hold one key for all layers, and
  `nnx.scan` over the stack fails on its unstacked key.
  """
  if not recipe.needs_key:
    return None
  if rngs is None:
    raise ValueError(f"recipe {recipe.name!r} rounds stochastically and needs rngs= "
                     f"(an nnx.Rngs with an {RNG!r} or 'default' stream, or an nnx.RngStream)")
  if isinstance(rngs, nnx.RngStream):
    return rngs.fork()
  if not isinstance(rngs, nnx.Rngs):
    raise TypeError(f"rngs must be an nnx.Rngs or nnx.RngStream (got {type(rngs).__name__})")
  if RNG not in rngs and "default" not in rngs:
    raise ValueError(f"recipe {recipe.name!r} rounds stochastically and needs an {RNG!r} or "
                     f"'default' stream in rngs (it has {', '.join(rngs) or 'none'})")
  return rngs[RNG].fork()


class _Fp8Base(nnx.Module):
  """The recipe, its state as `Fp8State` variables and, if it needs them, an rng stream."""

  def __init__(self, recipe: Fp8Recipe | str = "delayed", *,
               rngs: nnx.Rngs | nnx.RngStream | None = None):
    self.recipe = get_recipe(recipe)
    init = self.recipe.init()
    self._fields = () if init is None else tuple(
        f for f, d in init._asdict().items() if d is not None)
    for field in self._fields:
      d = getattr(init, field)
      setattr(self, f"{STATE_NAMES[field]}_amax_history", Fp8State(d.amax_history))
      setattr(self, f"{STATE_NAMES[field]}_scale", Fp8State(d.scale))
    self.rngs = _own_stream(self.recipe, rngs)

  def _scaling_state(self) -> Fp8DotState | None:
    if not self._fields:
      return None
    return Fp8DotState(**{f: DelayedState(getattr(self, f"{STATE_NAMES[f]}_amax_history")[...],
                                          getattr(self, f"{STATE_NAMES[f]}_scale")[...])
                          if f in self._fields else None for f in STATE_NAMES})

  def _rng_key(self) -> jax.Array | None:
    return None if self.rngs is None else self.rngs()


class Fp8DotGeneral(_Fp8Base):
  """`fp8_dot_general` with its state: `nnx.Linear(..., dot_general=Fp8DotGeneral(recipe))`.

  Args:
    recipe: an `Fp8Recipe` or a preset's name (`fp8jax.RECIPES`).
    rngs: an `nnx.Rngs` or `nnx.RngStream`, where the recipe rounds
      stochastically: the module forks its own stream from it.
  """

  def __call__(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
               precision: Any = None, preferred_element_type: Any = None,
               out_sharding: Any = None) -> jax.Array:
    return fp8_dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                           recipe=self.recipe, state=self._scaling_state(), key=self._rng_key(),
                           out_sharding=out_sharding)


class Fp8Einsum(_Fp8Base):
  """`fp8_einsum` with its state: `nnx.Einsum(..., einsum_op=Fp8Einsum(recipe))`.

  Args:
    recipe: an `Fp8Recipe` or a preset's name.
    rngs: an `nnx.Rngs` or `nnx.RngStream`, where the recipe rounds
      stochastically: the module forks its own stream from it.
  """

  def __call__(self, subscripts: str, lhs: jax.Array, rhs: jax.Array, precision: Any = None,
               preferred_element_type: Any = None, out_sharding: Any = None) -> jax.Array:
    return fp8_einsum(subscripts, lhs, rhs, recipe=self.recipe, state=self._scaling_state(),
                      key=self._rng_key(), precision=precision,
                      preferred_element_type=preferred_element_type, out_sharding=out_sharding)
