"""Checks on 8 host devices; run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (set before JAX starts)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

import fp8jax


@pytest.fixture(autouse=True)
def _eight_devices():
  # Checked per test, not at import: doctest collection imports every module.
  assert jax.device_count() == 8, "run with --xla_force_host_platform_device_count=8"


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")
MESHES = {  # mesh shape -> (axis names, partition specs to try)
    (8,): (("x",), [P("x", None), P(None, "x")]),
    (4, 2): (("a", "b"), [P("a", "b"), P("b", "a"), P("a", None), P(None, ("a", "b"))]),
    (2, 4): (("a", "b"), [P("a", "b"), P(None, "b")]),
}
CASES = [(shape, mode, spec) for shape, (_, specs) in MESHES.items()
         for mode in ("auto", "explicit") for spec in specs]
LAYOUTS = {
    "tensor": dict(scaling="tensor"),
    "axis-1": dict(scaling="axis", axis=-1),
    "axis0": dict(scaling="axis", axis=0),
    "block64": dict(scaling="block", block_size=64),
    "tile32x64": dict(scaling="block", block_size=(32, 64)),
    "mx": dict(scaling="mx"),
}


def _data() -> np.ndarray:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((256, 512)) * np.exp2(rng.integers(-8, 8, (256, 1)))
  x[3, 5], x[100, 200], x[255, 511] = np.nan, np.inf, 0.0
  return x.astype(jnp.bfloat16)


X = _data()


def _mesh(shape, mode):
  names = MESHES[shape][0]
  kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
  return jax.make_mesh(shape, names, axis_types=(kind,) * len(names))


def _collectives(compiled_text: str) -> dict[str, int]:
  return {k: len(re.findall(rf"= \S+ {k}(?:-start)?\(", compiled_text)) for k in COLLECTIVES}


def _sharded_dims(spec) -> int:
  return sum(e is not None for e in spec)


def _same_spec(sharding, spec) -> bool:
  got = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
  want = tuple(spec) + (None,) * (2 - len(spec))
  return got == want


@pytest.mark.parametrize("shape,mode,spec", CASES, ids=str)
def test_encode_decode_keep_sharding_and_bits(shape, mode, spec):
  mesh = _mesh(shape, mode)
  x = jax.device_put(jnp.asarray(X), NamedSharding(mesh, spec))
  enc = jax.jit(lambda a: fp8jax.encode(a, "e4m3fn"))
  bits = enc(x)
  assert _same_spec(bits.sharding, spec)
  want = fp8jax.encode(jnp.asarray(X), "e4m3fn")
  np.testing.assert_array_equal(np.asarray(bits), np.asarray(want))
  assert not any(_collectives(enc.lower(x).compile().as_text()).values())
  dec = jax.jit(lambda b: fp8jax.decode(b, "e4m3fn", jnp.float32))
  vals = dec(bits)
  assert _same_spec(vals.sharding, spec)
  assert not any(_collectives(dec.lower(bits).compile().as_text()).values())


@pytest.mark.parametrize("shape,mode,spec", CASES, ids=str)
def test_stochastic_bits_do_not_depend_on_the_sharding(shape, mode, spec):
  # The random words hash each element's global index, so every shard draws
  # what the unsharded array draws there, with no communication.
  mesh = _mesh(shape, mode)
  x = jax.device_put(jnp.asarray(X), NamedSharding(mesh, spec))
  key = jax.random.key(3)
  enc = jax.jit(lambda a: fp8jax.encode(a, "e4m3fn", rounding="stochastic", key=key))
  bits = enc(x)
  assert _same_spec(bits.sharding, spec)
  want = fp8jax.encode(jnp.asarray(X), "e4m3fn", rounding="stochastic", key=key)
  np.testing.assert_array_equal(np.asarray(bits), np.asarray(want))
  assert not any(_collectives(enc.lower(x).compile().as_text()).values())


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape,mode,spec", CASES, ids=str)
def test_quantize_matches_unsharded_and_communicates_only_as_documented(layout, shape, mode, spec):
  kwargs = LAYOUTS[layout]
  mesh = _mesh(shape, mode)
  x = jax.device_put(jnp.asarray(X), NamedSharding(mesh, spec))
  f = jax.jit(lambda a: fp8jax.quantize(a, "e4m3fn", **kwargs))
  q = f(x)
  ref = fp8jax.quantize(jnp.asarray(X), "e4m3fn", **kwargs)
  np.testing.assert_array_equal(np.asarray(q.bits), np.asarray(ref.bits))
  np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(ref.scale))
  assert _same_spec(q.bits.sharding, spec)
  counts = _collectives(f.lower(x).compile().as_text())
  if layout in ("block64", "tile32x64", "mx"):
    assert _same_spec(q.scale.sharding, spec)  # the grid is split like the data
    assert not any(counts.values()), counts
  elif layout == "tensor":
    # One all-reduce of the amax per sharded dimension (XLA reduces dimension by dimension).
    assert counts == dict.fromkeys(COLLECTIVES, 0) | {"all-reduce": _sharded_dims(spec)}, counts
  else:
    axis = kwargs["axis"] % 2
    entry = tuple(spec)[axis] if axis < len(spec) else None
    n = 0 if entry is None else 1  # none along an unsharded axis
    assert counts == dict.fromkeys(COLLECTIVES, 0) | {"all-reduce": n}, counts
  deq = jax.jit(lambda q: fp8jax.dequantize(q, jnp.float32))
  vals = deq(q)
  assert _same_spec(vals.sharding, spec)
  np.testing.assert_array_equal(np.asarray(vals), np.asarray(fp8jax.dequantize(ref, jnp.float32)))
  assert not any(_collectives(deq.lower(q).compile().as_text()).values())


def test_per_tensor_on_a_1d_mesh_is_exactly_one_all_reduce():
  mesh = _mesh((8,), "auto")
  x = jax.device_put(jnp.asarray(X), NamedSharding(mesh, P("x", None)))
  text = jax.jit(lambda a: fp8jax.quantize(a, "e4m3fn")).lower(x).compile().as_text()
  assert _collectives(text) == dict.fromkeys(COLLECTIVES, 0) | {"all-reduce": 1}


@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_shard_map_per_shard_quantization_with_axis_name(mode):
  mesh = _mesh((4, 2), mode)
  spec = P("a", "b")
  x = jax.device_put(jnp.asarray(X), NamedSharding(mesh, spec))
  ref = fp8jax.quantize(jnp.asarray(X), "e4m3fn")

  def per_shard(local):
    q = fp8jax.quantize(local, "e4m3fn", axis_name=("a", "b"))
    return q.bits, q.scale

  bits, scale = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=spec,
                                      out_specs=(spec, P())))(x)
  np.testing.assert_array_equal(np.asarray(bits), np.asarray(ref.bits))
  assert float(scale) == float(ref.scale)

  def per_row(local):
    q = fp8jax.quantize(local, "e4m3fn", scaling="axis", axis=-1, axis_name="b")
    return q.bits, q.scale

  bits, scale = jax.jit(jax.shard_map(per_row, mesh=mesh, in_specs=spec,
                                      out_specs=(spec, P("a", None))))(x)
  ref = fp8jax.quantize(jnp.asarray(X), "e4m3fn", scaling="axis")
  np.testing.assert_array_equal(np.asarray(bits), np.asarray(ref.bits))
  np.testing.assert_array_equal(np.asarray(scale), np.asarray(ref.scale))
  blocks = jax.jit(jax.shard_map(lambda s: fp8jax.quantize(s, scaling="mx").bits, mesh=mesh,
                                 in_specs=spec, out_specs=spec))(x)
  np.testing.assert_array_equal(np.asarray(blocks),
                                np.asarray(fp8jax.quantize(jnp.asarray(X), scaling="mx").bits))


@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_delayed_scaling_under_sharding(mode):
  mesh = _mesh((4, 2), mode)
  spec = P("a", "b")
  ds = fp8jax.DelayedScaling(history=4)
  xs = np.stack([X.astype(np.float32) * 2.0**k for k in (0, 3, -2, 5, 1)])
  steps = jnp.asarray(xs)

  def run(xs, state):
    def step(s, x):
      q, s = ds.quantize(x, s)
      return s, q.bits
    return jax.lax.scan(step, state, xs)

  ref_state, ref_bits = jax.jit(run)(steps, ds.init())
  sharded = jax.device_put(steps, NamedSharding(mesh, P(None, *spec)))
  f = jax.jit(run)
  state, bits = f(sharded, ds.init())
  np.testing.assert_array_equal(np.asarray(bits), np.asarray(ref_bits))
  np.testing.assert_array_equal(np.asarray(state.amax_history), np.asarray(ref_state.amax_history))
  assert state.amax_history.sharding.is_fully_replicated
  # The per-step update is the amax reduction: one all-reduce per sharded dimension.
  assert _collectives(f.lower(sharded, ds.init()).compile().as_text())["all-reduce"] == 2

  def local(xs, state):
    def step(s, x):
      q, s = ds.quantize(x, s, axis_name=("a", "b"))
      return s, q.bits
    return jax.lax.scan(step, state, xs)

  smap = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(None, *spec), P()),
                               out_specs=(P(), P(None, *spec))))
  state2, bits2 = smap(sharded, ds.init())
  np.testing.assert_array_equal(np.asarray(bits2), np.asarray(ref_bits))
  np.testing.assert_array_equal(np.asarray(state2.scale), np.asarray(ref_state.scale))
