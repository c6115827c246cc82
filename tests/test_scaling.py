"""quantize / dequantize: bit-exact against a slow NumPy reference, per granularity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from fp8jax.core import codec
from fp8jax.quant import scaled, spec
from tests import scaling_reference as ref
from tests.conftest import DTYPES, assert_codes_equal, dtype_id

F = fp8jax.FORMATS
FORMATS = [f for f in F.values() if f.signed]  # every element format
MX_FORMATS = [F[n] for n in spec.MX_ELEMENTS]

LAYOUTS = [  # (id, quantize kwargs, reference arguments)
    ("tensor", dict(scaling="tensor"), dict(granularity="tensor")),
    ("tensor-pow2-margin", dict(scaling="tensor", pow2=True, margin=2),
     dict(granularity="tensor", pow2=True, margin=2)),
    ("axis-1", dict(scaling="axis", axis=-1), dict(granularity="axis", axes=(-1,))),
    ("axis0", dict(scaling="axis", axis=0), dict(granularity="axis", axes=(0,))),
    ("block32", dict(scaling="block", block_size=32), dict(granularity="block", axes=(-1,),
                                                           block=(32,))),
    ("block7-axis0", dict(scaling="block", block_size=7, axis=0),
     dict(granularity="block", axes=(0,), block=(7,))),
    ("tile16x24", dict(scaling="block", block_size=(16, 24)),
     dict(granularity="block", axes=(-2, -1), block=(16, 24))),
    ("tile5x3-pow2", dict(scaling="block", block_size=(5, 3), pow2=True),
     dict(granularity="block", axes=(-2, -1), block=(5, 3), pow2=True)),
]


def wide_range(shape, dtype, seed) -> np.ndarray:
  """Random values over a wide dynamic range, with zeros, subnormals,
  huge values, infinities and NaNs."""
  rng = np.random.default_rng(seed)
  info = ml_dtypes.finfo(dtype)
  lo = np.log2(float(info.smallest_subnormal))
  hi = np.log2(float(info.max))
  mags = np.exp2(rng.uniform(lo, hi, shape))
  # Most blocks hold values of a few binades, as real tensors do.
  mags = np.where(rng.random(shape) < 0.8, rng.lognormal(0, 2, shape), mags)
  x = (mags * rng.choice([-1.0, 1.0], shape)).astype(dtype)
  flat = x.reshape(-1)
  picks = rng.choice(flat.size, size=min(flat.size, 40), replace=False)
  specials = np.array([0, -0.0, np.inf, -np.inf, np.nan, float(info.smallest_subnormal),
                       -float(info.smallest_subnormal), float(info.max)], np.float64)
  flat[picks] = specials[rng.integers(0, specials.size, picks.size)].astype(dtype)
  return x


def _check(x, fmt, kwargs, ref_args, dtype_out, overflow="saturate"):
  q = fp8jax.quantize(jnp.asarray(x), fmt, overflow=overflow, **kwargs)
  codes, scales, deq = ref.quantize(x, fmt, overflow=overflow, **ref_args)
  assert_codes_equal(q.bits, codes, fmt, x)
  want_scale = scales.reshape(()) if ref_args["granularity"] == "tensor" else scales
  np.testing.assert_array_equal(np.asarray(q.scale), want_scale)
  got = np.asarray(fp8jax.dequantize(q, dtype_out))
  want = deq.astype(dtype_out)
  nan = np.isnan(want.astype(np.float32))
  np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
  np.testing.assert_array_equal(got[~nan].view(np.uint8), want[~nan].view(np.uint8))
  return q


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda case: case[0])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_matches_numpy_reference(layout, fmt, dtype):
  _, kwargs, ref_args = layout
  shape = (64, 96) if dtype == jnp.float32 else (37, 70)  # ragged edges for 16-bit inputs
  _check(wide_range(shape, dtype, 0), fmt, kwargs, ref_args, dtype)


@pytest.mark.parametrize("overflow", ["satfinite", "ieee"])
def test_overflow_policies_apply_to_non_finite_inputs(overflow):
  x = wide_range((16, 64), np.float32, 5)
  _check(x, F["e5m2"], dict(scaling="block", block_size=32),
         dict(granularity="block", axes=(-1,), block=(32,)), np.float32, overflow)


def test_static_scale_matches_reference():
  x = wide_range((8, 40), ml_dtypes.bfloat16, 9)
  s = np.float32(0.37)
  q = fp8jax.quantize(jnp.asarray(x), "e4m3fn", scaling=0.37)
  with np.errstate(over="ignore", invalid="ignore"):
    codes = ref.encode_block(x.astype(np.float32) / s, F["e4m3fn"], "saturate")
  assert_codes_equal(q.bits, codes, F["e4m3fn"], x)
  per_row = np.linspace(0.5, 4, 8, dtype=np.float32).reshape(8, 1)
  q = fp8jax.quantize(jnp.asarray(x), "e4m3fn", scaling=per_row)
  with np.errstate(over="ignore", invalid="ignore"):
    codes = ref.encode_block(x.astype(np.float32) / per_row, F["e4m3fn"], "saturate")
  assert_codes_equal(q.bits, codes, F["e4m3fn"], x)
  assert q.scale.shape == (8, 1)


@pytest.mark.parametrize("fmt", MX_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_mx_matches_the_spec_transcription(fmt, dtype):
  for seed, (shape, axis) in enumerate([((12, 96), -1), ((70, 9), 0), ((3, 4, 33), -1)]):
    x = wide_range(shape, dtype, 100 + seed)
    q = fp8jax.quantize(jnp.asarray(x), fmt, scaling="mx", axis=axis)
    codes, scales, deq = ref.quantize(x, fmt, "mx", axes=(axis,), block=(32,))
    assert q.scale.dtype == jnp.uint8
    want_codes = (np.log2(scales).astype(np.int64) + 127).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(q.scale), want_codes)
    assert_codes_equal(q.bits, codes, fmt, x)
    got = np.asarray(fp8jax.dequantize(q, jnp.float32))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(deq))
    np.testing.assert_array_equal(got[~np.isnan(deq)], deq[~np.isnan(deq)])


@pytest.mark.parametrize("shape", [(4, 64), (3, 33), (5,), (2, 3, 1)])
def test_fp4_packing_round_trips(shape):
  x = wide_range(shape, np.float32, 7)
  plain = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="mx")
  packed = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="mx", pack=True)
  assert packed.bits.shape == shape[:-1] + ((shape[-1] + 1) // 2,)
  assert packed.shape == shape and packed.nbytes < plain.nbytes or shape[-1] == 1
  np.testing.assert_array_equal(np.asarray(fp8jax.unpack_fp4(packed.bits, shape[-1])),
                                np.asarray(plain.bits))
  lo = np.asarray(packed.bits) & 0xF
  np.testing.assert_array_equal(lo, np.asarray(plain.bits)[..., ::2])
  np.testing.assert_array_equal(np.asarray(fp8jax.dequantize(packed, jnp.float32)),
                                np.asarray(fp8jax.dequantize(plain, jnp.float32)))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda case: case[0])
@pytest.mark.parametrize("fmt", [F["e4m3fn"], F["e5m2"]], ids=lambda f: f.name)
def test_relative_error_bound(layout, fmt):
  """|x - x̂| <= (eps/2)|x| + scale * min_subnormal / 2 for in-range values, plus
  float32's own rounding of x/scale and of the product (2^-24 each)."""
  _, kwargs, ref_args = layout  # margin and pow2 only add headroom: the bound still holds
  rng = np.random.default_rng(3)
  for trial in range(20):
    x = (rng.standard_t(3, (48, 80)) * np.exp2(rng.uniform(-20, 20))).astype(np.float32)
    q = fp8jax.quantize(jnp.asarray(x), fmt, **kwargs)
    got = np.asarray(fp8jax.dequantize(q, jnp.float32)).astype(np.float64)
    _, scales, _ = ref.quantize(x, fmt, **ref_args)
    s = _expand(scales, x.shape, ref_args)
    xs = x.astype(np.float64)
    bound = (fmt.eps / 2) * np.abs(xs) * (1 + 2.0**-22) + s * fmt.min_subnormal / 2 \
        + np.abs(xs) * 2.0**-23
    assert np.all(np.abs(got - xs) <= bound), trial


