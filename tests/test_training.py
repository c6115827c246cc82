"""Delayed scaling and fake_quant: the training-side pieces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import scaling_reference as ref
from tests.conftest import assert_codes_equal

STEPS = 50


def _synthetic(steps: int, seed: int = 0) -> np.ndarray:
  """Activations whose range grows for a while, then shrinks, with NaN and inf spikes."""
  rng = np.random.default_rng(seed)
  level = np.exp2(np.concatenate([np.linspace(0, 12, steps // 2), np.linspace(12, -6,
                                                                             steps - steps // 2)]))
  x = rng.standard_normal((steps, 256)) * level[:, None]
  x[7, 3] = np.nan
  x[20, 9] = np.inf
  return x.astype(np.float32)


@pytest.mark.parametrize("amax_from", ["max", "most_recent"])
@pytest.mark.parametrize("history,margin", [(16, 0), (4, 1), (1, 0)])
@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
def test_scan_follows_the_reference_recipe_step_by_step(amax_from, history, margin, fmt):
  f = fp8jax.FORMATS[fmt]
  ds = fp8jax.DelayedScaling(history=history, margin=margin, amax_from=amax_from)
  xs = _synthetic(STEPS)

  def step(state, x):
    q, new = ds.quantize(x, state, fmt)
    return new, (q.bits, q.scale, new.amax_history, new.scale)

  _, (bits, used, hists, scales) = jax.jit(lambda s, xs: jax.lax.scan(step, s, xs))(
      ds.init(), jnp.asarray(xs))

  hist = np.zeros(history, np.float32)
  scale = np.float32(1)
  for t in range(STEPS):
    assert np.asarray(used[t]) == scale, t  # quantized with the previous step's scale
    want = ref.encode_block(xs[t] / scale, f, "saturate")
    assert_codes_equal(bits[t], want, f, xs[t])
    hist = np.roll(hist, 1)
    hist[0] = ref.finite_amax(xs[t])
    np.testing.assert_array_equal(np.asarray(hists[t]), hist)
    a = hist.max() if amax_from == "max" else hist[0]
    scale = ref.dynamic_scale(a, f.max, False, margin)
    assert np.asarray(scales[t]) == scale, t


def test_delayed_state_is_a_pytree_and_jits():
  ds = fp8jax.DelayedScaling(history=3)
  state = ds.init()
  q, state = jax.jit(lambda x, s: ds.quantize(x, s))(jnp.full((4,), 448.0), state)
  assert float(state.scale) == 1.0 and float(state.amax_history[0]) == 448.0
  assert jax.tree_util.tree_structure(state).num_leaves == 2


def _weights(n, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(n), jnp.float32)


@pytest.mark.parametrize("options", [
    dict(), dict(scaling="axis"), dict(scaling="block", block_size=8), dict(scaling="mx"),
    dict(scaling=0.01), dict(scaling="tensor", rounding="toward_zero"),
], ids=str)
def test_fake_quant_forward_is_the_round_trip_and_gradient_passes_straight_through(options):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 32)) * 3, jnp.float32)
  w = _weights(x.shape).reshape(x.shape)
  fwd = fp8jax.fake_quant(x, "e4m3fn", **options)
  want = fp8jax.dequantize(fp8jax.quantize(x, "e4m3fn", **options), jnp.float32)
  np.testing.assert_array_equal(np.asarray(fwd), np.asarray(want))
  grad = jax.jit(jax.grad(lambda v: jnp.sum(w * fp8jax.fake_quant(v, "e4m3fn", **options))))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(w))


def test_fake_quant_gradient_passes_through_saturated_values_too():
  x = jnp.asarray([1.0, 1e6, -1e6], jnp.float32)
  out = fp8jax.fake_quant(x, "e4m3fn", scaling=1.0)
  np.testing.assert_array_equal(np.asarray(out), [1.0, 448.0, -448.0])
  g = jax.grad(lambda v: jnp.sum(fp8jax.fake_quant(v, "e4m3fn", scaling=1.0) ** 2))(x)
  np.testing.assert_array_equal(np.asarray(g), 2 * np.asarray(out))


def test_fake_quant_in_bf16_under_vmap_and_stochastic():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 64)), jnp.bfloat16)
  mapped = jax.vmap(lambda r: fp8jax.fake_quant(r, "e5m2"))(x)
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(mapped[i]).view(np.uint16),
                                  np.asarray(fp8jax.fake_quant(x[i], "e5m2")).view(np.uint16))
  key = jax.random.key(0)
  g = jax.grad(lambda v: jnp.sum(fp8jax.fake_quant(v, rounding="stochastic", key=key)
                                 .astype(jnp.float32)))(x.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(g), 1.0)
