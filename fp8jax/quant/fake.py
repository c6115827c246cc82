"""`fake_quant`: quantize then dequantize, with a straight-through gradient."""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.typing import ArrayLike

from fp8jax.core.formats import FormatLike
from fp8jax.quant import scaled
from fp8jax.quant.spec import QuantSpec


def fake_quant(x: ArrayLike, fmt: QuantSpec | FormatLike = "e4m3fn", *,
               key: jax.Array | None = None, **options: Any) -> jax.Array:
  """`dequantize(quantize(x, fmt, **options), x.dtype)`, differentiable.

  The forward pass is the quantization round trip. The backward pass is the
  straight-through estimator: the incoming gradient passes unchanged, to
  every element, in range or not; values that saturated (beyond a static or
  delayed scale's range) keep their gradient too, as in the usual FP8
  training recipes, rather than being cut to zero. Scales get no gradient.

  Args:
    x: bfloat16, float16 or float32 array.
    fmt: a `QuantSpec`, or the element format.
    key: a jax.random key, for rounding="stochastic".
    **options: with a format, keyword arguments of `fp8jax.quantize`
      (scaling, axis, block_size, pow2, margin, rounding, overflow); with a
      `Static` spec, `scale`.

  Returns:
    An array like `x`.

  Example:
    >>> jax.grad(lambda v: fake_quant(v).sum())(jnp.array([1.0, 3.3]))
    Array([1., 1.], dtype=float32)
  """
  if isinstance(fmt, QuantSpec):
    spec, scale, arg = fmt, options.pop("scale", None), "scale"
    if options:
      raise TypeError(f"fake_quant(x, spec) takes only key and scale (got {sorted(options)})")
  else:
    scaling = options.pop("scaling", "tensor")
    scale, arg = (None if isinstance(scaling, str) else scaling), "scaling"
    spec = QuantSpec.from_options(fmt, scaling, **options)
  return _fake_quant((spec, arg), x, key, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fake_quant(config, x, key, scale):
  spec, arg = config
  q = scaled.quantize_as(x, spec, key, scale, arg)
  return scaled.dequantize(q, x.dtype)


def _forward(config, x, key, scale):
  return _fake_quant(config, x, key, scale), None


def _backward(config, residual, g):
  del config, residual
  return g, None, None


_fake_quant.defvjp(_forward, _backward)
