"""`fp8_dot_general`: straight-through gradients and the delayed-scaling state it threads."""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import dot_reference as dref, scaling_reference as sref

E4M3, E5M2 = fp8jax.FORMATS["e4m3fn"], fp8jax.FORMATS["e5m2"]
DIMS = {
    "matmul": ((((1,), (0,)), ((), ())), (6, 40), (40, 5)),
    "dense_nk": ((((1,), (1,)), ((), ())), (6, 40), (5, 40)),
    "batched": ((((2,), (1,)), ((0,), (0,))), (3, 6, 40), (3, 40, 5)),
    "leading_k": ((((0,), (0,)), ((), ())), (40, 6), (40, 5)),
    "two_contracted": ((((0, 2), (2, 0)), ((1,), (1,))), (4, 2, 7, 3), (7, 2, 4, 5)),
}


def _rand(shape, seed, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


def _state_with_scales(lhs, rhs, grad):
  ds = fp8jax.DelayedScaling()
  s = fp8jax.fp8_dot_state()
  return fp8jax.Fp8DotState(ds.update(s.lhs, lhs, E4M3), ds.update(s.rhs, rhs, E4M3),
                            ds.update(s.grad, grad, E5M2))


@jax.custom_vjp
def _quantize_gradient(y, scale):
  return y


def _qg_forward(y, scale):
  return y, scale


def _qg_backward(scale, g):
  return fp8jax.fake_quant(g, "e5m2", scaling=scale), jnp.zeros_like(scale)


_quantize_gradient.defvjp(_qg_forward, _qg_backward)


def _straight_through_reference(lhs, rhs, state, dims):
  """FP8 training written with fake_quant and autodiff of lax.dot_general: the definition."""
  lq = fp8jax.fake_quant(lhs, "e4m3fn", scaling=state.lhs.scale)
  rq = fp8jax.fake_quant(rhs, "e4m3fn", scaling=state.rhs.scale)
  out = lax.dot_general(lq, rq, dims, precision=lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
  return _quantize_gradient(out, state.grad.scale)


def _grad_bound(x_abs, y_abs, g_abs, dims, k):
  """Accumulation bound of each operand gradient: Σ|ĝ||other| over the transposed contraction."""
  _, vjp = jax.vjp(lambda a, b: lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST),
                   x_abs, y_abs)
  dx, dy = vjp(g_abs)
  c = dref.gamma(k[0] + 3) + dref.gamma(2 * k[0] + 3)
  d = dref.gamma(k[1] + 3) + dref.gamma(2 * k[1] + 3)
  pad = 1 + dref.gamma(max(k) + 1)  # the float32 sums above round too
  return (c * pad * np.asarray(dx, np.float64) + (2 * k[0] + 6) * dref.TINY,
          d * pad * np.asarray(dy, np.float64) + (2 * k[1] + 6) * dref.TINY)


@pytest.mark.parametrize("case", list(DIMS))
def test_gradients_match_the_straight_through_reference_under_jit(case):
  dims, sl, sr = DIMS[case]
  lhs, rhs = _rand(sl, 1, 3.0), _rand(sr, 2, 0.05)
  out_shape = lax.dot_general(lhs, rhs, dims).shape
  cot = _rand(out_shape, 3, 1e-3)
  state = _state_with_scales(jnp.float32(5.0), jnp.float32(0.1), jnp.float32(2e-3))

  def loss(f, lhs, rhs, state):
    return jnp.sum(cot * f(lhs, rhs, state))

  def fp8(x, y, s):
    return fp8jax.fp8_dot_general(x, y, dims, state=s)

  st = functools.partial(_straight_through_reference, dims=dims)
  out = jax.jit(fp8)(lhs, rhs, state)
  want = st(lhs, rhs, state)
  lq = fp8jax.quantize(lhs, "e4m3fn", scaling=state.lhs.scale)
  rq = fp8jax.quantize(rhs, "e4m3fn", scaling=state.rhs.scale)
  dref.assert_within_bound(out, lq, rq, dims)
  assert out.dtype == jnp.float32 and out.shape == want.shape

  dl, dr, _ = jax.jit(jax.grad(functools.partial(loss, fp8), argnums=(0, 1, 2)))(lhs, rhs, state)
  wl, wr = jax.grad(functools.partial(loss, st), argnums=(0, 1))(lhs, rhs, state)
  gq = fp8jax.fake_quant(cot, "e5m2", scaling=state.grad.scale)
  (ca, cb), (ba, bb) = dims
  k_lhs = int(np.prod([sr[d] for d in range(len(sr)) if d not in cb and d not in bb]))
  k_rhs = int(np.prod([sl[d] for d in range(len(sl)) if d not in ca and d not in ba]))
  bl, br = _grad_bound(jnp.abs(fp8jax.dequantize(lq, jnp.float32)),
                       jnp.abs(fp8jax.dequantize(rq, jnp.float32)), jnp.abs(gq), dims,
                       (k_lhs, k_rhs))
  for got, ref, allowed in ((dl, wl, bl), (dr, wr, br)):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    err = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
    assert np.all(err <= allowed), (err.max(), allowed[np.argmax(err - allowed)])
  # The reference's gradient differs from the exact one: the quantizers were in play.
  exact = jax.grad(lambda x: jnp.sum(cot * lax.dot_general(x, rhs, dims)))(lhs)
  assert not np.allclose(np.asarray(dl), np.asarray(exact), rtol=1e-4, atol=0)


def test_saturated_values_keep_their_gradient():
  dims = DIMS["matmul"][0]
  lhs = jnp.asarray([[1.0, 1e4]], jnp.float32)  # 1e4 saturates at scale 1 (max 448)
  rhs = jnp.ones((2, 1), jnp.float32)
  state = fp8jax.fp8_dot_state()
  out = fp8jax.fp8_dot_general(lhs, rhs, dims, state=state)
  assert float(out[0, 0]) == 449.0
  dl = jax.grad(lambda x: jnp.sum(fp8jax.fp8_dot_general(x, rhs, dims, state=state)))(lhs)
  np.testing.assert_array_equal(np.asarray(dl), [[1.0, 1.0]])


def _synthetic_steps(steps, seed=0):
  """Inputs and output gradients whose range grows, then shrinks (as in test_training)."""
  rng = np.random.default_rng(seed)
  level = np.exp2(np.concatenate([np.linspace(0, 8, steps // 2),
                                  np.linspace(8, -4, steps - steps // 2)]))
  xs = rng.standard_normal((steps, 8, 16)) * level[:, None, None]
  cots = rng.standard_normal((steps, 8, 4)) * level[::-1, None, None] * 1e-3
  return jnp.asarray(xs, jnp.float32), jnp.asarray(cots, jnp.float32)


@pytest.mark.parametrize("history,margin,amax_from", [(16, 0, "max"), (3, 1, "most_recent")])
def test_state_updates_step_by_step_as_the_recipe_says(history, margin, amax_from):
  steps = 24
  recipe = fp8jax.Fp8Recipe.delayed_per_tensor(fp8jax.DelayedScaling(history, margin, amax_from))
  dims = DIMS["matmul"][0]
  xs, cots = _synthetic_steps(steps)
  w0 = _rand((16, 4), 4, 0.3)

  def step(carry, inputs):
    w, state = carry
    x, cot = inputs
    def f(w, s):
      return jnp.sum(cot * fp8jax.fp8_dot_general(x, w, dims, state=s, recipe=recipe))

    dw, new_state = jax.grad(f, argnums=(0, 1))(w, state)
    return (w - 0.5 * dw, new_state), (w, new_state)

  _, (ws, states) = jax.jit(lambda c, i: lax.scan(step, c, i))((w0, recipe.init()), (xs, cots))

  ws = np.asarray(ws)
  for name, fmt, seen in (("lhs", E4M3, np.asarray(xs)), ("rhs", E4M3, ws),
                          ("grad", E5M2, np.asarray(cots))):
    hist = np.zeros(history, np.float32)
    for t in range(steps):
      hist = np.roll(hist, 1)
      hist[0] = sref.finite_amax(seen[t])
      got = getattr(states, name)
      np.testing.assert_array_equal(np.asarray(got.amax_history[t]), hist, err_msg=f"{name} {t}")
      a = hist.max() if amax_from == "max" else hist[0]
      assert np.asarray(got.scale[t]) == sref.dynamic_scale(a, fmt.max, False, margin), (name, t)


def test_forward_uses_the_scale_from_earlier_steps():
  dims = DIMS["matmul"][0]
  x, w = _rand((4, 16), 5), _rand((16, 3), 6)
  state = _state_with_scales(jnp.float32(0.5), jnp.float32(1.0), jnp.float32(1.0))
  out = fp8jax.fp8_dot_general(x, w, dims, state=state)
  qx = fp8jax.quantize(x, "e4m3fn", scaling=state.lhs.scale)  # 0.5 / 448: x saturates
  qw = fp8jax.quantize(w, "e4m3fn", scaling=state.rhs.scale)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(fp8jax.dot(qx, qw)))
  assert np.abs(fp8jax.dequantize(qx, jnp.float32)).max() <= 0.5


def test_bfloat16_operands_give_bfloat16_results_and_gradients():
  dims = DIMS["dense_nk"][0]
  x = _rand((6, 40), 7).astype(jnp.bfloat16)
  w = _rand((5, 40), 8, 0.1).astype(jnp.bfloat16)
  state = fp8jax.fp8_dot_state()
  out = fp8jax.fp8_dot_general(x, w, dims, state=state)
  assert out.dtype == jnp.bfloat16
  dx, dw, new = jax.grad(lambda x, w, s: jnp.sum(fp8jax.fp8_dot_general(x, w, dims, state=s)
                                                 .astype(jnp.float32)), argnums=(0, 1, 2))(
                                                     x, w, state)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  assert float(new.grad.amax_history[0]) == 1.0
  out32 = fp8jax.fp8_dot_general(x, w, dims, preferred_element_type=jnp.float32, state=state)
  assert out32.dtype == jnp.float32


def _dense(x, w, dot_general=lax.dot_general):
  """A layer written against the dot_general signature, as Flax's Dense calls it."""
  return dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=None)


def test_drop_in_as_the_dot_general_of_a_layer():
  x, w = _rand((8, 16), 9), _rand((16, 4), 10, 0.2)
  state = fp8jax.fp8_dot_state()

  def loss(w, state):
    return jnp.sum(_dense(x, w, functools.partial(fp8jax.fp8_dot_general, state=state)) ** 2)

  dw, new_state = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, state)
  qx = fp8jax.quantize(x, "e4m3fn", scaling=1.0)
  assert float(new_state.lhs.amax_history[0]) == float(jnp.abs(x).max())
  assert float(new_state.rhs.amax_history[0]) == float(jnp.abs(w).max())
  assert dw.shape == w.shape and bool(jnp.all(jnp.isfinite(dw)))
  assert qx.scale == 1.0
  # Without differentiating the state, the forward pass alone changes nothing.
  np.testing.assert_array_equal(np.asarray(_dense(x, w, functools.partial(
      fp8jax.fp8_dot_general, state=state))), np.asarray(_dense(x, w, functools.partial(
          fp8jax.fp8_dot_general, state=state))))


def test_flax_dense_accepts_it():
  nn = pytest.importorskip("flax.linen", reason="flax is optional and not installed")
  x = _rand((8, 16), 11)
  state = fp8jax.fp8_dot_state()

  def loss(params, state):
    layer = nn.Dense(4, dot_general=functools.partial(fp8jax.fp8_dot_general, state=state))
    return jnp.sum(layer.apply(params, x) ** 2)

  params = nn.Dense(4).init(jax.random.key(0), x)
  dp, new_state = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, state)
  assert float(new_state.lhs.amax_history[0]) == float(jnp.abs(x).max())
  assert jax.tree_util.tree_structure(dp) == jax.tree_util.tree_structure(params)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(state=None), TypeError, "state must be an Fp8DotState"),
    (dict(state=fp8jax.fp8_dot_state(), recipe="e4m3fn"), ValueError, "unknown recipe 'e4m3fn'"),
    (dict(state=fp8jax.fp8_dot_state(), recipe=3), TypeError, "recipe must be an Fp8Recipe"),
])
def test_errors_name_the_argument(kwargs, error, match):
  with pytest.raises(error, match=match):
    fp8jax.fp8_dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)), DIMS["matmul"][0], **kwargs)


