"""Block-scaled products of MX and NVFP4 QArrays: `dot` and the `jax.nn.scaled_matmul` bridge.

Both are compared with the float32 product of the dequantized operands (tests/dot_reference.py).

`dot` folds each NVFP4 block's multiplier (e4m3fn scale and tensor scale combined as
`dequantize` does) into its scale grid, so the dequantized values it multiplies are the
reference's, and the bound of dot_reference holds unchanged.

`scaled_matmul` multiplies codes by block scales (exact: at most 4 x 4 significant
bits, in bfloat16 in XLA's decomposition, far inside its range for these data), takes a
float32 dot of length K (γ_K of Σ|â||b̂|), and then multiplies by the product of the two
tensor decode multipliers (two roundings). The tensor multiplier differs from the one
inside the reference's dequantized values by at most two float32 roundings per operand,
and each dequantized value is itself rounded once: so, per output element,

  |scaled_matmul − reference| ≤ (γ_{K+8} + γ_{K+8}) · Σ_k |â_k||b̂_k| + (2K + 6) · 2^-126

(the reference's own γ_{K+3} included; the absolute term is dot_reference's flush term).
"""

from __future__ import annotations

import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import dot_reference as ref

RULES = ("torchao", "te", "modelopt", "compressed-tensors")
NT = (((1,), (1,)), ((), ()))  # a [M, K] times b [N, K], as scaled_matmul takes them
BATCHED_NT = (((2,), (2,)), ((0,), (0,)))


def _nvfp4(x, rule, **kw):
  return fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule=rule, **kw)


def scaled_bound(a, b, dims) -> np.ndarray:
  x, y = ref.values(a), ref.values(b)
  (ca, _), _ = dims
  k = int(np.prod([x.shape[d] for d in ca]))
  return 2 * ref.gamma(k + 8) * ref.abs_product(x, y, dims) + (2 * k + 6) * ref.TINY


def assert_scaled_within_bound(out, a, b, dims):
  want = ref.reference_dot(a, b, dims)
  got = np.asarray(out, np.float64)
  assert got.shape == want.shape
  err = np.abs(got - want)
  bound = scaled_bound(a, b, dims)
  assert np.all(err <= bound), (float(np.max(err - bound)), float(np.max(err)))


# [M, K] and [N, K] alike, K ragged: one compilation per spec (the shapes and dtypes of
# tests/test_nvfp4.py and tests/test_mx_rules.py, whose compilations this reuses).
SHAPE = (45, 200)
MX_SHAPE = (3, 40, 100)


@pytest.mark.parametrize("rule", RULES)
def test_dot_of_nvfp4_operands_is_within_the_accumulation_bound(rule):
  a = _nvfp4(ref.gaussian(SHAPE, 1), rule)
  b = _nvfp4(ref.gaussian(SHAPE, 2), rule)
  ref.assert_within_bound(fp8jax.dot(a, b, dimension_numbers=NT), a, b, NT)
  assert_scaled_within_bound(fp8jax.scaled_matmul(a, b), a, b, NT)


def test_dot_takes_nvfp4_blocks_along_either_axis_and_tiles():
  a = _nvfp4(ref.gaussian(SHAPE, 1, jnp.bfloat16), "te")
  b_kn = _nvfp4(ref.gaussian(SHAPE[::-1], 2), "te", axis=0)  # blocks along K
  ref.assert_within_bound(fp8jax.dot(a, b_kn), a, b_kn, ref.MATMUL)
  b_nk = _nvfp4(ref.gaussian(SHAPE, 3, jnp.bfloat16), "te", block_size=(16, 16))  # a tiled weight
  ref.assert_within_bound(fp8jax.dot(a, b_nk, dimension_numbers=NT), a, b_nk, NT)


def test_dot_mixes_mx_nvfp4_and_plain_operands():
  x, w = ref.gaussian((16, 96), 4), ref.gaussian((96, 24), 5)
  a = fp8jax.quantize(x, "e4m3fn", scaling="mx", scale_rounding="rceil")
  b = _nvfp4(w, "compressed-tensors", axis=0)
  ref.assert_within_bound(fp8jax.dot(a, b), a, b, ref.MATMUL)
  xb = x.astype(jnp.bfloat16)
  ref.assert_within_bound(fp8jax.dot(xb, b), xb, b, ref.MATMUL)


def test_dot_of_stacked_experts_uses_each_experts_tensor_scale():
  e, m, k = 3, 20, 48  # test_nvfp4's stacked shape
  scale = jnp.asarray([1.0, 2.0**-20, 2.0**20], jnp.float32)[:, None, None]
  x = (ref.gaussian((e, m, k), 6) * scale).astype(jnp.bfloat16)
  w = ref.gaussian((e, m, k), 7, jnp.bfloat16)
  a = _nvfp4(x, "modelopt", stacked=True)
  b = _nvfp4(w, "modelopt", stacked=True)
  ref.assert_within_bound(fp8jax.dot(a, b, dimension_numbers=BATCHED_NT), a, b, BATCHED_NT)
  assert_scaled_within_bound(fp8jax.scaled_matmul(a, b), a, b, BATCHED_NT)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e2m1fn"])
