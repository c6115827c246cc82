"""A linen MLP with `Fp8DotGeneral` trains on 8 host devices as it does on one.

Run by tests/test_flax_fp8.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (set before JAX starts).
The batch is sharded over a mesh axis "data" of 8 devices, or of 4 with the
weights' output axis over a second axis "model". The next scaling state is a
record of exact maxima, so it equals the single-device one bit for bit; the
loss and gradients are sums, which a sharded program may add in another
order, so they are only close.

The meshes' axes are `AxisType.Auto`. With `AxisType.Explicit` the backward
pass fails in fp8jax/ops/gemm.py: the wgrad GEMM contracts the batch, sharded
over "data" (and the dgrad GEMM the "model" axis), and explicit sharding asks
every dot_general that contracts a sharded axis for an `out_sharding`, which
the backward GEMMs do not pass.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from fp8jax.flax.linen import OVERWRITE_WITH_GRADIENT as OWG, Fp8DotGeneral

MESHES = {  # name -> (shape, axis names, whether the weights' output axis is sharded)
    "data8": ((8,), ("data",), False),
    "data4xmodel2": ((4, 2), ("data", "model"), True),
}


@pytest.fixture(autouse=True)
def _eight_devices():
  # Checked per test, not at import: doctest collection imports every module.
  assert jax.device_count() == 8, "run with --xla_force_host_platform_device_count=8"


class _Mlp(nn.Module):
  recipe: str

  @nn.compact
  def __call__(self, x):
    dot = functools.partial(Fp8DotGeneral, recipe=self.recipe)
    h = nn.relu(nn.Dense(64, dot_general_cls=dot)(x))
    return nn.Dense(16, dot_general_cls=dot)(h)


@functools.partial(jax.jit, static_argnames="recipe")
def _step(variables, x, y, *, recipe: str):
  """The loss, the parameters' gradients and the next scaling state."""
  def loss(params, state):
    out = _Mlp(recipe).apply({"params": params, OWG: state}, x)
    return jnp.mean((out - y) ** 2)

  return jax.value_and_grad(loss, argnums=(0, 1))(variables["params"], variables.get(OWG, {}))


def _spec(path, model_sharded: bool) -> P:
  """Kernels and biases split along their output axis over "model"; the state replicated."""
  name = jax.tree_util.keystr(path)
  if not model_sharded or "params" not in name:
    return P()
  return P(None, "model") if "kernel" in name else P("model")


def _variables(recipe: str, x: jax.Array) -> dict:
  """Random parameters and scaling state of init's shapes (init itself would compile)."""
  shapes = jax.eval_shape(_Mlp(recipe).init, jax.random.key(0), x)
  paths, tree = jax.tree_util.tree_flatten_with_path(shapes)
  keys = iter(jax.random.split(jax.random.key(1), len(paths)))

  def make(path, a):
    name, k = jax.tree_util.keystr(path), next(keys)
    if "params" in name:
      return (0.2 if "kernel" in name else 0.1) * jax.random.normal(k, a.shape, a.dtype)
    # A history of earlier amaxes, and the scales they gave.
    lo, hi = (0.5, 4.0) if "history" in name else (0.25, 8.0)
    return jax.random.uniform(k, a.shape, a.dtype, minval=lo, maxval=hi)

  return jax.tree.unflatten(tree, [make(p, a) for p, a in paths])


# The state on both meshes; the 1x128 / 128x128 blocks with data and model sharding.
@pytest.mark.parametrize("recipe,mesh_name", [("delayed", "data8"), ("delayed", "data4xmodel2"),
                                              ("blockwise", "data4xmodel2")])
def test_a_sharded_train_step_gives_the_single_device_state(recipe, mesh_name):
  shape, names, model_sharded = MESHES[mesh_name]
  mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (16, 32))
  y = jax.random.normal(keys[1], (16, 16))
  variables = _variables(recipe, x)
  assert (OWG in variables) == (recipe == "delayed")
  want = _step(variables, x, y, recipe=recipe)

  data = NamedSharding(mesh, P("data", None))
  sharded = jax.tree_util.tree_map_with_path(
      lambda path, a: jax.device_put(a, NamedSharding(mesh, _spec(path, model_sharded))),
      variables)
  with jax.set_mesh(mesh):
    got = _step(sharded, jax.device_put(x, data), jax.device_put(y, data), recipe=recipe)
  (loss, (grads, state)), (want_loss, (want_grads, want_state)) = got, want
  kernel = grads["Dense_0"]["kernel"]
  assert len(kernel.sharding.device_set) == 8
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  assert jax.tree.structure(state) == jax.tree.structure(want_state)
  for g, w in zip(jax.tree.leaves(state), jax.tree.leaves(want_state), strict=True):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  if recipe == "delayed":  # this step's amax of x heads the input's history
    hist = state["Dense_0"]["Fp8DotGeneral_0"]["input_amax_history"]
    assert float(hist[0]) == float(jnp.max(jnp.abs(x)))
