"""`dot` / `matmul` on quantized arrays against `dequantize(a) · dequantize(b)` in float32.

The tolerance is the float32 accumulation bound of tests/dot_reference.py,
per output element: (γ_{K+3} + γ_{2K+3}) · Σ|â||b̂| (+ a flush-to-zero term).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from tests import dot_reference as ref
from tests.dot_reference import MATMUL, gaussian as _data

# Layouts of a [M, K] and of b [K, N], as quantize options (None: a plain array).
A_LAYOUTS = {
    "tensor": dict(scaling="tensor"),
    "row": dict(scaling="axis"),  # constant along K: pulled out
    "col": dict(scaling="axis", axis=0),  # per element along K: applied inside
    "block128": dict(scaling="block", block_size=128),  # 1x128 along K
    "tile128": dict(scaling="block", block_size=(128, 128)),
    "mx": dict(scaling="mx"),
    "bf16": None,
}
B_LAYOUTS = {
    "tensor": dict(scaling="tensor"),
    "col": dict(scaling="axis", axis=0),  # constant along K: pulled out
    "row": dict(scaling="axis"),  # per element along K: applied inside
    "block128": dict(scaling="block", block_size=128, axis=0),
    "tile128": dict(scaling="block", block_size=(128, 128)),
    "mx": dict(scaling="mx", axis=0),
    "f32": None,
}


def _operand(x, layout, fmt="e4m3fn", plain_dtype=jnp.float32):
  if layout is None:
    return x.astype(plain_dtype)
  return fp8jax.quantize(x, fmt, **layout)


@pytest.mark.parametrize("b_layout", list(B_LAYOUTS), ids=str)
@pytest.mark.parametrize("a_layout", list(A_LAYOUTS), ids=str)
def test_dot_of_every_layout_pair_is_within_the_accumulation_bound(a_layout, b_layout):
  m, k, n = 130, 300, 70  # none divides 128 or 32
  a = _operand(_data((m, k), 1), A_LAYOUTS[a_layout], plain_dtype=jnp.bfloat16)
  b = _operand(_data((k, n), 2), B_LAYOUTS[b_layout])
  out = fp8jax.dot(a, b)
  assert out.dtype == jnp.float32 and out.shape == (m, n)
  ref.assert_within_bound(out, a, b, MATMUL)


@pytest.mark.parametrize("layout,shape", [
    ("tensor", (1, 1, 1)), ("mx", (1, 1, 1)), ("block", (3, 33, 5)), ("tile", (3, 33, 5)),
    ("axis", (64, 257, 31)), ("mx", (64, 257, 31)), ("block", (64, 257, 31)),
    ("tile", (200, 96, 129)),
], ids=str)
def test_dot_on_shapes_that_do_not_divide_the_blocks(layout, shape):
  m, k, n = shape
  opts = {
      "tensor": (dict(scaling="tensor"), dict(scaling="tensor")),
      "axis": (dict(scaling="axis"), dict(scaling="axis", axis=0)),
      "block": (dict(scaling="block", block_size=128), dict(scaling="block", block_size=128,
                                                            axis=0)),
      "tile": (dict(scaling="block", block_size=(128, 128)),) * 2,
      "mx": (dict(scaling="mx"), dict(scaling="mx", axis=0)),
  }[layout]
  a = fp8jax.quantize(_data((m, k), 3), "e4m3fn", **opts[0])
  b = fp8jax.quantize(_data((k, n), 4), "e4m3fn", **opts[1])
  ref.assert_within_bound(fp8jax.matmul(a, b), a, b, MATMUL)


def test_dot_under_jit_takes_qarrays_as_pytrees():
  a = fp8jax.quantize(_data((16, 64), 25), "e4m3fn", scaling="mx")
  b = fp8jax.quantize(_data((64, 8), 26), "e4m3fn", scaling="axis", axis=0)
  np.testing.assert_array_equal(np.asarray(jax.jit(fp8jax.dot)(a, b)),
                                np.asarray(fp8jax.dot(a, b)))


def _stablehlo(a, b) -> str:
  return jax.jit(fp8jax.dot).lower(a, b).as_text()


def test_per_tensor_and_per_axis_dots_feed_float8_straight_into_dot_general():
  """The shape XLA's GPU compiler rewrites to its FP8 GEMM: float8 operands, float32 result,
  scales multiplied afterwards."""
  for opts_a, opts_b in [({}, {}), (dict(scaling="axis"), dict(scaling="axis", axis=0))]:
    a = fp8jax.quantize(_data((32, 64), 27), "e4m3fn", **opts_a)
    b = fp8jax.quantize(_data((64, 16), 28), "e5m2", **opts_b)
    text = _stablehlo(a, b)
    dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
    assert len(dots) == 1, dots
    assert "tensor<32x64xf8E4M3FN>, tensor<64x16xf8E5M2>) -> tensor<32x16xf32>" in dots[0], dots
    # The dot's result is multiplied once, by the scales' product.
    name = dots[0].split("=")[0].strip()
    uses = [line for line in text.splitlines() if re.search(rf"{re.escape(name)}\b", line)]
    assert len(uses) == 2 and "stablehlo.multiply" in uses[1], uses


def test_block_dot_splits_k_into_a_batch_of_float8_partials():
  a = fp8jax.quantize(_data((32, 256), 29), "e4m3fn", scaling="block", block_size=128)
  b = fp8jax.quantize(_data((256, 16), 30), "e4m3fn", scaling="block", block_size=(128, 128))
  dots = [line for line in _stablehlo(a, b).splitlines() if "stablehlo.dot_general" in line]
  assert len(dots) == 1, dots
  assert "tensor<32x2x128xf8E4M3FN>, tensor<2x128x16xf8E4M3FN>) -> tensor<2x32x16xf32>" in dots[0]


@pytest.mark.parametrize("call,error,match", [
    (lambda a, b: fp8jax.matmul(a, b.bits), TypeError, "b must be bfloat16"),
    (lambda a, b: fp8jax.matmul(a, jnp.ones((2, 3, 4))), ValueError, "matmul takes matrices"),
    (lambda a, b: fp8jax.dot(a, jnp.ones((5, 3))), ValueError, "contracting axes differ"),
    (lambda a, b: fp8jax.dot(a, b, dimension_numbers=(((2,), (0,)), ((), ()))), ValueError,
     "out of range"),
    (lambda a, b: fp8jax.dot(a, b, dimension_numbers=((1,), (0,))), ValueError,
     "dimension_numbers must be"),
    (lambda a, b: fp8jax.dot(a, b, preferred_element_type=jnp.int32), TypeError,
     "preferred_element_type must be"),
])
def test_errors_name_the_argument(call, error, match):
  a = fp8jax.quantize(jnp.ones((4, 8)), "e4m3fn")
  b = fp8jax.quantize(jnp.ones((8, 3)), "e4m3fn")
  with pytest.raises(error, match=match):
    call(a, b)


def _fp8_gpu() -> bool:
  gpus = [d for d in jax.devices() if d.platform == "gpu"]
  capability = getattr(gpus[0], "compute_capability", "0") if gpus else "0"
  return bool(gpus) and tuple(int(v) for v in str(capability).split(".")[:2]) >= (8, 9)


@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (sm_89 or later)")
def test_xla_compiles_per_tensor_dot_to_its_fp8_gemm_on_gpu():
  a = fp8jax.quantize(_data((256, 512), 33), "e4m3fn")
  b = fp8jax.quantize(_data((512, 128), 34), "e4m3fn")
  hlo = jax.jit(fp8jax.dot).lower(a, b).compile().as_text()
  # Only the lowering is checked here: Hopper's FP8 tensor cores accumulate with fewer
  # bits than float32, so the CPU bound above need not hold there.
  assert "__cublas$lt$matmul$f8" in hlo, hlo