def test_recipe_checks_its_formats():
  with pytest.raises(ValueError, match="backward must be a signed 8-bit format"):
    fp8jax.Fp8Recipe.delayed_per_tensor(backward="e2m1fn")
  with pytest.raises(TypeError, match="lhs must be bfloat16"):
    fp8jax.fp8_dot_general(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 4)), DIMS["matmul"][0],
                           state=fp8jax.fp8_dot_state())


@pytest.mark.parametrize("amax_from", ["max", "most_recent"])
def test_a_tied_state_merges_its_call_sites_by_max(amax_from):
  # One weight applied twice (tied or re-applied): the state's update is the
  # max over the two call sites, as if one site had seen every value.
  scaling = fp8jax.DelayedScaling(history=4, amax_from=amax_from)
  recipe = fp8jax.Fp8Recipe.delayed_per_tensor(scaling)
  dims = (((1,), (0,)), ((), ()))
  w = jnp.ones((3, 4))
  x1, x2 = jnp.ones((2, 3)), 2 * jnp.ones((2, 3))

  def loss(w, state, tie):
    s = fp8jax.tied(state) if tie else state
    f = lambda x: fp8jax.fp8_dot_general(x, w, dims, state=s, recipe=recipe)
    return (f(x1) + 3 * f(x2)).sum()

  step = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  (dw, s2), (dw_untied, s_untied) = step(w, recipe.init(), True), step(w, recipe.init(), False)
  np.testing.assert_array_equal(dw, dw_untied)  # the gradients themselves are unchanged
  # Untied, the two updates add up (the bug a tied state avoids).
  assert float(s_untied.lhs.amax_history[0]) == 3.0
  one_site = scaling.update(scaling.init(), jnp.float32(2.0))
  np.testing.assert_array_equal(s2.lhs.amax_history, one_site.amax_history)
  np.testing.assert_array_equal(s2.lhs.scale, one_site.scale)
  np.testing.assert_array_equal(s2.rhs.amax_history[0], 1.0)
  np.testing.assert_array_equal(s2.grad.amax_history[0], 3.0)  # the larger output gradient
  np.testing.assert_array_equal(
      s2.grad.scale, scaling.update(scaling.init(), jnp.float32(3.0), "e5m2").scale)


def test_a_tied_state_where_one_site_sees_only_zeros():
  # A site with an all-zero history and input must not outvote the other's scale.
  dims = (((1,), (0,)), ((), ()))
  w = jnp.ones((3, 4))

  def loss(w, state):
    s = fp8jax.tied(state)
    return (fp8jax.fp8_dot_general(jnp.zeros((2, 3)), w, dims, state=s)
            + fp8jax.fp8_dot_general(4 * jnp.ones((2, 3)), w, dims, state=s)).sum()

  _, s2 = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, fp8jax.fp8_dot_state())
  ds = fp8jax.DelayedScaling()
  np.testing.assert_array_equal(s2.lhs.scale, ds.update(ds.init(), jnp.float32(4.0)).scale)
  with pytest.raises(TypeError, match="Fp8DotState"):
    fp8jax.tied(ds.init())
