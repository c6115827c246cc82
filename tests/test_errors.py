"""Bad input: the named exception, a message naming the argument, no work done."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax

X = jnp.ones((4,), jnp.bfloat16)
CODES = jnp.zeros((4,), jnp.uint8)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fp8jax.encode(jnp.ones(4, jnp.int32), "e4m3fn"), TypeError,
     r"x must be bfloat16, float16 or float32 \(got int32\)"),
    (lambda: fp8jax.encode(np.ones(4, np.float64), "e4m3fn"), TypeError, r"x must be .*float64"),
    (lambda: fp8jax.encode(1.0, "e4m3fn"), TypeError, r"x must be an array \(got float\)"),
    (lambda: fp8jax.encode(X, "e4m3"), None, None),
    (lambda: fp8jax.encode(X, "e9m9"), ValueError, r"fmt must be one of e4m3fn, .*\(got 'e9m9'\)"),
    (lambda: fp8jax.encode(X, 3), TypeError, r"fmt must be a format name, .*\(got int\)"),
    (lambda: fp8jax.encode(X, jnp.int32), ValueError, r"fmt dtype int32 is not one of the named"),
    (lambda: fp8jax.encode(X, "e4m3fn", rounding="up"), ValueError,
     r"rounding must be one of 'nearest', 'toward_zero', 'stochastic' \(got 'up'\)"),
    (lambda: fp8jax.encode(X, "e4m3fn", overflow="clip"), ValueError,
     r"overflow must be one of 'saturate', 'satfinite', 'ieee' \(got 'clip'\)"),
    (lambda: fp8jax.encode(X, "e4m3fn", rounding="stochastic"), ValueError,
     r"rounding='stochastic' needs key=jax.random.key"),
    (lambda: fp8jax.encode(X, "e4m3fn", rounding="stochastic", key=7), TypeError,
     r"key must be a jax.random key"),
    (lambda: fp8jax.encode(X, "e4m3fn", key=jax.random.key(0)), ValueError,
     r"key is only used with rounding='stochastic'"),
    (lambda: fp8jax.decode(jnp.ones(4, jnp.float32), "e4m3fn"), TypeError,
     r"bits must be uint8 \(or int8\) codes \(got float32\)"),
    (lambda: fp8jax.decode(CODES, "e4m3fn", jnp.int32), TypeError,
     r"dtype must be bfloat16, float16 or float32"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 7), ValueError,
     r"n_mantissa must be one of 1, 2, 3, 4, 5, 6 \(got 7\)"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 0), ValueError, r"n_mantissa must be"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, None), ValueError, r"n_mantissa must be"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3.0), ValueError, r"n_mantissa must be"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor=0.0), ValueError,
     r"scaling_factor must be finite and nonzero"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor=float("nan")),
     ValueError, r"scaling_factor must be finite and nonzero"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor=float("inf")),
     ValueError, r"scaling_factor must be finite and nonzero"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor=np.array([1.0, 0.0])),
     ValueError, r"scaling_factor must be finite and nonzero"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor=np.ones(3)),
     ValueError, r"scaling_factor of shape \(3,\) must broadcast"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor="2"), TypeError,
     r"scaling_factor must be a number"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, rounding="stochastic"), ValueError,
     r"rounding='stochastic' needs key"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, format="nope"), ValueError,
     r"format must be one of"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(X, 3, out=np.zeros(4, np.uint8)), TypeError,
     r"out must be a jax.Array"),
    (lambda: fp8jax.round_to_fp8_represented_as_int8(jnp.ones(4, jnp.int8), 3), TypeError,
     r"t must be bfloat16, float16 or float32 \(got int8\)"),
    (lambda: fp8jax.undo_int8_fp8(CODES, 9), ValueError, r"n_mantissa must be one of"),
    (lambda: fp8jax.undo_int8_fp8(X, 3), TypeError, r"fp8_tensor must be uint8"),
    (lambda: fp8jax.undo_int8_fp8(CODES, 3, jnp.int8), TypeError, r"target_dt must be"),
    (lambda: fp8jax.undo_int8_fp8(CODES, 3, scaling_factor=0), ValueError, r"scaling_factor"),
    (lambda: fp8jax.undo_int8_fp8(CODES, 3, out=jnp.zeros(4, jnp.float32)), ValueError,
     r"out must have shape \(4,\) and dtype bfloat16"),
    (lambda: fp8jax.int32_to_bfloat16(jnp.ones(4, jnp.float32)), TypeError,
     r"x must be int32 \(or uint32\) \(got float32\)"),
    (lambda: fp8jax.as_float8(CODES, "e2m1fn"), ValueError, r"fmt 'e2m1fn' has no 8-bit"),
    (lambda: fp8jax.as_float8(CODES, fp8jax.format_for_mantissa(5)), ValueError,
     r"fmt 'e2m5b1' has no 8-bit"),
    (lambda: fp8jax.from_float8(X), TypeError, r"x must be an array of a float8 dtype"),
    (lambda: fp8jax.Format(4, 4, 7, "fn"), ValueError, r"1 \+ exponent_bits \+ mantissa_bits <= 8"),
    (lambda: fp8jax.Format(4, 3, 7, "odd"), ValueError, r"convention must be one of"),
    (lambda: fp8jax.Format(5, 0, 15, "ieee"), ValueError, r"mantissa_bits >= 1"),
    (lambda: fp8jax.Format(4, 3, 200, "fn"), ValueError, r"bias=200 puts e4m3 values outside"),
    (lambda: fp8jax.Format(4, 3.0, 7, "fn"), TypeError, r"mantissa_bits must be an int"),
    (lambda: fp8jax.get_format(None), TypeError, r"fmt must be a format name"),
])
def test_bad_input_raises_a_named_error(call, exc, match):
  if exc is None:
    call()  # a valid call, kept beside its invalid neighbours
    return
  with pytest.raises(exc, match=match):
    call()


def test_stochastic_without_key_raises_before_any_work(monkeypatch):
  from fp8jax.core import codec as convert
  calls = []
  monkeypatch.setattr(convert, "_encode", lambda *a, **k: calls.append(1))
  with pytest.raises(ValueError):
    fp8jax.encode(X, "e4m3fn", rounding="stochastic")
  assert not calls


def test_api_misuse_is_a_named_error_before_any_work():
  import torch
  t = torch.ones(4)
  with pytest.raises(TypeError, match=r"x must be a JAX or NumPy array \(got torch.Tensor\)"):
    fp8jax.encode(t, "e4m3fn")
  with pytest.raises(TypeError, match="x must be a JAX or NumPy array"):
    fp8jax.quantize(t)
  keys = jax.random.split(jax.random.key(0), 3)
  with pytest.raises(ValueError, match=r"key must be a single key, of shape \(\) \(got shape"):
    fp8jax.encode(X, "e4m3fn", rounding="stochastic", key=keys)
  with pytest.raises(ValueError, match=r"key must be a single key, of shape \(2,\)"):
    fp8jax.encode(X, "e4m3fn", rounding="stochastic", key=jax.random.split(jax.random.PRNGKey(0)))
  for bad in (np.array([1 + 2j], np.complex64), np.array(["2"]), np.array([True])):
    with pytest.raises(TypeError, match="must be a real number or array"):
      fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor=bad)
    with pytest.raises(TypeError, match="scaling must be a real number or array"):
      fp8jax.quantize(X, scaling=bad)
  with pytest.raises(TypeError, match="scaling_factor must be a number"):
    fp8jax.round_to_fp8_represented_as_int8(X, 3, scaling_factor=torch.tensor(2.0))


def test_a_donated_out_is_named_not_a_buffer_error():
  out = jnp.zeros(X.shape, jnp.uint8)
  fp8jax.round_to_fp8_represented_as_int8(X, 3, out=out)
  if not out.is_deleted():
    pytest.skip("this backend did not donate the buffer")  # CPU donates; guard other backends
  with pytest.raises(ValueError, match="out was donated to an earlier call"):
    fp8jax.round_to_fp8_represented_as_int8(X, 3, out=out)


def test_out_on_other_devices_than_the_input_is_refused():
  import subprocess
  import sys
  code = (
      "import jax, jax.numpy as jnp, fp8jax\n"
      "x = jax.device_put(jnp.ones(4), jax.devices()[0])\n"
      "out = jax.device_put(jnp.zeros(4, jnp.uint8), jax.devices()[1])\n"
      "try:\n"
      "  fp8jax.round_to_fp8_represented_as_int8(x, 3, out=out)\n"
      "except ValueError as e:\n"
      "  print(e)\n")
  env = dict(__import__("os").environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=env, check=False)
  assert "out must be on the input's devices" in res.stdout, res.stdout + res.stderr
