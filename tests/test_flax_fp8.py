"""fp8jax.flax's drop-ins behave as a Flax user expects, in linen and in nnx.

Checks that:

- linen `nn.Dense` with `Fp8DotGeneral` (every preset, as `dot_general_cls` and as
  an unbound module instance), `nn.Dense(dot_general=partial(fp8_dot_general))`
  and `nn.DenseGeneral` over two axes give, bit for bit, the output, parameter
  gradients, next delayed-scaling state and stochastic-rounding key of
  `fp8jax.fp8_dot_general` called directly;
- a jitted linen training step that replaces `_overwrite_with_gradient` with its
  gradient records max|x|, max|kernel| and max|dL/dy| in the histories; the
  "fp8" rng stream drives nvfp4's stochastic rounding, and is required;
- linen `Einsum` has `nn.Einsum`'s parameters and computes `fp8_einsum` + bias;
- `nn.scan` over `nn.remat` layers gives the gradients and states of the
  unrolled layers;
- nnx `Linear(dot_general=Fp8DotGeneral)` and `Einsum(einsum_op=Fp8Einsum)`
  train under `nnx.jit` with `nnx.Optimizer` and `update_state`, under
  `nnx.remat`, and stacked with `nnx.vmap` and run with `nnx.scan`;
- on 8 host devices (a subprocess running tests/flax_sharded_checks.py) a
  data- and model-sharded train step gives the single-device state exactly;
- bad recipes and missing rngs raise errors that name them.

jit compiles of the FP8 recipes take seconds each (nvfp4 the most): the shapes
are small and each compiled function serves several tests.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fp8jax
from fp8jax.flax import linen as fl, nnx as fx
from fp8jax.ops.recipes import Fp8DotState
from fp8jax.quant.delayed import DelayedState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
OWG = fl.OVERWRITE_WITH_GRADIENT
FIELDS = {"lhs": "input", "rhs": "kernel", "grad": "output_grad"}  # flax.linen.fp8_ops' names
STATELESS = [r for r in fp8jax.RECIPES if not fp8jax.RECIPES[r].needs_state]


def _normal(seed: int, shape, scale: float = 1.0) -> jax.Array:
  return scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


X = _normal(1, (4, 32))
KERNEL = _normal(2, (32, 8), 0.2)
BIAS = _normal(3, (8,), 0.1)
CT = _normal(4, (4, 8))  # the output's cotangent: loss = sum(y * CT), so dL/dy = CT
DIMS = (((1,), (0,)), ((), ()))


def _state(recipe: str, seed: int = 5) -> Fp8DotState | None:
  """A state with a history and scales of its own, so that passing it on is visible."""
  state = fp8jax.fp8_dot_state(recipe)
  if state is None:
    return None
  keys = iter(jax.random.split(jax.random.key(seed), 6))
  return jax.tree.map(
      lambda d: DelayedState(jax.random.uniform(next(keys), d.amax_history.shape, minval=0.5,
                                                maxval=4.0),
                             jax.random.uniform(next(keys), (), minval=0.25, maxval=8.0)),
      state, is_leaf=lambda d: isinstance(d, DelayedState))


def _as_vars(state: Fp8DotState) -> dict[str, jax.Array]:
  """An `Fp8DotState` as the variables of a linen FP8 module."""
  out = {}
  for field, name in FIELDS.items():
    d = getattr(state, field)
    out[f"{name}_amax_history"], out[f"{name}_scale"] = d.amax_history, d.scale
  return out


def _as_state(variables: dict[str, jax.Array]) -> Fp8DotState:
  return Fp8DotState(**{f: DelayedState(variables[f"{n}_amax_history"], variables[f"{n}_scale"])
                        for f, n in FIELDS.items()})


def _assert_same(got, want) -> None:
  """Bit-for-bit equality of two pytrees of the same structure."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _shapes(tree):
  return jax.tree.map(lambda a: (a.shape, a.dtype), tree)


# --- linen: nn.Dense and nn.DenseGeneral ---------------------------------------------------