def test_scaled_matmul_of_mx_operands_is_within_its_bound(fmt):
  def mx(seed):
    return fp8jax.quantize(ref.gaussian(MX_SHAPE, seed, jnp.bfloat16), fmt, scaling="mx",
                           scale_rounding="rceil", overflow="satfinite")
  a, b = mx(8), mx(9)
  out = fp8jax.scaled_matmul(a, b)
  assert out.shape == (3, 40, 40) and out.dtype == jnp.float32
  assert_scaled_within_bound(out, a, b, BATCHED_NT)
  ref.assert_within_bound(fp8jax.dot(a, b, dimension_numbers=BATCHED_NT), a, b, BATCHED_NT)
  half = fp8jax.scaled_matmul(a, b, preferred_element_type=jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(half), np.asarray(out.astype(jnp.bfloat16)))


def test_scaled_matmul_pads_a_ragged_contraction_and_repeats_tile_scales():
  a = _nvfp4(ref.gaussian(SHAPE, 10, jnp.bfloat16), "te")
  b = _nvfp4(ref.gaussian(SHAPE, 11, jnp.bfloat16), "te", block_size=(16, 16))
  assert_scaled_within_bound(fp8jax.scaled_matmul(a, b), a, b, NT)
  v, s, t = fp8jax.scaled_matmul_operands(b)
  assert v.shape == (1, 45, 208) and v.dtype == jnp.float4_e2m1fn
  assert s.shape == (1, 45, 13) and s.dtype == jnp.float8_e4m3fn
  assert t.shape == (1,) and t.dtype == jnp.float32
  codes = jax.lax.bitcast_convert_type(s, jnp.uint8)[0]
  np.testing.assert_array_equal(np.asarray(codes), np.repeat(np.asarray(b.scale), 16, 0)[:45])


def test_operands_are_views_of_the_codes_and_scales():
  q = fp8jax.quantize(ref.gaussian((2, 4, 64), 12), "e4m3fn", scaling="mx")
  v, s, t = fp8jax.scaled_matmul_operands(q)
  assert t is None and v.shape == (2, 4, 64) and s.dtype == jnp.float8_e8m0fnu
  np.testing.assert_array_equal(np.asarray(fp8jax.from_float8(v)), np.asarray(q.bits))
  np.testing.assert_array_equal(np.asarray(jax.lax.bitcast_convert_type(s, jnp.uint8)),
                                np.asarray(q.scale))
  q4 = _nvfp4(ref.gaussian((4, 64), 13), "torchao")
  v4, _, _ = fp8jax.scaled_matmul_operands(q4)
  np.testing.assert_array_equal(np.asarray(v4.astype(jnp.float32))[0],
                                np.asarray(fp8jax.decode(q4.bits, "e2m1fn", jnp.float32)))


def test_scaled_matmul_lowers_to_the_cudnn_call_on_cuda_and_scaled_dot_elsewhere():
  a = _nvfp4(jnp.ones((4, 64)), "te")
  b = _nvfp4(jnp.ones((8, 64)), "te")
  f = jax.jit(lambda a, b: fp8jax.scaled_matmul(a, b))
  cuda = export.export(f, platforms=["cuda"], disabled_checks=[
      export.DisabledSafetyCheck.custom_call("__op$block_scaled_dot")])(a, b).mlir_module()
  call = [line for line in cuda.splitlines() if "__op$block_scaled_dot" in line]
  assert call and "f4E2M1FN" in call[0] and "f8E4M3FN" in call[0]
  cpu = export.export(f, platforms=["cpu"])(a, b).mlir_module()
  assert "xla.scaled_dot" in cpu and "@__op$block_scaled_dot" not in cpu


@pytest.mark.parametrize("call,error,match", [
    (lambda x: fp8jax.scaled_matmul(fp8jax.quantize(x, "e4m3fn", scaling="axis"),
                                    fp8jax.quantize(x, "e4m3fn", scaling="mx")),
     ValueError, "must be scaled with scaling='mx' or 'nvfp4'"),
    (lambda x: fp8jax.scaled_matmul(fp8jax.quantize(x, "e2m3fn", scaling="mx"),
                                    fp8jax.quantize(x, "e2m3fn", scaling="mx")),
     ValueError, "takes elements e4m3fn, e5m2, e2m1fn"),
    (lambda x: fp8jax.scaled_matmul(fp8jax.quantize(x, "e4m3fn", scaling="mx", axis=0),
                                    fp8jax.quantize(x, "e4m3fn", scaling="mx")),
     ValueError, "in blocks along its last axis"),
    (lambda x: fp8jax.scaled_matmul(fp8jax.quantize(x, "e2m1fn", scaling="mx"),
                                    _nvfp4(x, "te")), ValueError, "must be scaled alike"),
    (lambda x: fp8jax.scaled_matmul(fp8jax.quantize(x, "e4m3fn", scaling="mx"),
                                    fp8jax.quantize(x[:, :32], "e4m3fn", scaling="mx")),
     ValueError, "the same B and K"),
    (lambda x: fp8jax.scaled_matmul_operands(x), TypeError, "q must be a QArray"),
])
def test_bad_operands_are_named_errors(call, error, match):
  with pytest.raises(error, match=match):
    call(jnp.ones((32, 64), jnp.float32))
