"""`fp8_dot_general` and `fp8_einsum`: drop-in `dot_general` / `einsum` that train in FP8.

Each call computes the three GEMMs of training as its `Fp8Recipe` says (see
`fp8jax.ops.recipes`): the operands are laid out `[batch, rows, contraction]`
(a transpose and a reshape of what `lax.dot_general` was given), each role is
quantized along the contraction of every GEMM it takes part in, and the
quantized operands are multiplied with `fp8jax.dot` (float32 accumulation).
The quantizers are straight-through: their gradient is the identity.

Delayed scaling keeps state, threaded through the gradient ("overwrite with
gradient", as Flax's FP8 ops do): the state is an argument of the
differentiated function, and the cotangent the backward pass returns for it
is not a derivative but the next state, with the amaxes of this step's
operands and output gradient pushed onto their histories. So one `jax.grad`
with respect to the parameters and the state gives the parameter gradients
and the next state, with no side effects, under `jit`, `scan`, `remat` and
`vmap`. Recipes with current scaling keep no state.
"""

from __future__ import annotations

import functools
import math
import string
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fp8jax.core import checks, f32
from fp8jax.ops import gemm, maxgrad
from fp8jax.ops.recipes import Cast, Fp8DotState, Fp8Recipe, get_recipe
from fp8jax.quant import scaled, scales
from fp8jax.quant.delayed import DelayedState

_ROLE_OF = {"lhs": "input", "rhs": "weight", "grad": "grad"}
# [batch, rows, contraction] x [batch, cols, contraction] -> [batch, rows, cols]
_BATCHED = (((2,), (2,)), ((0,), (0,)))
_HADAMARD = 16


def fp8_dot_state(recipe: Fp8Recipe | str | None = None, scale: float = 1.0
                  ) -> Fp8DotState | None:
  """A fresh state for one call site of `recipe` (empty histories, every scale `scale`).

  Args:
    recipe: an `Fp8Recipe` or a preset's name; default "delayed".
    scale: the first scale of every delayed role.

  Returns:
    An `Fp8DotState`, with None for the roles not scaled with delayed
    scaling; None if the recipe keeps no state.

  Example:
    >>> fp8_dot_state().lhs.amax_history.shape
    (16,)
    >>> print(fp8_dot_state("current"))
    None
  """
  return get_recipe("delayed" if recipe is None else recipe).init(scale)


def _check_state(recipe: Fp8Recipe, state: Any) -> bool:
  """Raises unless `state` fits `recipe`; returns whether it is `tied`."""
  if not recipe.needs_state:
    if state is not None:
      raise TypeError(f"recipe {recipe.name!r} keeps no state; pass state=None (got "
                      f"{type(state).__name__})")
    return False
  if not isinstance(state, Fp8DotState):
    raise TypeError(f"state must be an Fp8DotState (got {type(state).__name__}); make one with "
                    f"fp8jax.fp8_dot_state(recipe) for recipe {recipe.name!r}")
  for field, role in _ROLE_OF.items():
    cast, s = getattr(recipe, role), getattr(state, field)
    if cast.delayed is None:
      if s is not None:
        raise ValueError(f"state.{field} must be None: recipe {recipe.name!r} scales the {role} "
                         "without delayed scaling")
      continue
    if not isinstance(s, DelayedState):
      raise TypeError(f"state.{field} must be a DelayedState for recipe {recipe.name!r} "
                      f"(got {type(s).__name__})")
    want = (cast.delayed.history,)
    if np.shape(s.amax_history) != want or np.shape(s.scale) != ():
      raise ValueError(f"state.{field} has an amax history of shape "
                       f"{np.shape(s.amax_history)} and a scale of shape {np.shape(s.scale)}; "
                       f"recipe {recipe.name!r} keeps {want} and ()")
  return maxgrad.is_max(jax.tree.leaves(state)[0])