def _expand(scales, shape, ref_args):
  g = ref_args["granularity"]
  if g == "tensor":
    return np.full(shape, scales.reshape(()), np.float64)
  nd = len(shape)
  if g == "axis":
    return np.broadcast_to(scales, shape).astype(np.float64)
  out = scales.astype(np.float64)
  for a, b in zip(ref_args["axes"], ref_args["block"], strict=False):
    out = np.repeat(out, b, axis=a % nd)
  return out[tuple(slice(0, n) for n in shape)]


def test_scale_shapes_follow_checkpoint_layouts():
  w = jnp.ones((300, 260), jnp.bfloat16)
  assert fp8jax.quantize(w, scaling="tensor").scale.shape == ()
  assert fp8jax.quantize(w, scaling="axis").scale.shape == (300, 1)
  assert fp8jax.quantize(w, scaling="block", block_size=(128, 128)).scale.shape == (3, 3)
  assert fp8jax.quantize(w, scaling="block", block_size=128).scale.shape == (300, 3)
  assert fp8jax.quantize(w, scaling="mx").scale.shape == (300, 9)
  q = fp8jax.quantize(w, scaling="block", block_size=(128, 128))
  assert q.shape == (300, 260) and q.dtype == jnp.bfloat16
  assert q.nbytes == 300 * 260 + 9 * 4