class _KeyProbe(nn.Module):
  """Records the key an FP8 module at this path draws from the "fp8" stream."""

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None):
    self.sow("intermediates", "key", self.make_rng(fl.RNG))
    return jax.lax.dot_general(lhs, rhs, dimension_numbers)


def _dense(kind: str, recipe: str) -> tuple[nn.Module, str]:
  """A Dense-like module holding an FP8 dot, and the name of its FP8 submodule."""
  if kind == "cls":
    return nn.Dense(8, dot_general_cls=functools.partial(fl.Fp8DotGeneral, recipe=recipe)), \
        "Fp8DotGeneral_0"
  if kind == "instance":
    # An unbound module as a field becomes the Dense's submodule "dot_general".
    return nn.Dense(8, dot_general=fl.Fp8DotGeneral(recipe=recipe)), "dot_general"
  if kind == "function":
    return nn.Dense(8, dot_general=functools.partial(fp8jax.fp8_dot_general, recipe=recipe)), ""
  assert kind == "general"
  return nn.DenseGeneral((2, 4), axis=(-2, -1), dot_general_cls=functools.partial(
      fl.Fp8DotGeneral, recipe=recipe)), "Fp8DotGeneral_0"


def _dense_inputs(kind: str, recipe: str, seed: int = 5):
  """The input, the variables `_dense(kind, recipe)` takes, and the scaling state in them."""
  _, name = _dense(kind, recipe)
  x, params = X, {"kernel": KERNEL, "bias": BIAS}
  if kind == "general":  # the same numbers: x [4, 4, 8] contracted over its last two axes
    x, params = X.reshape(4, 4, 8), {"kernel": KERNEL.reshape(4, 8, 2, 4),
                                     "bias": BIAS.reshape(2, 4)}
  variables = {"params": params}
  state = _state(recipe, seed)
  if state is not None and name:
    variables[OWG] = {name: _as_vars(state)}
  return x, variables, state


@functools.partial(jax.jit, static_argnames=("kind", "recipe"))
def _module_and_direct(variables, state, key, *, kind: str, recipe: str):
  """The module's output and gradients, and fp8_dot_general's with the same operands."""
  module, name = _dense(kind, recipe)
  general = kind == "general"
  x = X.reshape(4, 4, 8) if general else X
  ct = CT.reshape(4, 2, 4) if general else CT

  def module_loss(v):
    y = module.apply(v, x, rngs={fl.RNG: key})
    return jnp.sum(y * ct), y

  (_, y), grads = jax.value_and_grad(module_loss, has_aux=True)(variables)
  drawn = key
  if fp8jax.RECIPES[recipe].needs_key:  # the key the module draws: make_rng("fp8") at its path
    probe = module.clone(dot_general_cls=functools.partial(_KeyProbe, name=name),
                         dot_general=None)
    _, sown = probe.apply({"params": variables["params"]}, x, rngs={fl.RNG: key},
                          mutable="intermediates")
    drawn = sown["intermediates"][name]["key"][0]
  dims = (((1, 2), (0, 1)), ((), ())) if general else DIMS

  def direct_loss(params, state):
    y = fp8jax.fp8_dot_general(x, params["kernel"], dims, recipe=recipe, state=state, key=drawn)
    y = y + params["bias"]
    return jnp.sum(y * ct), y

  (_, y_direct), (g_params, g_state) = jax.value_and_grad(direct_loss, argnums=(0, 1),
                                                          has_aux=True)(variables["params"], state)
  return y, grads, y_direct, {"params": g_params, "state": g_state}


def _check_against_direct(kind: str, recipe: str, key: jax.Array):
  x, variables, state = _dense_inputs(kind, recipe)
  module, name = _dense(kind, recipe)
  # The variables made here are the ones init makes (names, shapes, dtypes).
  assert _shapes(variables) == _shapes(jax.eval_shape(module.init, jax.random.key(0), x))
  y, grads, y_direct, direct = _module_and_direct(variables, state, key, kind=kind,
                                                  recipe=recipe)
  _assert_same(y, y_direct)
  _assert_same(grads["params"], direct["params"])
  if state is None or not name:
    assert OWG not in grads
  else:
    next_state = _as_state(grads[OWG][name])
    _assert_same(next_state, direct["state"])
    # The next state is this step's: input's amax pushed onto the given history.
    assert float(next_state.lhs.amax_history[0]) == float(jnp.max(jnp.abs(x)))
    np.testing.assert_array_equal(next_state.lhs.amax_history[1:], state.lhs.amax_history[:-1])
  return y, grads


