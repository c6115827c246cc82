"""`fp8_dot_general`: a drop-in `dot_general` that trains in FP8 with delayed scaling.

Forward: both operands are quantized per tensor to e4m3fn with the scales of
their delayed-scaling state and multiplied with `fp8jax.dot` (FP8 operands,
float32 accumulation). Backward: the output gradient is quantized to e5m2 with
its own delayed scale, and both operand gradients are FP8 products of it with
the saved forward codes. The quantizers are straight-through: their gradient
is the identity.

The state is threaded through the gradient ("overwrite with gradient", as
Flax's FP8 ops do): the state is an argument of the differentiated function,
and the cotangent the backward pass returns for it is not a derivative but the
next state, with the amaxes of this step's operands and output gradient
pushed onto their histories. So one `jax.grad` with respect to the
parameters and the state gives the parameter gradients and the next state,
with no side effects, under `jit`, `scan` and `vmap`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fp8jax.core import checks, f32
from fp8jax.core.formats import FormatLike, get_format
from fp8jax.ops import gemm, maxgrad
from fp8jax.quant.delayed import DelayedScaling, DelayedState
from fp8jax.quant.spec import Overflow, QuantSpec


class Fp8DotState(NamedTuple):
  """Delayed-scaling state of one `fp8_dot_general` call site (a pytree).

  Attributes:
    lhs: state of the left operand's scale (the inputs, for a Dense layer).
    rhs: state of the right operand's scale (the weights).
    grad: state of the output gradient's scale.
  """

  lhs: DelayedState
  rhs: DelayedState
  grad: DelayedState


@dataclasses.dataclass(frozen=True)
class Fp8Recipe:
  """What `fp8_dot_general` does: formats and the delayed-scaling rule.

  Attributes:
    scaling: the `DelayedScaling` rule (history length, margin, amax_from)
      shared by the three tensors.
    forward: how the operands are quantized in the forward pass: a per-tensor
      `QuantSpec`, or a format (then `QuantSpec(format, overflow=overflow)`);
      default e4m3fn. Stored as the spec.
    backward: the same for the output gradient (e5m2: more range, less
      precision).
    overflow: what values beyond a delayed scale's range become ("saturate"),
      for roles given as a format.

  Example:
    >>> recipe = Fp8Recipe(scaling=DelayedScaling(history=4))
    >>> state = recipe.init()
    >>> float(state.grad.scale)
    1.0
  """

  scaling: DelayedScaling = DelayedScaling()
  forward: QuantSpec | FormatLike = "e4m3fn"
  backward: QuantSpec | FormatLike = "e5m2"
  overflow: Overflow = "saturate"

  def __post_init__(self):
    if not isinstance(self.scaling, DelayedScaling):
      raise TypeError(f"scaling must be a DelayedScaling (got {type(self.scaling).__name__})")
    checks.overflow(self.overflow)
    for name in ("forward", "backward"):
      role = getattr(self, name)
      f = role.format if isinstance(role, QuantSpec) else get_format(role, name)
      if f.bits != 8 or not f.signed:
        raise ValueError(f"{name} must be a signed 8-bit format (got {f.name!r})")
      spec = role if isinstance(role, QuantSpec) else QuantSpec(f, overflow=self.overflow)
      if spec.kind != "tensor" or spec.rounding == "stochastic":
        raise ValueError(f"{name} must be a per-tensor spec with deterministic rounding "
                         f"(got {spec})")
      object.__setattr__(self, name, spec)

  def init(self, scale: float = 1.0) -> Fp8DotState:
    """A fresh state for one call site: empty histories, every scale `scale`."""
    s = self.scaling.init(scale)
    return Fp8DotState(s, s, s)


def fp8_dot_state(recipe: Fp8Recipe | None = None) -> Fp8DotState:
  """A fresh `Fp8DotState` (empty amax histories, scales 1) for `recipe`.

  Example:
    >>> fp8_dot_state().lhs.amax_history.shape
    (16,)
  """
  return (recipe or Fp8Recipe()).init()


def fp8_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                    precision: Any = None, preferred_element_type: Any = None, *,
                    state: Fp8DotState, recipe: Fp8Recipe | None = None) -> jax.Array:
  """`lax.dot_general` computed in FP8, with delayed scaling and straight-through gradients.

  The forward pass quantizes `lhs` and `rhs` to `recipe.forward` (e4m3fn) with
  the per-tensor scales in `state` (computed from earlier steps' amaxes) and
  multiplies them with `fp8jax.dot`. The backward pass quantizes the output
  gradient to `recipe.backward` (e5m2) with `state.grad.scale` and computes
  both operand gradients as FP8 products with the saved forward codes; every
  quantizer passes its gradient straight through.

  The next state comes out of the backward pass as the "gradient" of `state`:
  differentiate with respect to the state too and use that gradient as the
  next state (it holds this step's amaxes of lhs, rhs and the output gradient
  pushed onto the histories, and the scales they give). Without a gradient the
  state does not change, so inference uses the trained scales. Give each call
  site its own state, or, where one state serves several call sites (tied or
  re-applied weights), pass it through `tied` once, inside the jitted function
  being differentiated, before its uses: autodiff then merges the sites'
  updates by max (the amax of the whole step) instead of adding them.

  Drop-in use: bind the state, `functools.partial(fp8_dot_general,
  state=state)`, and pass it wherever a `dot_general` is taken (for example
  `flax.linen.Dense(dot_general=...)`), inside the function being
  differentiated.

  Args:
    lhs: bfloat16, float16 or float32 array.
    rhs: bfloat16, float16 or float32 array.
    dimension_numbers: as in `lax.dot_general`.
    precision: accepted for compatibility and ignored (the operands are FP8).
    preferred_element_type: dtype of the result; default the operands'
      common dtype. Accumulation is float32 either way.
    state: this call site's `Fp8DotState`.
    recipe: an `Fp8Recipe` (default: e4m3fn forward, e5m2 gradients,
      `DelayedScaling()`).

  Returns:
    The product, as `lax.dot_general` shapes it.

  Example:
    >>> state = fp8_dot_state()
    >>> dims = (((1,), (0,)), ((), ()))
    >>> loss = lambda w, s: fp8_dot_general(jnp.ones((2, 3)), w, dims, state=s).sum()
    >>> dw, state = jax.grad(loss, argnums=(0, 1))(jnp.ones((3, 4)), state)
    >>> float(state.rhs.amax_history[0])
    1.0
  """
  del precision
  recipe = recipe or Fp8Recipe()
  if not isinstance(recipe, Fp8Recipe):
    raise TypeError(f"recipe must be an Fp8Recipe (got {type(recipe).__name__})")
  if not isinstance(state, Fp8DotState):
    raise TypeError(f"state must be an Fp8DotState (got {type(state).__name__}); make one with "
                    "fp8jax.fp8_dot_state()")
  checks.float_layout(lhs, "lhs")
  checks.float_layout(rhs, "rhs")
  lhs_dtype, rhs_dtype = np.dtype(lhs.dtype), np.dtype(rhs.dtype)
  dims = gemm.check_dimension_numbers(dimension_numbers, lhs.shape, rhs.shape)
  if preferred_element_type is None:
    out_dtype = np.dtype(jnp.result_type(lhs_dtype, rhs_dtype))
  else:
    out_dtype = gemm.check_out_dtype(preferred_element_type)
  config = _Config(dims, out_dtype, lhs_dtype, rhs_dtype, recipe, maxgrad.is_max(state.lhs.scale))
  return _fp8_dot(config, lhs, rhs, state)


class _Config(NamedTuple):
  dims: gemm.DimensionNumbers
  out_dtype: np.dtype
  lhs_dtype: np.dtype
  rhs_dtype: np.dtype
  recipe: Fp8Recipe
  tied: bool


def _quantize(recipe: Fp8Recipe, x: jax.Array, state: DelayedState, spec: QuantSpec):
  return recipe.scaling.quantize(x, state, spec)


def _as_update(recipe: Fp8Recipe, state: DelayedState) -> DelayedState:
  """A tied state's cotangent: max-accumulating, and no vote for the scale without an amax.

  A site whose history is all zero would give scale 1, which could outvote
  the smaller scale of a site that saw values; it gives -inf instead, and
  `tied` turns a scale no site voted for back into 1.
  """
  used = recipe.scaling.used_amax(state.amax_history)
  scale = jnp.where(f32.is_positive(used), state.scale, -jnp.inf)
  return DelayedState(maxgrad.to_max(state.amax_history), maxgrad.to_max(scale))


def tied(state: Fp8DotState) -> Fp8DotState:
  """Marks a state shared by several `fp8_dot_general` call sites.

  Call it once inside the jitted function being differentiated and pass the
  result to every call site: the sites' state updates then merge by max, so
  the history records the largest amax any site saw this step and the scale
  follows from it, as if one call site had seen every value. Without it the
  updates would add up (amaxes 1 and 2 recorded as 3).

  Args:
    state: the `Fp8DotState` shared by the call sites.

  Returns:
    The same state, in a dtype whose cotangents accumulate by max (usable
    only inside the traced function).
  """
  if not isinstance(state, Fp8DotState):
    raise TypeError(f"state must be an Fp8DotState (got {type(state).__name__})")
  return _tied(state)


@jax.custom_vjp
def _tied(state):
  return jax.tree.map(maxgrad.to_max, state)


def _tied_forward(state):
  return _tied(state), None


def _tied_backward(_, merged):
  def plain(d: DelayedState) -> DelayedState:
    hist, scale = maxgrad.from_max(d.amax_history), maxgrad.from_max(d.scale)
    # -inf: no call site gave a value (the max's identity).
    return DelayedState(jnp.where(hist == -jnp.inf, 0.0, hist),
                        jnp.where(scale == -jnp.inf, 1.0, scale))

  return (Fp8DotState(plain(merged.lhs), plain(merged.rhs), plain(merged.grad)),)


_tied.defvjp(_tied_forward, _tied_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fp8_dot(config: _Config, lhs, rhs, state):
  return _forward(config, lhs, rhs, state)[0]


def _forward(config: _Config, lhs, rhs, state):
  recipe = config.recipe
  state = jax.tree.map(maxgrad.from_max, state)
  ql, next_lhs = _quantize(recipe, lhs, state.lhs, recipe.forward)
  qr, next_rhs = _quantize(recipe, rhs, state.rhs, recipe.forward)
  out = gemm.dot(ql, qr, dimension_numbers=config.dims,
                   preferred_element_type=jnp.float32).astype(config.out_dtype)
  return out, (ql, qr, next_lhs, next_rhs, state.grad)


def _backward(config: _Config, residuals, g):
  ql, qr, next_lhs, next_rhs, grad_state = residuals
  recipe = config.recipe
  qg, next_grad = _quantize(recipe, g, grad_state, recipe.backward)
  d_lhs, d_rhs = _transpose(qg, ql, qr, config.dims)
  # The state's "gradient" is its next value (overwrite with gradient).
  next_state = Fp8DotState(next_lhs, next_rhs, next_grad)
  if config.tied:
    next_state = Fp8DotState(*(_as_update(recipe, s) for s in next_state))
  return d_lhs.astype(config.lhs_dtype), d_rhs.astype(config.rhs_dtype), next_state


_fp8_dot.defvjp(_forward, _backward)


def _ranges_like(*groups):
  start = 0
  for group in groups:
    yield tuple(range(start, start + len(group)))
    start += len(group)


def _transpose_lhs(g, y, x_ndim: int, y_ndim: int, dims, swap_out: bool):
  """The gradient of x in dot_general(x, y, dims) (or of y, with swapped roles), as an FP8 dot."""
  (x_contract, y_contract), (x_batch, y_batch) = dims
  x_kept = [d for d in range(x_ndim) if d not in x_contract and d not in x_batch]
  y_kept = [d for d in range(y_ndim) if d not in y_contract and d not in y_batch]
  if swap_out:
    out_batch, out_y, _ = _ranges_like(x_batch, y_kept, x_kept)
  else:
    out_batch, _, out_y = _ranges_like(x_batch, x_kept, y_kept)
  contract = ((out_y, tuple(y_kept)), (out_batch, tuple(y_batch)))
  x_contract_by_y = [x_contract[i] for i in np.argsort(y_contract)]
  axes = np.argsort(list(x_batch) + x_kept + x_contract_by_y)
  prod = gemm.dot(g, y, dimension_numbers=contract, preferred_element_type=jnp.float32)
  return jnp.transpose(prod, tuple(int(a) for a in axes))


def _transpose(g, x, y, dims):
  """Gradients of both operands of dot_general(x, y, dims) for the output gradient g."""
  (x_contract, y_contract), (x_batch, y_batch) = dims
  d_x = _transpose_lhs(g, y, len(x.shape), len(y.shape), dims, swap_out=False)
  swapped = ((y_contract, x_contract), (y_batch, x_batch))
  d_y = _transpose_lhs(g, x, len(y.shape), len(x.shape), swapped, swap_out=True)
  return d_x, d_y
