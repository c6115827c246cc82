"""`fake_quant`: quantize then dequantize, with a straight-through gradient."""

from __future__ import annotations

import functools
from typing import Any

import jax

from fp8jax import scaling
from fp8jax.formats import FormatLike


def fake_quant(x: Any, fmt: FormatLike = "e4m3fn", *, key: jax.Array | None = None,
               **options: Any) -> jax.Array:
  """`dequantize(quantize(x, fmt, **options), x.dtype)`, differentiable.

  The forward pass is the quantization round trip. The backward pass is the
  straight-through estimator: the incoming gradient passes unchanged, to
  every element, in range or not; values that saturated (beyond a static or
  delayed scale's range) keep their gradient too, as in the usual FP8
  training recipes, rather than being cut to zero. Scales get no gradient.

  Args:
    x: bfloat16, float16 or float32 array.
    fmt: element format.
    key: a jax.random key, for rounding="stochastic".
    **options: keyword arguments of `fp8jax.quantize` (scaling, axis,
      block_size, pow2, margin, rounding, overflow).

  Returns:
    An array like `x`.

  Example:
    >>> jax.grad(lambda v: fake_quant(v).sum())(jnp.array([1.0, 3.3]))
    Array([1., 1.], dtype=float32)
  """
  static = options.pop("scaling", "tensor")
  dynamic = None
  if not isinstance(static, str):
    static, dynamic = None, static
  config = (fmt, static, tuple(sorted(options.items())))
  return _fake_quant(config, x, key, dynamic)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fake_quant(config, x, key, scale):
  fmt, static, options = config
  q = scaling.quantize(x, fmt, scaling=static if scale is None else scale, key=key,
                       **dict(options))
  return scaling.dequantize(q, x.dtype)


def _forward(config, x, key, scale):
  return _fake_quant(config, x, key, scale), None


def _backward(config, residual, g):
  del config, residual
  return g, None, None


_fake_quant.defvjp(_forward, _backward)