@pytest.mark.parametrize("recipe", list(fp8jax.RECIPES))
def test_linen_dense_matches_fp8_dot_general_bit_for_bit(recipe):
  _check_against_direct("cls", recipe, jax.random.key(7))


def test_linen_dense_takes_the_function_and_an_unbound_instance():
  y, grads, _, _ = _module_and_direct(*_dense_inputs("cls", "current")[1:], jax.random.key(7),
                                      kind="cls", recipe="current")
  y_fn, grads_fn = _check_against_direct("function", "current", jax.random.key(7))
  _assert_same(y_fn, y)
  _assert_same(grads_fn, grads)
  _check_against_direct("instance", "delayed", jax.random.key(7))


def test_linen_dense_general_over_two_axes():
  y, _ = _check_against_direct("general", "delayed", jax.random.key(7))
  assert y.shape == (4, 2, 4)


def test_linen_nvfp4_draws_its_key_from_the_fp8_stream():
  _, variables, _ = _dense_inputs("cls", "nvfp4")
  module, _ = _dense("cls", "nvfp4")
  with pytest.raises(ValueError, match="recipe 'nvfp4' rounds stochastically.*'fp8'"):
    module.apply(variables, X)
  run = lambda seed: _module_and_direct(variables, None, jax.random.key(seed), kind="cls",
                                        recipe="nvfp4")
  _, g1, _, _ = run(7)
  _, g1_again, _, _ = run(7)
  y2, g2, y2_direct, direct2 = run(8)
  _assert_same(g1_again, g1)
  _assert_same(y2, y2_direct)  # the forward pass rounds to nearest: the key does not reach it
  _assert_same(g2["params"], direct2["params"])
  assert not np.array_equal(g2["params"]["kernel"], g1["params"]["kernel"])


# --- linen: a training step ------------------------------------------------------------------

TARGET = _normal(6, (4, 8))


def _mse(y):
  return jnp.mean((y - TARGET) ** 2)


@functools.partial(jax.jit, static_argnames="recipe")
def _train_step(variables, x, *, recipe: str):
  """One SGD step; the scaling state is replaced with its gradient. Returns dL/dy too."""
  module = nn.Dense(8, dot_general_cls=functools.partial(fl.Fp8DotGeneral, recipe=recipe))

  def loss(params, state):
    y = module.apply({"params": params, OWG: state}, x)
    return _mse(y), y

  (_, y), (g_params, g_state) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables["params"], variables[OWG])
  params = jax.tree.map(lambda p, g: p - 0.5 * g, variables["params"], g_params)
  return {"params": params, OWG: g_state}, jax.grad(_mse)(y)


def test_linen_train_step_records_the_amaxes_of_x_kernel_and_output_grad():
  module = nn.Dense(8, dot_general_cls=functools.partial(fl.Fp8DotGeneral, recipe="delayed"))
  variables = jax.jit(module.init)(jax.random.key(0), X)
  fresh = variables[OWG]["Fp8DotGeneral_0"]
  assert not np.any(fresh["input_amax_history"]) and float(fresh["input_scale"]) == 1.0
  x2 = 3 * X[::-1]
  after1, dy1 = _train_step(variables, X, recipe="delayed")
  after2, dy2 = _train_step(after1, x2, recipe="delayed")
  for before, after, x, dy in ((variables, after1, X, dy1), (after1, after2, x2, dy2)):
    old, new = before[OWG]["Fp8DotGeneral_0"], after[OWG]["Fp8DotGeneral_0"]
    for name, amax in (("input", jnp.max(jnp.abs(x))),
                       ("kernel", jnp.max(jnp.abs(before["params"]["kernel"]))),
                       ("output_grad", jnp.max(jnp.abs(dy)))):
      hist = new[f"{name}_amax_history"]
      assert float(hist[0]) == float(amax), name
      np.testing.assert_array_equal(hist[1:], old[f"{name}_amax_history"][:-1])
  # The scales follow the recorded amaxes: none is still its first value, 1.
  assert all(float(v) != 1.0 for k, v in after2[OWG]["Fp8DotGeneral_0"].items()
             if k.endswith("_scale"))


