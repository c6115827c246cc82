"""QuantSpec: the one description of how to quantize, and the one scale-shape rule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax
from fp8jax import MX, NVFP4, Axis, Block, QuantSpec, Static, Tensor

SHAPES = [(), (5,), (0,), (3, 0), (4, 6), (7, 130), (3, 5, 33), (2, 0, 40), (129, 257)]
GRANULARITIES = [
    Tensor(), Axis(-1), Axis(0), Block((4,)), Block((128,)), Block((2, 3)), Block((128, 128)),
    Block((5,), axes=(0,)), Block((3, 2), axes=(-1, -2)), MX(), MX(axis=0),
]


def _applies(g, shape) -> bool:
  nd = len(shape)
  if isinstance(g, (Axis, MX)):
    return nd > 0 and -nd <= g.axis < nd
  if isinstance(g, Block):
    axes = g.axes if g.axes is not None else tuple(range(-len(g.sizes), 0))
    return nd >= len(g.sizes) and all(-nd <= a < nd for a in axes)
  return True


def _input(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32) * np.exp(rng.uniform(-8, 8, shape))
  return jnp.asarray(x, jnp.bfloat16)


@pytest.mark.parametrize("g,shape", [(g, s) for g in GRANULARITIES for s in SHAPES
                                     if _applies(g, s)], ids=str)
def test_scale_shape_is_what_quantize_returns(g, shape):
  spec = QuantSpec("e4m3fn", g)
  q = fp8jax.quantize(_input(shape), spec)
  assert q.scale.shape == spec.scale_shape(shape)
  assert q.bits.shape == shape
  assert q.spec.scale_shape(shape) == spec.scale_shape(shape)
  assert np.prod(spec.grid_shape(shape)) == q.scale.size


@pytest.mark.parametrize("shape,scale_shape", [
    ((), ()), ((4, 6), ()), ((4, 6), (1, 1)), ((4, 6), (4, 1)), ((4, 6), (1, 6)),
    ((3, 0), ()), ((3, 0), (3, 1)),
], ids=str)
def test_static_scale_shape(shape, scale_shape):
  scale = np.full(scale_shape, 0.5, np.float32)
  spec = QuantSpec("e4m3fn", Static(scale_shape))
  q = fp8jax.quantize(_input(shape), spec, scale=scale)
  assert q.scale.shape == spec.scale_shape(shape) == scale_shape


KEYWORD_FORMS = [
    ({"scaling": "tensor"}, Tensor()),
    ({"scaling": "axis", "axis": 0}, Axis(0)),
    ({"scaling": "block", "block_size": 32}, Block((32,))),
    ({"scaling": "block", "block_size": (16, 8)}, Block((16, 8))),
    ({"scaling": "block", "block_size": 8, "axis": 0}, Block((8,), axes=(0,))),
    ({"scaling": "mx"}, MX()),
]


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e2m1fn"])
@pytest.mark.parametrize("kwargs,g", KEYWORD_FORMS, ids=lambda v: repr(v))
def test_keyword_form_and_spec_give_the_same_bits(fmt, kwargs, g):
  x = _input((48, 40), seed=1)
  a = fp8jax.quantize(x, fmt, **kwargs, margin=1 if kwargs["scaling"] != "mx" else 0)
  spec = QuantSpec(fmt, g, margin=1 if kwargs["scaling"] != "mx" else 0)
  b = fp8jax.quantize(x, spec)
  np.testing.assert_array_equal(a.bits, b.bits)
  np.testing.assert_array_equal(a.scale, b.scale)
  assert a.spec == b.spec
  np.testing.assert_array_equal(fp8jax.dequantize(a, jnp.float32),
                                fp8jax.dequantize(b, jnp.float32))


def test_stochastic_spec_matches_keyword_form():
  x, key = _input((8, 64), seed=2), jax.random.key(3)
  a = fp8jax.quantize(x, "e4m3fn", scaling="block", block_size=16, rounding="stochastic",
                      key=key)
  b = fp8jax.quantize(x, QuantSpec("e4m3fn", Block((16,)), rounding="stochastic"), key=key)
  np.testing.assert_array_equal(a.bits, b.bits)


def test_specs_are_hashable_values_and_jit_static():
  a = QuantSpec("e4m3fn", Block([128, 128]))
  b = QuantSpec(fp8jax.FORMATS["e4m3fn"], Block((128, 128)))
  assert a == b and hash(a) == hash(b)
  assert a.format is fp8jax.FORMATS["e4m3fn"]
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.margin = 1  # type: ignore[misc]
  f = jax.jit(lambda x, s: fp8jax.quantize(x, s).bits, static_argnums=1)
  np.testing.assert_array_equal(f(jnp.ones((4, 4)), QuantSpec("e5m2")),
                                fp8jax.quantize(jnp.ones((4, 4)), "e5m2").bits)


@pytest.mark.parametrize("text,g", [
    ("tensor", Tensor()), ("axis", Axis(-1)), ("channel", Axis(-1)),
    ("block:128", Block((128,))), ("block:128x64", Block((128, 64))), ("mx", MX()),
    ("mx:rceil", MX(rule="rceil")), ("nvfp4", NVFP4("compressed-tensors")),
    ("nvfp4:te", NVFP4("te")), ("nvfp4:torchao:16x16", NVFP4("torchao", block=(16, 16))),
])
def test_parse_and_spelling(text, g):
  fmt = "e2m1fn" if text.startswith("nvfp4") else "e4m3fn"
  spec = QuantSpec.parse(fmt, text)
  assert spec.granularity == g
  assert QuantSpec.parse(fmt, spec.spelling()) == spec
  spelled = {"channel": "axis", "nvfp4": "nvfp4:compressed-tensors"}
  assert spec.spelling() == spelled.get(text, text)


@pytest.mark.parametrize("build,error,match", [
    (lambda: QuantSpec("e8m0fnu"), ValueError, "unsigned"),
    (lambda: QuantSpec("e4m3", MX()), ValueError, "MX element format"),
    (lambda: QuantSpec("e4m3fn", MX(), pow2=True), ValueError, "pow2 does not apply"),
    (lambda: QuantSpec("e4m3fn", Static(()), pow2=True), ValueError, "static scale"),
    (lambda: QuantSpec("e4m3fn", Block((0,))), ValueError, "block_size"),
    (lambda: QuantSpec("e4m3fn", Block((2, 2), axes=(0,))), ValueError, "names 1 axes"),
    (lambda: QuantSpec("e4m3fn", "tensor"), TypeError, "granularity"),
    (lambda: QuantSpec("e4m3fn", rounding="up"), ValueError, "rounding"),
    (lambda: QuantSpec("e4m3fn", overflow="wrap"), ValueError, "overflow"),
    (lambda: QuantSpec("e4m3fn", margin=-1), ValueError, "margin"),
    (lambda: QuantSpec("e4m3fn", pack=True), ValueError, "pack"),
    (lambda: QuantSpec("e4m3fn", MX(rule="up")), ValueError, "MX rule"),
    (lambda: QuantSpec.parse("e4m3fn", "block:0"), ValueError, "scaling must be"),
    (lambda: Axis(1.5), TypeError, "axis must be an int"),
])
def test_bad_specs_are_named_errors(build, error, match):
  with pytest.raises(error, match=match):
    build()


def test_spec_and_keyword_options_do_not_mix():
  with pytest.raises(ValueError, match="not both"):
    fp8jax.quantize(jnp.ones(4), QuantSpec("e4m3fn"), scaling="axis")
  with pytest.raises(ValueError, match="needs scale="):
    fp8jax.quantize(jnp.ones(4), QuantSpec("e4m3fn", Static(())))
  with pytest.raises(ValueError, match="applies to a Static spec"):
    fp8jax.quantize(jnp.ones(4), QuantSpec("e4m3fn"), scale=2.0)
  with pytest.raises(ValueError, match="does not match"):
    fp8jax.quantize(jnp.ones(4), QuantSpec("e4m3fn", Static(())), scale=np.ones(4, np.float32))
  with pytest.raises(ValueError, match="out of range"):
    fp8jax.quantize(jnp.ones(4), QuantSpec("e4m3fn", Axis(3)))


def test_fake_quant_and_delayed_scaling_take_a_spec():
  x = _input((16, 32), seed=4)
  spec = QuantSpec("e5m2", Block((8,)))
  want = fp8jax.dequantize(fp8jax.quantize(x, spec), x.dtype)
  np.testing.assert_array_equal(fp8jax.fake_quant(x, spec), want)
  ds = fp8jax.DelayedScaling(history=2)
  state = ds.init(scale=0.25)
  q1, s1 = ds.quantize(x, state, QuantSpec("e5m2", overflow="satfinite"))
  q2, s2 = ds.quantize(x, state, "e5m2", overflow="satfinite")
  np.testing.assert_array_equal(q1.bits, q2.bits)
  np.testing.assert_array_equal(s1.scale, s2.scale)
  with pytest.raises(ValueError, match="per tensor"):
    ds.quantize(x, state, spec)


def test_a_block_longer_than_its_axis_is_clipped_not_padded():
  # 2^40 elements of padding would need terabytes; clipped, it is one block per axis.
  x = _input((4, 6), seed=5)
  huge = fp8jax.quantize(x, "e4m3fn", scaling="block", block_size=(1 << 20, 1 << 20))
  whole = fp8jax.quantize(x, "e4m3fn", scaling="block", block_size=(4, 6))
  np.testing.assert_array_equal(huge.bits, whole.bits)
  np.testing.assert_array_equal(huge.scale, whole.scale)
  assert huge.scale.shape == (1, 1)
  np.testing.assert_array_equal(fp8jax.dequantize(huge, jnp.float32),
                                fp8jax.dequantize(whole, jnp.float32))
  lowered = jax.jit(lambda v: fp8jax.quantize(v, "e4m3fn", scaling="block",
                                              block_size=4_000_000_000).bits).lower(x)
  assert "4000000000" not in lowered.as_text()