def test_all_zero_blocks_get_scale_one_and_nan_blocks_ignore_nan():
  x = np.zeros((2, 64), np.float32)
  x[1, :32] = [np.nan] + [2.0] * 31
  q = fp8jax.quantize(jnp.asarray(x), "e4m3fn", scaling="block", block_size=32)
  np.testing.assert_array_equal(np.asarray(q.scale), [[1, 1], [np.float32(2) / np.float32(448), 1]])
  q = fp8jax.quantize(jnp.asarray(x), "e4m3fn", scaling="mx")
  np.testing.assert_array_equal(np.asarray(q.scale), [[127, 127], [127 + 1 - 8, 127]])


@pytest.mark.parametrize("layout", LAYOUTS + [("mx", dict(scaling="mx"), None)],
                         ids=lambda case: case[0])
def test_jit_and_vmap_match_eager(layout):
  _, kwargs, _ = layout
  x = jnp.asarray(wide_range((4, 30, 50), np.float32, 11))
  eager = [fp8jax.quantize(x[i], "e4m3fn", **kwargs) for i in range(4)]
  jitted = jax.jit(lambda a: fp8jax.quantize(a, "e4m3fn", **kwargs))(x[0])
  np.testing.assert_array_equal(np.asarray(jitted.bits), np.asarray(eager[0].bits))
  np.testing.assert_array_equal(np.asarray(jitted.scale), np.asarray(eager[0].scale))
  mapped = jax.vmap(lambda a: fp8jax.quantize(a, "e4m3fn", **kwargs))(x)
  for i in range(4):
    np.testing.assert_array_equal(np.asarray(mapped.bits[i]), np.asarray(eager[i].bits))
    np.testing.assert_array_equal(np.asarray(mapped.scale[i]), np.asarray(eager[i].scale))
  # A batched QArray dequantizes outside vmap too.
  back = np.asarray(fp8jax.dequantize(mapped, jnp.float32))
  for i in range(4):
    np.testing.assert_array_equal(back[i], np.asarray(fp8jax.dequantize(eager[i], jnp.float32)))


def test_qarray_is_a_pytree():
  q = fp8jax.quantize(jnp.ones((4, 8)), scaling="axis")
  leaves, tree = jax.tree_util.tree_flatten(q)
  assert len(leaves) == 2  # bits and scale; nan_count is None for e4m3fn
  again = jax.tree_util.tree_unflatten(tree, leaves)
  assert again.granularity == "axis" and again.axes == (-1,)
  out = jax.jit(lambda q: fp8jax.dequantize(q, jnp.float32))(q)
  np.testing.assert_array_equal(np.asarray(out), 1.0)