@pytest.mark.parametrize("recipe", STATELESS)
def test_linen_stateless_recipes_keep_no_state_collection(recipe):
  module = nn.Dense(8, dot_general_cls=functools.partial(fl.Fp8DotGeneral, recipe=recipe))
  assert set(jax.eval_shape(module.init, jax.random.key(0), X)) == {"params"}


# --- linen: Einsum ----------------------------------------------------------------------------

EQ, EQ_X, EQ_KERNEL = "btd,dhn->bnth", (2, 2, 32), (32, 5, 3)  # bias over (n, h): reordered


@pytest.mark.parametrize("use_bias", [True, False])
def test_linen_einsum_has_nn_einsums_parameters(use_bias):
  twin = fl.Einsum(EQ_KERNEL, EQ, use_bias=use_bias, recipe="delayed")
  ref = nn.Einsum(EQ_KERNEL, EQ, use_bias=use_bias)
  x = jnp.zeros(EQ_X)
  got = jax.eval_shape(twin.init, jax.random.key(0), x)
  want = jax.eval_shape(ref.init, jax.random.key(0), x)
  assert _shapes(got["params"]) == _shapes(want["params"])
  assert set(got) == {"params", OWG}
  assert set(got[OWG]["Fp8Einsum_0"]) == {f"{n}_{s}" for n in FIELDS.values()
                                         for s in ("amax_history", "scale")}


@jax.jit
def _einsums(params, state, x):
  twin = fl.Einsum(EQ_KERNEL, EQ, recipe="delayed")
  y = twin.apply({"params": params, OWG: {"Fp8Einsum_0": _as_vars(state)}}, x)
  direct = fp8jax.fp8_einsum(EQ, x, params["kernel"], recipe="delayed", state=state)
  direct = direct + params["bias"][None, :, None, :]  # bias (n, h) -> [b, n, t, h]
  ref = nn.Einsum(EQ_KERNEL, EQ).apply({"params": params}, x)
  return y, direct, ref


def test_linen_einsum_computes_fp8_einsum_plus_bias():
  x = _normal(8, EQ_X)
  params = {"kernel": _normal(9, EQ_KERNEL, 0.2), "bias": _normal(10, (3, 5), 0.1)}
  y, direct, ref = _einsums(params, _state("delayed"), x)
  assert y.shape == (2, 3, 2, 5)
  _assert_same(y, direct)
  # FP8 (e4m3, per-tensor delayed scales) is close to the float32 einsum, and not equal to it.
  err = float(jnp.max(jnp.abs(y - ref)))
  assert 0 < err < 0.1 * float(jnp.max(jnp.abs(ref))), err


# --- linen: nn.scan over nn.remat layers ----------------------------------------------------

LAYERS = 2


class _Block(nn.Module):
  recipe: str = "delayed"

  @nn.compact
  def __call__(self, x, _):
    dense = nn.Dense(32, dot_general_cls=functools.partial(fl.Fp8DotGeneral, recipe=self.recipe))
    return jnp.tanh(dense(x)), None


_Stack = nn.scan(nn.remat(_Block), variable_axes={"params": 0, OWG: 0},
                 split_rngs={"params": True, fl.RNG: True}, length=LAYERS)


@jax.jit
def _scanned_and_unrolled(variables, key):
  ct = _normal(11, (4, 32))

  def scanned(v):
    return jnp.sum(_Stack().apply(v, X, None, rngs={fl.RNG: key})[0] * ct)

  def unrolled(v):
    y = X
    for i in range(LAYERS):
      y = _Block().apply(jax.tree.map(lambda a, i=i: a[i], v), y, None)[0]
    return jnp.sum(y * ct)

  return jax.grad(scanned)(variables), jax.grad(unrolled)(variables)


