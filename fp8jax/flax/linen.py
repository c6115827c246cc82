"""Flax linen modules for FP8 training: drop-ins for `nn.Dense`, `nn.DenseGeneral`, `nn.Einsum`.

The delayed-scaling state (amax histories and scales) lives in the variable
collection `OVERWRITE_WITH_GRADIENT` ("_overwrite_with_gradient", the
collection of `flax.linen.fp8_ops`): differentiate the loss with respect to
it along with "params" and replace it with its gradient, which is its next
value. Stochastic rounding (the "nvfp4" recipe) draws its keys from the rng
stream `"fp8"`: `apply(..., rngs={"fp8": key})` with a fresh key each step.

Example:
  >>> import functools
  >>> import flax.linen as nn
  >>> layer = nn.Dense(4, dot_general_cls=functools.partial(Fp8DotGeneral, recipe="delayed"))
  >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 8)))
  >>> sorted(variables[OVERWRITE_WITH_GRADIENT]["Fp8DotGeneral_0"])[:2]
  ['input_amax_history', 'input_scale']
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fp8jax.flax import RNG, STATE_NAMES
from fp8jax.ops.recipes import Fp8DotState, Fp8Recipe, get_recipe
from fp8jax.ops.training import fp8_dot_general, fp8_einsum, parse_einsum
from fp8jax.quant.delayed import DelayedState

OVERWRITE_WITH_GRADIENT = "_overwrite_with_gradient"
"""The variable collection of the scaling state (the one `flax.linen.fp8_ops` uses)."""


class _Fp8Base(nn.Module):
  """The recipe, and its state and key as this module's variables and rng."""

  recipe: Fp8Recipe | str = "delayed"

  def _scaling_state(self) -> Fp8DotState | None:
    recipe = get_recipe(self.recipe)
    init = recipe.init()
    if init is None:
      return None
    fields = {}
    for field, d in init._asdict().items():
      if d is None:
        fields[field] = None
        continue
      name = STATE_NAMES[field]
      hist = self.variable(OVERWRITE_WITH_GRADIENT, f"{name}_amax_history",
                           lambda d=d: d.amax_history)
      scale = self.variable(OVERWRITE_WITH_GRADIENT, f"{name}_scale", lambda d=d: d.scale)
      fields[field] = DelayedState(hist.value, scale.value)
    return Fp8DotState(**fields)

  def _rng_key(self) -> jax.Array | None:
    if not get_recipe(self.recipe).needs_key:
      return None
    if self.has_rng(RNG):
      return self.make_rng(RNG)
    if self.is_initializing():
      return jax.random.key(0)  # init's output is discarded; only its shapes matter
    raise ValueError(f"recipe {get_recipe(self.recipe).name!r} rounds stochastically: pass an "
                     f"rng stream {RNG!r} to apply (rngs={{{RNG!r}: key}}), a fresh key each step")


class Fp8DotGeneral(_Fp8Base):
  """`fp8_dot_general` as a linen module: `nn.Dense(dot_general_cls=partial(Fp8DotGeneral, ...))`.

  Attributes:
    recipe: an `Fp8Recipe` or a preset's name (`fp8jax.RECIPES`).
  """

  @nn.compact
  def __call__(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
               precision: Any = None, preferred_element_type: Any = None,
               out_sharding: Any = None) -> jax.Array:
    return fp8_dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                           recipe=self.recipe, state=self._scaling_state(), key=self._rng_key(),
                           out_sharding=out_sharding)


class Fp8Einsum(_Fp8Base):
  """`fp8_einsum` as a linen module: `Fp8Einsum(recipe)(subscripts, x, kernel)`.

  Attributes:
    recipe: an `Fp8Recipe` or a preset's name.
  """

  @nn.compact
  def __call__(self, subscripts: str, lhs: jax.Array, rhs: jax.Array, precision: Any = None,
               preferred_element_type: Any = None, out_sharding: Any = None) -> jax.Array:
    return fp8_einsum(subscripts, lhs, rhs, recipe=self.recipe, state=self._scaling_state(),
                      key=self._rng_key(), precision=precision,
                      preferred_element_type=preferred_element_type, out_sharding=out_sharding)


class Einsum(nn.Module):
  """`nn.Einsum` computed with `fp8_einsum`: the same attributes and parameters.

  nn.Einsum has no hook for its contraction, so this is its FP8 twin: a
  "kernel" of `shape` and, with `use_bias`, a "bias" over the kernel's axes
  that reach the output, in the output's order, broadcast over the rest.

  Attributes:
    shape: the kernel's shape.
    einsum_str: the equation, input first and kernel second ("btd,dh->bth").
    use_bias, dtype, param_dtype, precision, kernel_init, bias_init,
      promote_dtype, preferred_element_type: as in `nn.Einsum`, in its order
      (precision is ignored, as `fp8_einsum` ignores it).
    recipe: an `Fp8Recipe` or a preset's name.

  Example:
    >>> layer = Einsum((8, 4), "bd,dh->bh", recipe="current")
    >>> layer.init_with_output(jax.random.key(0), jnp.ones((2, 8)))[0].shape
    (2, 4)
  """

  shape: tuple[int, ...]
  einsum_str: str | None = None
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  promote_dtype: Any = nn.dtypes.promote_dtype
  preferred_element_type: Any = None
  recipe: Fp8Recipe | str = "delayed"

  @nn.compact
  def __call__(self, inputs: jax.Array, einsum_str: str | None = None) -> jax.Array:
    einsum_str = nn.merge_param("einsum_str", self.einsum_str, einsum_str)
    kernel = self.param("kernel", self.kernel_init, self.shape, self.param_dtype)
    _, ks, out = parse_einsum(einsum_str, jnp.ndim(inputs), len(self.shape))
    bias = None
    if self.use_bias:
      bias_axes = [c for c in out if c in ks]
      bias = self.param("bias", self.bias_init,
                        tuple(self.shape[ks.index(c)] for c in bias_axes), self.param_dtype)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = Fp8Einsum(self.recipe)(einsum_str, inputs, kernel, precision=self.precision,
                               preferred_element_type=self.preferred_element_type)
    if bias is not None:
      y = y + bias.reshape([y.shape[i] if c in ks else 1 for i, c in enumerate(out)])
    return y