def test_stochastic_quantize_is_reproducible_and_unbiased():
  x = jnp.full((20_000,), 1 + 1 / 32, jnp.float32).at[0].set(448.0)  # scale exactly 1
  q1 = fp8jax.quantize(x, "e4m3fn", rounding="stochastic", key=jax.random.key(1))
  q2 = fp8jax.quantize(x, "e4m3fn", rounding="stochastic", key=jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(q1.bits), np.asarray(q2.bits))
  vals = np.asarray(fp8jax.dequantize(q1, jnp.float32))[1:]
  se = 0.125 * np.sqrt(0.25 * 0.75 / vals.size)
  assert abs(vals.mean() - (1 + 1 / 32)) <= 5 * se


@pytest.mark.parametrize("call,exc,match", [
    (lambda x: fp8jax.quantize(x, scaling="block", block_size=0), ValueError,
     r"block_size must be a positive int"),
    (lambda x: fp8jax.quantize(x, scaling="block", block_size=-4), ValueError,
     r"block_size must be a positive int"),
    (lambda x: fp8jax.quantize(x, scaling="block"), ValueError, r"block_size must be"),
    (lambda x: fp8jax.quantize(x, scaling="axis", axis=2), ValueError,
     r"axis 2 is out of range for a 2-D x"),
    (lambda x: fp8jax.quantize(x, scaling="mx", axis=-3), ValueError, r"axis -3 is out of range"),
    (lambda x: fp8jax.quantize(x, scaling="block", block_size=(4, 4), axis=0), ValueError,
     r"block_size \(4, 4\) tiles 2 axes; axis must be a tuple of 2"),
    (lambda x: fp8jax.quantize(x, scaling="block", block_size=(4, 4), axis=(0,)), ValueError,
     r"has 2 entries but axis \(0,\) names 1"),
    (lambda x: fp8jax.quantize(x, scaling="block", block_size=(2, 2, 2)), ValueError,
     r"axis -3 is out of range"),
    (lambda x: fp8jax.quantize(x, "e4m3fnuz", scaling="mx"), ValueError,
     r"scaling='mx' needs an MX element format, one of e4m3fn, e5m2, e2m3fn, e3m2fn, e2m1fn"),
    (lambda x: fp8jax.quantize(x, "e4m3fn", scaling="mx", block_size=16), ValueError,
     r"blocks of 32"),
    (lambda x: fp8jax.quantize(x, scaling=-1.0), ValueError, r"scaling must be positive"),
    (lambda x: fp8jax.quantize(x, scaling=float("inf")), ValueError,
     r"scaling must be finite and nonzero"),
    (lambda x: fp8jax.quantize(x, scaling=0.0), ValueError, r"scaling must be finite and nonzero"),
    (lambda x: fp8jax.quantize(x, scaling=np.array([1.0, np.nan])), ValueError,
     r"scaling must be finite"),
    (lambda x: fp8jax.quantize(x, scaling=np.ones(3)), ValueError,
     r"scaling of shape \(3,\) must broadcast to the input.s shape \(4, 6\)"),
    (lambda x: fp8jax.quantize(x, scaling="row"), ValueError, r"scaling must be one of"),
    (lambda x: fp8jax.quantize(x, margin=-1), ValueError, r"margin must be a non-negative int"),
    (lambda x: fp8jax.quantize(x, "e4m3fn", pack=True), ValueError, r"pack=True packs 4-bit"),
    (lambda x: fp8jax.quantize(x, "e8m0fnu"), ValueError,
     r"fmt 'e8m0fnu' is unsigned \(a scale format\); quantize needs a signed element format"),
    (lambda x: fp8jax.quantize(x.astype(jnp.int32)), TypeError, r"x must be bfloat16"),
    (lambda x: fp8jax.dequantize(x), TypeError, r"q must be a QArray"),
    (lambda x: fp8jax.DelayedScaling(history=0), ValueError, r"history must be a positive int"),
    (lambda x: fp8jax.DelayedScaling(amax_from="mean"), ValueError, r"amax_from must be one of"),
])
def test_bad_arguments(call, exc, match):
  with pytest.raises(exc, match=match):
    call(jnp.ones((4, 6), jnp.float32))