def test_linen_scan_over_remat_layers_matches_the_unrolled_layers():
  shapes = jax.eval_shape(_Stack().init, {"params": jax.random.key(0), fl.RNG: jax.random.key(1)},
                          X, None)
  state = shapes[OWG]["Dense_0"]["Fp8DotGeneral_0"]
  assert state["input_amax_history"].shape == (LAYERS, 16)
  assert state["kernel_scale"].shape == (LAYERS,)
  # Each layer its own parameters and its own (distinct) state.
  states = [_state("delayed", seed) for seed in range(LAYERS)]
  variables = {
      "params": {"Dense_0": {"kernel": _normal(12, (LAYERS, 32, 32), 0.2),
                             "bias": _normal(13, (LAYERS, 32), 0.1)}},
      OWG: {"Dense_0": {"Fp8DotGeneral_0": jax.tree.map(
          lambda *a: jnp.stack(a), *[_as_vars(s) for s in states])}},
  }
  assert _shapes(variables) == _shapes(shapes)
  scanned, unrolled = _scanned_and_unrolled(variables, jax.random.key(2))
  # XLA compiles the scan's body and the unrolled layers alike: equal bit for bit.
  _assert_same(scanned, unrolled)
  hist = scanned[OWG]["Dense_0"]["Fp8DotGeneral_0"]["input_amax_history"]
  assert float(hist[0, 0]) == float(jnp.max(jnp.abs(X)))
  for i, s in enumerate(states):
    np.testing.assert_array_equal(hist[i, 1:], s.lhs.amax_history[:-1])


# --- nnx ----------------------------------------------------------------------------------------

class _NnxModel(nnx.Module):
  """nnx.Linear and nnx.Einsum with FP8 dots; the zero probes expose dL/dh and dL/dy."""

  def __init__(self, recipe: str, rngs: nnx.Rngs):
    self.linear = nnx.Linear(32, 16, dot_general=fx.Fp8DotGeneral(recipe, rngs=rngs), rngs=rngs)
    self.einsum = nnx.Einsum("bd,dh->bh", (16, 8), (8,),
                             einsum_op=fx.Fp8Einsum(recipe, rngs=rngs), rngs=rngs)

  def __call__(self, x, probe_h=0.0, probe_y=0.0):
    h = self.linear(x) + probe_h
    return self.einsum(h) + probe_y, h


def _nnx_loss(model, x, probe_h, probe_y, remat):
  call = nnx.remat(lambda m, *a: m(*a)) if remat else lambda m, *a: m(*a)
  y, h = call(model, x, probe_h, probe_y)
  return _mse(y), h


@functools.partial(nnx.jit, static_argnames="remat")
def _nnx_step(model, optimizer, x, remat=False):
  zeros = jnp.zeros((4, 16)), jnp.zeros((4, 8))
  (grads, dh, dy), h = nnx.grad(_nnx_loss, argnums=(nnx.DiffState(0, fx.WRT), 2, 3),
                                has_aux=True)(model, x, *zeros, remat)
  fx.update_state(model, grads)
  optimizer.update(model, grads)  # it takes the nnx.Param part of grads (its wrt)
  return grads, h, dh, dy


def _nnx_train(recipe: str, remat: bool = False):
  model = _NnxModel(recipe, nnx.Rngs(0, fp8=1))
  optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
  before = nnx.clone(model)
  grads, h, dh, dy = _nnx_step(model, optimizer, X, remat=remat)
  return before, model, grads, h, dh, dy


def _check_nnx_step(recipe: str, before, model, grads, h, dh, dy):
  # SGD with a power-of-two rate: new = old - 0.5 * grad, exactly.
  params = nnx.state(model, nnx.Param)
  expect = jax.tree.map(lambda p, g: p - 0.5 * g, nnx.state(before, nnx.Param),
                        nnx.state(grads, nnx.Param))
  _assert_same(params, expect)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(nnx.state(grads, nnx.Param)))
  if not fp8jax.RECIPES[recipe].needs_state:
    assert not jax.tree.leaves(nnx.state(model, fx.Fp8State))
    return
  for layer, old, x, out_grad in ((model.linear.dot_general, before.linear, X, dh),
                                  (model.einsum.einsum_op, before.einsum, h, dy)):
    for name, amax in (("input", jnp.max(jnp.abs(x))),
                       ("kernel", jnp.max(jnp.abs(old.kernel[...]))),
                       ("output_grad", jnp.max(jnp.abs(out_grad)))):
      assert float(getattr(layer, f"{name}_amax_history")[...][0]) == float(amax), name


