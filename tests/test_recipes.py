"""Training recipes: each GEMM quantizes each role along its own contraction, as the recipe says.

The reference is written from the definition, independently of
`fp8_dot_general`'s layout code: the operands are transposed to
`[batch, rows, contraction]` with NumPy, each GEMM's two operands are
quantized with `fp8jax.quantize` and the recipe role's spec, and the product
of their dequantized values is the expected result. `fp8_dot_general`'s
forward output and both gradients must lie within the float32 accumulation
bound of those products (`dot_reference.bound`), far below the quantization
error a wrong granularity, role or contraction axis would leave.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from fp8jax.ops import training
from fp8jax.ops.recipes import Cast
from fp8jax.quant.spec import Axis, Block, QuantSpec, Tensor
from tests import dot_reference as dref

BATCHED = (((2,), (2,)), ((0,), (0,)))
# name: (dimension numbers, lhs shape, rhs shape)
CASES = {
    "dense": ((((2,), (0,)), ((), ())), (2, 24, 160), (160, 144)),
    "batched_two_contracted": ((((0, 3), (2, 0)), ((1,), (1,))), (5, 3, 20, 40), (40, 3, 5, 36)),
}


def _nearest(recipe: fp8jax.Fp8Recipe) -> fp8jax.Fp8Recipe:
  """The recipe with stochastic rounding replaced by nearest (a deterministic reference)."""
  def fix(cast):
    return dataclasses.replace(cast, spec=dataclasses.replace(cast.spec, rounding="nearest"))
  return dataclasses.replace(recipe, input=fix(recipe.input), weight=fix(recipe.weight),
                             grad=fix(recipe.grad))


def _batched(x, batch, contract) -> np.ndarray:
  """[batch, rows, contraction] by NumPy: batch axes, then the free ones, then contracted."""
  x = np.asarray(x)
  free = [d for d in range(x.ndim) if d not in batch and d not in contract]
  t = np.transpose(x, list(batch) + free + list(contract))
  size = lambda axes: int(np.prod([x.shape[d] for d in axes]))
  return t.reshape(size(batch), size(free), size(contract))


def _q(x, cast: Cast, state) -> fp8jax.QArray:
  x = jnp.asarray(x, jnp.float32)
  if cast.delayed is not None:  # the delayed scale, as a static one
    return fp8jax.quantize(x, cast.spec.format, scaling=state.scale, overflow=cast.spec.overflow)
  return fp8jax.quantize(x, cast.spec)


def _states(recipe):
  state = recipe.init()
  if state is None:
    return None, (None, None, None)
  # Scales that matter: the inputs exceed the first step's scale of 1 (they saturate).
  ds = recipe.input.delayed
  s = fp8jax.Fp8DotState(ds.update(state.lhs, jnp.float32(2.0)),
                         ds.update(state.rhs, jnp.float32(0.5)),
                         ds.update(state.grad, jnp.float32(1e-3), "e5m2"))
  return s, s


def _run(recipe, case, seed=0):
  dims, sl, sr = CASES[case]
  lhs = dref.gaussian(sl, seed)
  rhs = dref.gaussian(sr, seed + 1) * 0.1
  out_shape = lax.dot_general(lhs, rhs, dims).shape
  cot = dref.gaussian(out_shape, seed + 2) * 1e-3
  state, _ = _states(recipe)

  def f(x, w):
    return fp8jax.fp8_dot_general(x, w, dims, recipe=recipe, state=state,
                                  key=jax.random.key(seed))

  out, vjp = jax.jit(lambda x, w, c: (lambda o, v: (o, v(c)))(*jax.vjp(f, x, w)))(lhs, rhs, cot)
  return dims, lhs, rhs, cot, state, out, vjp


@pytest.mark.parametrize("case,name", [("dense", n) for n in fp8jax.RECIPES]
                         + [("batched_two_contracted", "current")])
def test_each_gemm_quantizes_each_role_along_its_contraction(case, name):
  recipe = _nearest(fp8jax.RECIPES[name])
  dims, lhs, rhs, cot, state, out, (d_lhs, d_rhs) = _run(recipe, case)
  (lc, rc), (lb, rb) = dims
  l3, r3 = _batched(lhs, lb, lc), _batched(rhs, rb, rc)
  g3 = np.asarray(cot).reshape(l3.shape[0], l3.shape[1], r3.shape[1])
  s = state or fp8jax.Fp8DotState(None, None, None)
  swap = lambda x: np.swapaxes(x, 1, 2)
  g_t, l_t = swap(g3), swap(l3)
  if recipe.hadamard:
    g_t, l_t = (training.hadamard(x, recipe.hadamard_seed) for x in (g_t, l_t))
  gemms = {
      "forward": (np.asarray(out).reshape(g3.shape), (l3, recipe.input, s.lhs),
                  (r3, recipe.weight, s.rhs)),
      "dgrad": (_batched(d_lhs, lb, lc), (g3, recipe.grad, s.grad),
                (swap(r3), recipe.weight, s.rhs)),
      "wgrad": (_batched(d_rhs, rb, rc), (g_t, recipe.grad, s.grad),
                (l_t, recipe.input, s.lhs)),
  }
  for gemm_name, (got, a, b) in gemms.items():
    qa, qb = _q(*a), _q(*b)
    try:
      dref.assert_within_bound(got, qa, qb, BATCHED)
    except AssertionError as e:
      raise AssertionError(f"{name} {gemm_name}: {e}") from None
  # Not the unquantized product: the quantizers were in play.
  exact = lax.dot_general(lhs, rhs, dims, precision=lax.Precision.HIGHEST)
  assert not np.allclose(np.asarray(out), np.asarray(exact), rtol=1e-3, atol=0)


def test_a_per_tensor_role_gives_the_same_codes_in_every_gemm():
  x = dref.gaussian((8, 40), 3)
  q = fp8jax.quantize(x, "e4m3fn")
  qt = fp8jax.quantize(x.T, "e4m3fn")
  np.testing.assert_array_equal(np.asarray(q.bits).T, np.asarray(qt.bits))


def test_high_precision_gemms_use_the_operands_as_they_are():
  recipe = dataclasses.replace(fp8jax.RECIPES["current"], high_precision=("wgrad",))
  dims, lhs, rhs, cot, _, _, (d_lhs, d_rhs) = _run(recipe, "dense")
  g_t = np.asarray(cot).reshape(1, -1, cot.shape[-1]).transpose(0, 2, 1)
  l_t = np.asarray(lhs).reshape(1, -1, lhs.shape[-1]).transpose(0, 2, 1)
  dref.assert_within_bound(np.asarray(d_rhs).T[None], g_t, l_t, BATCHED)
  with pytest.raises(AssertionError):  # the quantized wgrad would be far outside that bound
    dref.assert_within_bound(np.asarray(_run(fp8jax.RECIPES["current"], "dense")[-1][1]).T[None],
                             g_t, l_t, BATCHED)
  # The other two GEMMs stay quantized.
  full = _run(fp8jax.RECIPES["current"], "dense")[-1]
  np.testing.assert_array_equal(np.asarray(d_lhs), np.asarray(full[0]))


def test_stochastic_gradients_follow_the_key():
  # nvfp4's rounding of the gradient, per tensor in e5m2: the same key plumbing, compiled in
  # a fraction of nvfp4's time (the nvfp4 case above checks its arithmetic).
  recipe = fp8jax.Fp8Recipe(Cast("e4m3fn"), Cast("e4m3fn"),
                            Cast(QuantSpec("e5m2", rounding="stochastic")))
  assert recipe.needs_key
  dims, lhs, rhs, cot, *_ = _run(fp8jax.RECIPES["current"], "dense")

  def grads(key):
    f = lambda x, w: fp8jax.fp8_dot_general(x, w, dims, recipe=recipe, key=key)
    out, vjp = jax.vjp(f, lhs, rhs)
    return (out, *vjp(cot))

  g = jax.jit(grads)
  a, b, c = g(jax.random.key(0)), g(jax.random.key(0)), g(jax.random.key(1))
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(c[0]))  # forward rounds to nearest
  assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))
  assert not np.array_equal(np.asarray(a[2]), np.asarray(c[2]))
  # Unbiased: over n keys the input gradient's mean is that of the unrounded output gradient
  # times the weight's codes, within 5 sd of the mean of n stochastic roundings (each value
  # rounded to one of its two neighbours, a step u apart, has variance at most u²/4).
  n = 64
  mean = np.asarray(jax.jit(jax.vmap(grads))(jax.random.split(jax.random.key(2), n))[1]
                    ).mean(axis=0, dtype=np.float64)
  w = np.asarray(fp8jax.dequantize(fp8jax.quantize(rhs, "e4m3fn"), jnp.float32), np.float64)
  g = np.asarray(cot, np.float64)
  scale = float(fp8jax.quantize(cot, "e5m2").scale)
  exp = np.floor(np.log2(np.maximum(np.abs(g) / scale, 2.0**-14)))
  step = 2.0 ** (exp - 2) * scale  # e5m2: 2 mantissa bits, normal from 2^-14
  want = np.einsum("btf,df->btd", g, w)
  sd = np.sqrt(np.einsum("btf,df->btd", step**2 / 4, w**2) / n)
  accumulation = 1e-5 * np.einsum("btf,df->btd", np.abs(g), np.abs(w))
  assert np.all(np.abs(mean - want) <= 5 * sd + accumulation), np.max(
      np.abs(mean - want) / sd)


def test_hadamard_is_orthogonal_and_keeps_products():
  q = training._hadamard_matrix(0)
  np.testing.assert_allclose(q @ q.T, np.eye(16), atol=1e-6)
  assert set(np.abs(q).ravel().tolist()) == {0.25}
  a, b = dref.gaussian((3, 40), 1), dref.gaussian((5, 40), 2)
  ha, hb = training.hadamard(a), training.hadamard(b)
  assert ha.shape == (3, 48)
  np.testing.assert_allclose(np.asarray(ha @ hb.T), np.asarray(a @ b.T), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eq,ls,rs", [
    ("btd,df->btf", (2, 3, 8), (8, 5)),
    ("btd,fd->bft", (2, 3, 8), (5, 8)),
    ("btnh,dnh->btd", (2, 3, 4, 8), (16, 4, 8)),
    ("bqd,bkd->bqk", (2, 3, 8), (2, 4, 8)),
    ("...d,df->...f", (2, 3, 8), (8, 5)),
    ("btd,dfz->bf", (2, 3, 8), (8, 5, 2)),
])
def test_einsum_is_the_dot_general_it_names(eq, ls, rs):
  x, w = dref.gaussian(ls, 1), dref.gaussian(rs, 2)
  got = fp8jax.fp8_einsum(eq, x, w, recipe="current")
  want = jnp.einsum(eq, fp8jax.fake_quant(x), fp8jax.fake_quant(w),
                    precision=lax.Precision.HIGHEST) if "z" not in eq else None
  assert got.shape == jnp.einsum(eq, x, w).shape
  if want is not None:  # per-tensor casts commute with the layout: the same values
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def _recipe_with(**kw):
  return lambda: fp8jax.Fp8Recipe(**kw)


@pytest.mark.parametrize("make,error,match", [
    (lambda: fp8jax.get_recipe("fp8"), ValueError, "unknown recipe 'fp8'.*delayed, current"),
    (lambda: fp8jax.get_recipe(None), TypeError, "recipe must be an Fp8Recipe"),
    (_recipe_with(grad=Cast("e2m1fn")), ValueError, "grad: e2m1fn has 4 bits and needs block"),
    (_recipe_with(input=Cast(QuantSpec("e3m2fn", Axis(-1)))), ValueError, "input: e3m2fn"),
    (_recipe_with(high_precision=("backward",)), ValueError, "high_precision names GEMMs"),
    (_recipe_with(weight="e4m3fn"), TypeError, "weight must be a Cast"),
    (lambda: Cast(QuantSpec("e4m3fn", Axis(0))), ValueError, "contraction last"),
    (lambda: Cast(QuantSpec("e4m3fn", Block((4,), axes=(0,)))), ValueError, "contraction last"),
    (lambda: Cast(QuantSpec("e4m3fn", Block((4,))), fp8jax.DelayedScaling()), ValueError,
     "delayed scaling is per tensor"),
    (lambda: Cast(QuantSpec("e2m1fn", Block((16,)), pack=True)), ValueError, "pack"),
    (lambda: Cast("e4m3fn", delayed=16), TypeError, "delayed must be a DelayedScaling"),
])
def test_bad_recipes_are_named(make, error, match):
  with pytest.raises(error, match=match):
    make()


DOT = functools.partial(fp8jax.fp8_dot_general, jnp.ones((2, 3)), jnp.ones((3, 4)),
                        (((1,), (0,)), ((), ())))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(recipe="current", state=fp8jax.fp8_dot_state()), TypeError,
     "recipe 'current' keeps no state"),
    (dict(recipe="delayed"), TypeError, "state must be an Fp8DotState.*fp8_dot_state"),
    (dict(recipe="delayed", state=fp8jax.Fp8Recipe.delayed_per_tensor(
        fp8jax.DelayedScaling(history=4)).init()), ValueError,
     r"state.lhs has an amax history of shape \(4,\).*keeps \(16,\)"),
    (dict(recipe="delayed", state=fp8jax.Fp8DotState(None, None, None)), TypeError,
     "state.lhs must be a DelayedState"),
    (dict(recipe=fp8jax.Fp8Recipe(input=Cast("e4m3fn")), state=fp8jax.fp8_dot_state()),
     ValueError, "state.lhs must be None"),
    (dict(recipe="nvfp4"), ValueError, "recipe 'nvfp4' rounds stochastically and needs key="),
])
def test_mismatched_state_and_missing_keys_are_named(kwargs, error, match):
  with pytest.raises(error, match=match):
    DOT(**kwargs)


def test_a_recipe_mixing_delayed_and_current_roles_keeps_state_for_the_delayed_ones():
  recipe = fp8jax.Fp8Recipe(input=Cast("e4m3fn"))  # input current, weight and grad delayed
  state = fp8jax.fp8_dot_state(recipe)
  assert state.lhs is None and state.rhs is not None
  x, w = dref.gaussian((4, 32), 1), dref.gaussian((32, 8), 2)
  loss = lambda w, s: fp8jax.fp8_dot_general(x, w, (((1,), (0,)), ((), ())), recipe=recipe,
                                             state=s).sum()
  _, new = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, state)
  assert new.lhs is None
  assert float(new.rhs.amax_history[0]) == float(jnp.abs(w).max())
  assert float(new.grad.amax_history[0]) == 1.0


def test_presets_are_what_the_table_says():
  r = fp8jax.RECIPES
  assert [n for n in r] == ["delayed", "current", "rowwise", "blockwise", "mxfp8", "nvfp4"]
  assert all(v.name == k for k, v in r.items())
  assert r["delayed"].needs_state and not any(r[n].needs_state for n in list(r)[1:])
  assert [n for n in r if r[n].needs_key] == ["nvfp4"]
  assert r["current"].grad.spec == QuantSpec("e5m2", Tensor())
  assert r["rowwise"].grad.spec == QuantSpec("e4m3fn", Axis(-1), pow2=True)
  assert r["blockwise"].input.spec.granularity == Block((128,))
  assert r["blockwise"].weight.spec.granularity == Block((128, 128))
  assert r["mxfp8"].grad.spec.granularity.rule == "rceil"
  assert r["nvfp4"].weight.spec.granularity.block == (16, 16) and r["nvfp4"].hadamard
  assert r["nvfp4"].grad.spec.rounding == "stochastic"
  assert r["nvfp4"].input.spec.rounding == r["nvfp4"].weight.spec.rounding == "nearest"