def test_nan_inputs_are_counted_for_formats_without_nan():
  x = jnp.asarray([1.0, jnp.nan, 2.0, jnp.nan, jnp.inf], jnp.float32)
  q = fp8jax.quantize(x, "e2m1fn", scaling="tensor")
  assert int(q.nan_count) == 2
  assert fp8jax.quantize(x, "e4m3fn").nan_count is None
  batched = jax.vmap(lambda r: fp8jax.quantize(r, "e3m2fn", scaling="mx"))(
      jnp.stack([x, x.at[0].set(jnp.nan)]))
  np.testing.assert_array_equal(np.asarray(batched.nan_count), [2, 3])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("shape", [(3, 1024), (2, 1 << 16), (5, 48), (1024,)])
def test_nan_count_counts_every_nan(dtype, shape):
  rng = np.random.default_rng(sum(shape))
  x = rng.standard_normal(shape).astype(np.float32)
  x[rng.random(shape) < 0.3] = np.nan
  x[..., :16] = -np.nan  # NaN of either sign, and a row full of them
  x = x.reshape(-1, shape[-1])
  x[0] = np.nan
  x = jnp.asarray(x.reshape(shape), dtype)
  q = fp8jax.quantize(x, "e2m1fn", scaling="axis")
  assert int(q.nan_count) == int(np.isnan(np.asarray(x, np.float32)).sum())


@pytest.mark.parametrize("kwargs,scale_shape", [
    (dict(scaling="tensor"), ()),
    (dict(scaling="axis"), (4, 1)),
    (dict(scaling="axis", axis=0), (1, 0)),
    (dict(scaling="block", block_size=128), (4, 0)),
    (dict(scaling="block", block_size=(2, 2)), (2, 0)),
    (dict(scaling="mx"), (4, 0)),
], ids=str)
def test_empty_arrays_quantize_to_empty_codes_and_unit_scales(kwargs, scale_shape):
  x = jnp.zeros((4, 0), jnp.bfloat16)
  q = fp8jax.quantize(x, "e4m3fn", **kwargs)
  assert q.bits.shape == (4, 0) and q.bits.dtype == jnp.uint8
  assert q.scale.shape == scale_shape
  if kwargs["scaling"] != "mx":
    assert np.all(np.asarray(q.scale) == 1)  # the scale of an all-zero group
  assert fp8jax.dequantize(q).shape == (4, 0)
  assert fp8jax.quantize(jnp.zeros((0,), jnp.float32)).scale.shape == ()


@pytest.mark.parametrize("overflow", ["saturate", "satfinite", "ieee"])
@pytest.mark.parametrize("fmt", [F["e4m3fn"], F["e5m2"], F["e2m1fn"], F["e4m3fnuz"]],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=dtype_id)
def test_large_per_tensor_casts_by_thresholds_match_the_kernel(dtype, fmt, overflow):
  # Large 16-bit inputs with one scale are encoded by counting thresholds;
  # every bit pattern (NaNs, infinities, subnormals) must give the kernel's
  # direct per-element division.
  patterns = np.arange(1 << 16, dtype=np.uint16)
  x = jnp.asarray(np.random.default_rng(0).permutation(np.tile(patterns, 4)).view(dtype))
  assert x.size >= scaled._ONE_SCALE_MIN_SIZE
  for q in (fp8jax.quantize(x, fmt, overflow=overflow),
            fp8jax.quantize(x, fmt, scaling=0.37, overflow=overflow)):
    want = codec.encode_array(x, fmt.bit_layout, rounding="nearest", overflow=overflow,
                                       scale=jnp.float32(q.scale), divide=True)
    np.testing.assert_array_equal(np.asarray(q.bits), np.asarray(want))