@pytest.mark.parametrize("recipe", ["delayed", "current"])
def test_nnx_linear_and_einsum_train_under_jit(recipe):
  _check_nnx_step(recipe, *_nnx_train(recipe))


def test_nnx_remat_gives_the_same_step():
  plain = _nnx_train("delayed")
  rematted = _nnx_train("delayed", remat=True)
  _assert_same(nnx.state(rematted[1]), nnx.state(plain[1]))
  _assert_same(rematted[2:], plain[2:])


class _NnxBlock(nnx.Module):
  def __init__(self, recipe: str, rngs: nnx.Rngs):
    self.linear = nnx.Linear(32, 32, dot_general=fx.Fp8DotGeneral(recipe, rngs=rngs), rngs=rngs)
    self.einsum = nnx.Einsum("bd,dh->bh", (32, 32), (32,),
                             einsum_op=fx.Fp8Einsum(recipe, rngs=rngs), rngs=rngs)

  def __call__(self, x):
    return jnp.tanh(self.einsum(self.linear(x)))


def _nnx_stack(recipe: str | fp8jax.Fp8Recipe) -> _NnxBlock:
  """LAYERS blocks stacked along a leading axis, the standard nnx pattern."""
  @nnx.split_rngs(splits=LAYERS)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return _NnxBlock(recipe, rngs)

  return create(nnx.Rngs(0, fp8=1))


def _stack_loss(stack, x):
  @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
  def forward(layer, x):
    return layer(x)

  return _mse(forward(stack, x)[:, :8])


@nnx.jit
def _nnx_scan_step(stack, optimizer, x):
  grads = nnx.grad(_stack_loss, argnums=nnx.DiffState(0, fx.WRT))(stack, x)
  fx.update_state(stack, grads)
  optimizer.update(stack, grads)
  return grads


def _scan_train_from(stack: _NnxBlock):
  """One SGD step of the stack (scaling state and parameters); checks the parameters'."""
  optimizer = nnx.Optimizer(stack, optax.sgd(0.5), wrt=nnx.Param)
  before = nnx.clone(stack)
  grads = _nnx_scan_step(stack, optimizer, X)  # updates stack in place
  params = nnx.state(stack, nnx.Param)
  _assert_same(params, jax.tree.map(lambda p, g: p - 0.5 * g, nnx.state(before, nnx.Param),
                                    nnx.state(grads, nnx.Param)))
  return before, stack, grads


def test_nnx_scan_over_a_vmapped_stack_matches_the_unrolled_layers():
  stack = _nnx_stack("delayed")
  fp8_modules = lambda s: (s.linear.dot_general, s.einsum.einsum_op)
  assert fp8_modules(stack)[0].input_amax_history[...].shape == (LAYERS, 16)
  # Give each layer a distinct state, so a mixed-up layer axis would show.
  for i in range(LAYERS):
    for module, state in zip(fp8_modules(stack), (_state("delayed", i),
                                                  _state("delayed", i + LAYERS)), strict=True):
      for field, name in FIELDS.items():
        for part in ("amax_history", "scale"):
          var = getattr(module, f"{name}_{part}")
          var[...] = var[...].at[i].set(getattr(getattr(state, field), part))
  # A stacked module's graph is a single layer's: merged with a slice, it is that layer.
  graphdef, state = nnx.split(stack)

  @jax.jit
  def unrolled_grads(state):
    def loss(state):
      y = X
      for i in range(LAYERS):
        y = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))(y)
      return _mse(y[:, :8])

    return jax.grad(loss)(state)

  unrolled = unrolled_grads(state)
  before, stack, grads = _scan_train_from(stack)
  # XLA compiles the scan's body and the unrolled layers alike: equal bit for bit.
  _assert_same(nnx.to_pure_dict(grads), nnx.to_pure_dict(unrolled))
  _assert_same(nnx.to_pure_dict(nnx.state(stack, fx.Fp8State)),
               nnx.to_pure_dict(nnx.filter_state(unrolled, fx.Fp8State)))
  hist = fp8_modules(stack)[0].input_amax_history[...]
  assert float(hist[0, 0]) == float(jnp.max(jnp.abs(X)))
  for new, old in zip(fp8_modules(stack), fp8_modules(before), strict=True):
    np.testing.assert_array_equal(new.kernel_amax_history[...][:, 1:],
                                  old.kernel_amax_history[...][:, :-1])


