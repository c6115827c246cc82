"""`dot` on quantized arrays, beyond the layout pairs of test_dot.py: formats, FP4 packing,
dimension numbers, block sizes that differ along K, zeros, exact cases, narrow outputs.

Same tolerance: the float32 accumulation bound of tests/dot_reference.py.
"""

from __future__ import annotations

from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import dot_reference as ref
from tests.dot_reference import MATMUL, gaussian as _data


@pytest.mark.parametrize("fa,fb,layout", [
    ("e5m2", "e5m2", "tensor"),
    ("e4m3fn", "e5m2", "axis"),  # forward weights x backward gradients
    ("e4m3fnuz", "e5m2fnuz", "tensor"),
    ("e3m4", "e4m3", "block"),
    ("e2m1fn", "e2m1fn", "mx"),  # FP4: decoded, not viewed
    ("e3m2fn", "e2m3fn", "mx"),  # FP6
    ("e4m3fn", "e5m2", "mx"),
])
def test_dot_across_formats(fa, fb, layout):
  opts = {"tensor": ({}, {}), "axis": (dict(scaling="axis"), dict(scaling="axis", axis=0)),
          "block": (dict(scaling="block", block_size=32),
                    dict(scaling="block", block_size=64, axis=0)),
          "mx": (dict(scaling="mx"), dict(scaling="mx", axis=0))}[layout]
  a = fp8jax.quantize(_data((40, 100), 5), fa, **opts[0])
  b = fp8jax.quantize(_data((100, 24), 6), fb, **opts[1])
  ref.assert_within_bound(fp8jax.dot(a, b), a, b, MATMUL)


def test_packed_fp4_operands():
  a = fp8jax.quantize(_data((9, 70), 7), "e2m1fn", scaling="mx", pack=True)
  b = fp8jax.quantize(_data((70, 11), 8).T, "e2m1fn", scaling="mx", pack=True)  # [N, K]
  dims = (((1,), (1,)), ((), ()))
  ref.assert_within_bound(fp8jax.dot(a, b, dimension_numbers=dims), a, b, dims)


@pytest.mark.parametrize("case", ["weight_nk", "batched", "two_contracted", "batch_blocks"])
def test_dot_general_dimension_numbers(case):
  if case == "weight_nk":  # activations 1x128, weights [N, K] in 128x128 tiles
    a = fp8jax.quantize(_data((50, 300), 9), "e4m3fn", scaling="block", block_size=128)
    b = fp8jax.quantize(_data((70, 300), 10), "e4m3fn", scaling="block", block_size=(128, 128))
    dims = (((1,), (1,)), ((), ()))
  elif case == "batched":  # [B, M, K] x [B, K, N], blocks along K, batch scales differ
    a = fp8jax.quantize(_data((3, 20, 200), 11), "e4m3fn", scaling="block", block_size=64)
    b = fp8jax.quantize(_data((3, 200, 30), 12), "e4m3fn", scaling="mx", axis=1)
    dims = (((2,), (1,)), ((0,), (0,)))
  elif case == "two_contracted":  # tiles over two contracted axes: applied inside
    a = fp8jax.quantize(_data((6, 40, 50), 13), "e4m3fn", scaling="block", block_size=(16, 16))
    b = fp8jax.quantize(_data((50, 40, 7), 14), "e4m3fn", scaling="block", block_size=32,
                        axis=0)
    dims = (((1, 2), (1, 0)), ((), ()))
  else:  # blocked batch axis on a, per-axis free scales on b
    a = fp8jax.quantize(_data((5, 12, 64), 15), "e4m3fn", scaling="block", block_size=(2, 32),
                        axis=(0, 2))
    b = fp8jax.quantize(_data((64, 5, 9), 16), "e4m3fn", scaling="axis", axis=0)
    dims = (((2,), (0,)), ((0,), (1,)))
  out = fp8jax.dot(a, b, dimension_numbers=dims)
  ref.assert_within_bound(out, a, b, dims)


@pytest.mark.parametrize("ba,bb", [(128, 32), (32, 128), (128, 96), (48, 80)])
def test_block_sizes_that_differ_along_k(ba, bb):
  """Nested sizes split at the smaller one; others dequantize b (both correct)."""
  a = fp8jax.quantize(_data((33, 500), 17), "e4m3fn", scaling="block", block_size=ba)
  b = fp8jax.quantize(_data((500, 21), 18), "e4m3fn", scaling="block", block_size=bb, axis=0)
  ref.assert_within_bound(fp8jax.dot(a, b), a, b, MATMUL)


def test_zeros_and_a_zero_block_are_exact():
  x = np.array(_data((8, 96), 19))
  x[:, 32:64] = 0  # one zero MX / 32-block per row: scale 1
  x[3] = 0  # a zero row
  a = fp8jax.quantize(jnp.asarray(x), "e4m3fn", scaling="mx")
  b = fp8jax.quantize(jnp.zeros((96, 5)), "e4m3fn", scaling="mx", axis=0)
  np.testing.assert_array_equal(np.asarray(fp8jax.dot(a, b)), 0.0)
  w = jnp.asarray(np.random.default_rng(20).integers(-3, 4, (96, 5)), jnp.float32)
  b = fp8jax.quantize(w, "e4m3fn", scaling="block", block_size=32, axis=0)
  out = fp8jax.dot(a, b)
  ref.assert_within_bound(out, a, b, MATMUL)
  np.testing.assert_array_equal(np.asarray(out[3]), 0.0)


def test_small_integers_multiply_exactly():
  # Codes, scales and every partial sum are exact: the result must be too.
  x = jnp.asarray(np.random.default_rng(21).integers(-8, 9, (12, 40)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(22).integers(-8, 9, (40, 6)), jnp.float32)
  a = fp8jax.quantize(x, "e4m3fn", scaling=1.0)
  b = fp8jax.quantize(y, "e4m3fn", scaling=0.5)
  np.testing.assert_array_equal(np.asarray(fp8jax.matmul(a, b)), np.asarray(x @ y))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_output_is_the_float32_result_rounded_once(dtype):
  a = fp8jax.quantize(_data((30, 200), 23), "e4m3fn", scaling="block", block_size=128)
  b = fp8jax.quantize(_data((200, 20), 24), "e4m3fn", scaling="axis", axis=0)
  out = fp8jax.dot(a, b, preferred_element_type=dtype)
  assert out.dtype == dtype
  u = 2.0**-8 if dtype == jnp.bfloat16 else 2.0**-11
  ref.assert_within_bound(out, a, b, MATMUL, extra_rel=u)


def test_plain_arrays_on_both_sides_are_a_float32_dot():
  x, y = _data((10, 20), 31), _data((20, 3), 32)
  want = np.asarray(lax.dot(x, y, precision=lax.Precision.HIGHEST))
  np.testing.assert_array_equal(np.asarray(fp8jax.matmul(x, y)), want)