def fp8_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                    precision: Any = None, preferred_element_type: Any = None, *,
                    recipe: Fp8Recipe | str | None = None, state: Fp8DotState | None = None,
                    key: jax.Array | None = None, out_sharding: Any = None) -> jax.Array:
  """`lax.dot_general` trained in FP8 (or FP4) as `recipe` says, with straight-through gradients.

  `lhs` is the input and `rhs` the weight (as in `x @ kernel`). The forward
  pass quantizes both along their contraction with the recipe's input and
  weight casts and multiplies them with `fp8jax.dot`; the backward pass
  quantizes the output gradient with the grad cast and computes the input
  gradient (grad x weight) and the weight gradient (grad x input) the same
  way, each operand quantized along that GEMM's contraction. Every quantizer
  passes its gradient straight through, saturated values included.

  With delayed scaling ("delayed", the default) the next state comes out of
  the backward pass as the "gradient" of `state`: differentiate with respect
  to the state too and use that gradient as the next state (it holds this
  step's amaxes pushed onto the histories, and the scales they give).
  Without a gradient the state does not change, so inference uses the trained
  scales. Give each call site its own state, or, where one state serves
  several call sites (tied or re-applied weights), pass it through `tied`.

  Drop-in use: bind the options, `functools.partial(fp8_dot_general,
  recipe="mxfp8")`, and pass it wherever a `dot_general` is taken (for
  example `flax.linen.Dense(dot_general=...)`); `fp8jax.flax` has modules
  that keep the state where Flax keeps variables.

  Args:
    lhs: bfloat16, float16 or float32 array, the input.
    rhs: bfloat16, float16 or float32 array, the weight.
    dimension_numbers: as in `lax.dot_general`.
    precision: accepted for compatibility and ignored (the operands are
      quantized; a high-precision GEMM of the recipe uses the default).
    preferred_element_type: dtype of the result; default the operands'
      common dtype. Accumulation is float32 either way.
    recipe: an `Fp8Recipe` or a preset's name (`fp8jax.RECIPES`); default
      "delayed".
    state: this call site's `Fp8DotState` where the recipe has delayed
      roles (`fp8_dot_state(recipe)`), else None.
    key: a jax.random key where the recipe rounds stochastically (the
      "nvfp4" preset's gradients); a fresh one each step.
    out_sharding: as in `lax.dot_general`: the result is resharded to it.

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
  recipe = get_recipe("delayed" if recipe is None else recipe)
  tied_state = _check_state(recipe, state)
  if recipe.needs_key and key is None:
    raise ValueError(f"recipe {recipe.name!r} rounds stochastically and needs key= (a "
                     "jax.random key, a fresh one each step)")
  key = key if recipe.needs_key else None
  checks.float_layout(lhs, "lhs")
  checks.float_layout(rhs, "rhs")
  lhs_dtype, rhs_dtype = np.dtype(lhs.dtype), np.dtype(rhs.dtype)
  dims = gemm.check_dimension_numbers(dimension_numbers, lhs.shape, rhs.shape)
  if preferred_element_type is None:
    out_dtype = np.dtype(jnp.result_type(lhs_dtype, rhs_dtype))
  else:
    out_dtype = gemm.check_out_dtype(preferred_element_type)
  (lc, rc), (lb, rb) = dims
  l3, l_free = _to_batched(lhs, lb, lc)
  r3, r_free = _to_batched(rhs, rb, rc)
  config = _Config(out_dtype, lhs_dtype, rhs_dtype, recipe, tied_state)
  out = _fp8_dot(config, l3, r3, state, key)
  out = out.reshape(tuple(lhs.shape[d] for d in lb) + l_free + r_free)
  if out_sharding is not None:
    out = jax.sharding.reshard(out, out_sharding)
  return out


def _to_batched(x: jax.Array, batch, contract) -> tuple[jax.Array, tuple[int, ...]]:
  """x as [batch, rows, contraction] (the axes flattened in order), and its free shape."""
  free = [d for d in range(x.ndim) if d not in batch and d not in contract]
  perm = (*batch, *free, *contract)
  if perm != tuple(range(x.ndim)):
    x = jnp.transpose(x, perm)
  size = lambda axes: math.prod(x.shape[perm.index(d)] for d in axes)
  free_shape = tuple(x.shape[perm.index(d)] for d in free)
  return x.reshape(size(batch), size(free), size(contract)), free_shape


_LETTERS = string.ascii_letters


def parse_einsum(subscripts: str, lhs_ndim: int, rhs_ndim: int) -> tuple[str, str, str]:
  """The index strings of a two-operand einsum, with '...' spelled out as letters.

  Args:
    subscripts: an explicit equation such as "btd,df->btf".
    lhs_ndim: the left operand's rank.
    rhs_ndim: the right operand's rank.

  Returns:
    `(lhs, rhs, out)`, one letter per axis.

  Example:
    >>> parse_einsum("...d,df->...f", 3, 2)
    ('abd', 'df', 'abf')
  """
  if not isinstance(subscripts, str) or "->" not in subscripts:
    raise ValueError(f"subscripts must be an explicit two-operand equation such as "
                     f"'btd,df->btf' (got {subscripts!r})")
  inputs, out = subscripts.replace(" ", "").split("->")
  terms = inputs.split(",")
  if len(terms) != 2:
    raise ValueError(f"fp8_einsum takes two operands (subscripts {subscripts!r} has "
                     f"{len(terms)})")
  used = set(inputs + out) - {".", ","}
  pool = [c for c in _LETTERS if c not in used]
  ell_n = max(nd - len(t.replace("...", "")) for t, nd in zip(terms, (lhs_ndim, rhs_ndim),
                                                               strict=True))
  ell = "".join(pool[:max(ell_n, 0)])

  def expand(term: str, nd: int) -> str:
    if "..." in term:
      n = nd - len(term.replace("...", ""))
      return term.replace("...", ell[len(ell) - n:] if n else "")
    return term

  lhs, rhs = expand(terms[0], lhs_ndim), expand(terms[1], rhs_ndim)
  out = out.replace("...", ell)
  for term, nd, name in ((lhs, lhs_ndim, "lhs"), (rhs, rhs_ndim, "rhs")):
    if len(term) != nd or not term.isalpha():
      raise ValueError(f"subscripts {subscripts!r} do not match {name}'s {nd} axes")
    if len(set(term)) != len(term):
      raise ValueError(f"subscripts {subscripts!r} repeat an index within {name}; "
                       "fp8_einsum takes no traces or diagonals")
  if len(set(out)) != len(out) or not set(out) <= set(lhs + rhs):
    raise ValueError(f"subscripts {subscripts!r}: each output index must appear once and "
                     "in an operand")
  return lhs, rhs, out


def fp8_einsum(subscripts: str, lhs: jax.Array, rhs: jax.Array, *,
               recipe: Fp8Recipe | str | None = None, state: Fp8DotState | None = None,
               key: jax.Array | None = None, precision: Any = None,
               preferred_element_type: Any = None, out_sharding: Any = None) -> jax.Array:
  """A two-operand `jnp.einsum` computed with `fp8_dot_general`.

  `lhs` keeps the input's role and `rhs` the weight's, whatever order the
  contraction is written in (jnp.einsum may swap its operands; this does
  not). Indices only one operand has and the output lacks are summed first.

  Args:
    subscripts: an explicit equation, for example "btd,dnh->btnh"; "..." is
      allowed.
    lhs: the input.
    rhs: the weight.
    recipe, state, key, precision, preferred_element_type, out_sharding: as
      in `fp8_dot_general`.

  Returns:
    The einsum's result.

  Example:
    >>> x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    >>> fp8_einsum("btd,df->btf", x, w, recipe="current").shape
    (2, 3, 5)
  """
  ls, rs, out = parse_einsum(subscripts, jnp.ndim(lhs), jnp.ndim(rhs))
  lhs, ls = _sum_lone(lhs, ls, rs + out)
  rhs, rs = _sum_lone(rhs, rs, ls + out)
  batch = [c for c in ls if c in rs and c in out]
  contract = [c for c in ls if c in rs and c not in out]
  dims = (((tuple(ls.index(c) for c in contract)), tuple(rs.index(c) for c in contract)),
          (tuple(ls.index(c) for c in batch), tuple(rs.index(c) for c in batch)))
  y = fp8_dot_general(lhs, rhs, dims, precision, preferred_element_type, recipe=recipe,
                      state=state, key=key)
  names = "".join(batch) + "".join(c for c in ls if c not in rs) + "".join(
      c for c in rs if c not in ls)
  if names != out:
    y = jnp.transpose(y, tuple(names.index(c) for c in out))
  if out_sharding is not None:
    y = jax.sharding.reshard(y, out_sharding)
  return y


def _sum_lone(x: jax.Array, term: str, others: str) -> tuple[jax.Array, str]:
  """Sums the axes whose index appears nowhere else (an einsum's plain sums)."""
  lone = tuple(i for i, c in enumerate(term) if c not in others)
  if not lone:
    return x, term
  return jnp.sum(x, axis=lone), "".join(c for c in term if c in others)


class _Config(NamedTuple):
  out_dtype: np.dtype
  lhs_dtype: np.dtype
  rhs_dtype: np.dtype
  recipe: Fp8Recipe
  tied: bool


def _as_update(delayed, state: DelayedState) -> DelayedState:
  """A tied state's cotangent: max-accumulating, and no vote for the scale without an amax.

  A site whose history is all zero would give scale 1, which could outvote
  the smaller scale of a site that saw values; it gives -inf instead, and
  `tied` turns a scale no site voted for back into 1.
  """
  used = delayed.used_amax(state.amax_history)
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
  def plain(d: DelayedState | None) -> DelayedState | None:
    if d is None:
      return None
    hist, scale = maxgrad.from_max(d.amax_history), maxgrad.from_max(d.scale)
    # -inf: no call site gave a value (the max's identity).
    return DelayedState(jnp.where(hist == -jnp.inf, 0.0, hist),
                        jnp.where(scale == -jnp.inf, 1.0, scale))

  return (Fp8DotState(plain(merged.lhs), plain(merged.rhs), plain(merged.grad)),)


_tied.defvjp(_tied_forward, _tied_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fp8_dot(config: _Config, lhs, rhs, state, key):
  return _forward(config, lhs, rhs, state, key)[0]


def _quantized(cast: Cast, x: jax.Array, state: DelayedState | None, key, salt: int):
  """x quantized by `cast` (with the delayed state's scale where it has one)."""
  k = jax.random.fold_in(key, salt) if cast.spec.rounding == "stochastic" else None
  if cast.delayed is not None:
    return cast.delayed.quantize(x, state, cast.spec, key=k)[0]
  return scaled.quantize_as(x, cast.spec, k, None, "scale")


def _next(cast: Cast, x: jax.Array, state: DelayedState | None) -> DelayedState | None:
  """The delayed state after seeing x (None for a role without one)."""
  if cast.delayed is None:
    return None
  return cast.delayed.update(state, scales.amax(x), cast.spec.format)


def _gemm(recipe: Fp8Recipe, gemm_name: str, a, b, cast_a: Cast, cast_b: Cast,
          state_a, state_b, key, salt: int) -> jax.Array:
  """[B, M, K] x [B, N, K] -> [B, M, N] in float32, quantized unless the GEMM is high precision."""
  if gemm_name in recipe.high_precision:
    dtype = jnp.result_type(a.dtype, b.dtype)
    return lax.dot_general(a.astype(dtype), b.astype(dtype), _BATCHED,
                           preferred_element_type=jnp.float32)
  qa = _quantized(cast_a, a, state_a, key, salt)
  qb = _quantized(cast_b, b, state_b, key, salt + 1)
  if cast_a.spec.kind != "tensor" or cast_b.spec.kind != "tensor":
    # `dot` would split the contraction into one product per block (16 or 32 values for
    # NVFP4 and MX) or scale rows and columns of its output; one product of the dequantized
    # values, the same definition (`dot`'s float32 reference), is several times faster on
    # CPU (3-7x for MX and NVFP4 in a Dense layer's step). Per-tensor operands keep `dot`:
    # float8 codes into the GEMM, the form XLA's GPU compiler rewrites into its FP8 GEMM.
    return lax.dot_general(scaled.dequantize(qa, jnp.float32), scaled.dequantize(qb, jnp.float32),
                           _BATCHED, precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)
  return gemm.dot(qa, qb, dimension_numbers=_BATCHED, preferred_element_type=jnp.float32)


def _forward(config: _Config, lhs, rhs, state, key):
  r = config.recipe
  state = jax.tree.map(maxgrad.from_max, state) if config.tied else state
  s = state or Fp8DotState(None, None, None)
  out = _gemm(r, "forward", lhs, rhs, r.input, r.weight, s.lhs, s.rhs, key, 0)
  return out.astype(config.out_dtype), (lhs, rhs, state, key)


def _swap(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, 1, 2)


def _backward(config: _Config, residuals, g):
  lhs, rhs, state, key = residuals
  r = config.recipe
  s = state or Fp8DotState(None, None, None)
  d_lhs = _gemm(r, "dgrad", g, _swap(rhs), r.grad, r.weight, s.grad, s.rhs, key, 2)
  g_t, lhs_t = _swap(g), _swap(lhs)
  if r.hadamard and "wgrad" not in r.high_precision:
    g_t, lhs_t = hadamard(g_t, r.hadamard_seed), hadamard(lhs_t, r.hadamard_seed)
  d_rhs = _gemm(r, "wgrad", g_t, lhs_t, r.grad, r.input, s.grad, s.lhs, key, 4)
  next_state = None
  if state is not None:
    # The state's "gradient" is its next value (overwrite with gradient).
    next_state = Fp8DotState(_next(r.input, lhs, s.lhs), _next(r.weight, rhs, s.rhs),
                             _next(r.grad, g, s.grad))
    if config.tied:
      next_state = Fp8DotState(*(None if n is None else _as_update(c.delayed, n)
                                 for n, c in zip(next_state, (r.input, r.weight, r.grad),
                                                 strict=True)))
  return d_lhs.astype(config.lhs_dtype), d_rhs.astype(config.rhs_dtype), next_state, None


_fp8_dot.defvjp(_forward, _backward)


@functools.cache
def _hadamard_matrix(seed: int) -> np.ndarray:
  """diag(random signs) @ H16 / 4: orthogonal, so (Qa)·(Qb) = a·b."""
  h = np.ones((1, 1))
  while h.shape[0] < _HADAMARD:
    h = np.block([[h, h], [h, -h]])
  signs = np.random.default_rng(seed).choice([-1.0, 1.0], _HADAMARD)
  return (signs[:, None] * h / math.sqrt(_HADAMARD)).astype(np.float32)


def hadamard(x: jax.Array, seed: int = 0) -> jax.Array:
  """The random Hadamard transform of x along its last axis, in blocks of 16, as float32.

  The last axis is padded with zeros to whole blocks (zeros contribute
  nothing to a product). Applied to both operands of a product along their
  contraction, it leaves the exact product unchanged.

  Example:
    >>> a, b = jnp.arange(16.0), jnp.ones(16)
    >>> float(hadamard(a) @ hadamard(b)), float(a @ b)
    (120.0, 120.0)
  """
  n = x.shape[-1]
  pad = -n % _HADAMARD
  x = x.astype(jnp.float32)
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  blocks = x.reshape(*x.shape[:-1], -1, _HADAMARD)
  q = jnp.asarray(_hadamard_matrix(seed))
  out = jnp.matmul(blocks, q, precision=lax.Precision.HIGHEST)
  return out.reshape(*x.shape[:-1], n + pad)