# Stochastic rounding of the gradient, per tensor: nvfp4's key plumbing, at a fraction of its
# compile time (test_linen_dense_matches_fp8_dot_general_bit_for_bit covers nvfp4 itself).
STOCHASTIC = fp8jax.Fp8Recipe(
    fp8jax.Cast("e4m3fn"), fp8jax.Cast("e4m3fn"),
    fp8jax.Cast(fp8jax.QuantSpec("e5m2", rounding="stochastic")), name="stochastic")


def test_nnx_stochastic_rounding_trains_with_a_stream_per_module_and_layer():
  stack = _nnx_stack(STOCHASTIC)
  streams = (stack.linear.dot_general.rngs, stack.einsum.einsum_op.rngs)
  keys = np.concatenate([np.asarray(jax.random.key_data(s.key[...])) for s in streams])
  # Each module forked its own stream, split over the layers.
  assert keys.shape[0] == 2 * LAYERS and len({k.tobytes() for k in keys}) == 2 * LAYERS
  _, stack, grads = _scan_train_from(stack)
  for g in jax.tree.leaves(nnx.state(grads, nnx.Param)):
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
  for s in (stack.linear.dot_general.rngs, stack.einsum.einsum_op.rngs):
    np.testing.assert_array_equal(s.count[...], np.ones(LAYERS))  # a key drawn per call


# --- errors --------------------------------------------------------------------------------

def test_a_wrong_recipe_name_is_named_at_init():
  dense = nn.Dense(4, dot_general_cls=functools.partial(fl.Fp8DotGeneral, recipe="fp9"))
  with pytest.raises(ValueError, match="unknown recipe 'fp9'"):
    dense.init(jax.random.key(0), X)
  with pytest.raises(ValueError, match="unknown recipe 'fp9'"):
    fl.Einsum((32, 4), "bd,dh->bh", recipe="fp9").init(jax.random.key(0), X)
  with pytest.raises(ValueError, match="unknown recipe 'fp9'"):
    fx.Fp8DotGeneral("fp9")
  with pytest.raises(ValueError, match="unknown recipe 'fp9'"):
    fx.Fp8Einsum("fp9")


def test_nnx_nvfp4_needs_rngs():
  for cls in (fx.Fp8DotGeneral, fx.Fp8Einsum):
    with pytest.raises(ValueError, match="recipe 'nvfp4' rounds stochastically and needs rngs="):
      cls("nvfp4")
    with pytest.raises(ValueError, match="needs an 'fp8' or 'default' stream.*has params"):
      cls("nvfp4", rngs=nnx.Rngs(params=0))
    with pytest.raises(TypeError, match="rngs must be an nnx.Rngs or nnx.RngStream"):
      cls("nvfp4", rngs=jax.random.key(0))
  # A recipe that does not round stochastically needs none and keeps none.
  assert fx.Fp8DotGeneral("current").rngs is None


# --- 8 host devices ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sharded_train_step_matches_one_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"  # read when JAX starts
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  # --noconftest: the checks use no shared fixture, and the root conftest's doctest names
  # import torch, seconds of start-up for nothing here.
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
       os.path.join(HERE, "flax_sharded_checks.py")],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  tail = proc.stdout[-3000:] + proc.stderr[-2000:]
  assert proc.returncode == 0, tail
  passed = re.search(r"(\d+) passed", proc.stdout)
  assert passed and int(passed.group(1)) == 3, tail
