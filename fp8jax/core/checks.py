"""Argument checks shared by the public functions; each names the argument."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fp8jax.core import kernel, layout


def _is_torch(x: Any) -> bool:
  return type(x).__module__.split(".")[0] == "torch"


def dtype_of(x: Any, argname: str) -> np.dtype:
  if _is_torch(x):
    raise TypeError(f"{argname} must be a JAX or NumPy array (got torch.Tensor); convert it "
                    "with interop.to_jax, or use the interop functions, which take torch tensors")
  dtype = getattr(x, "dtype", None)
  if dtype is None or not hasattr(x, "shape"):
    raise TypeError(f"{argname} must be an array (got {type(x).__name__}); "
                    "wrap Python numbers with jnp.asarray(..., dtype) to choose the dtype")
  return np.dtype(dtype)


def float_layout(x: Any, argname: str) -> layout.BitLayout:
  """The layout of a bfloat16/float16/float32 array, else TypeError."""
  dtype = dtype_of(x, argname)
  if dtype not in layout.FLOAT_LAYOUTS:
    raise TypeError(f"{argname} must be {layout.FLOAT_NAMES} (got {dtype})")
  return layout.FLOAT_LAYOUTS[dtype]


def target_layout(dtype: Any, argname: str) -> tuple[np.dtype, layout.BitLayout]:
  try:
    dt = np.dtype(dtype)
  except TypeError:
    dt = None
  if dt not in layout.FLOAT_LAYOUTS:
    raise TypeError(f"{argname} must be {layout.FLOAT_NAMES} (got {dtype!r})")
  return dt, layout.FLOAT_LAYOUTS[dt]


def code_array(bits: Any, argname: str) -> None:
  dtype = dtype_of(bits, argname)
  if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
    raise TypeError(f"{argname} must be uint8 (or int8) codes (got {dtype})")


def rounding_name(value: Any) -> None:
  if value not in kernel.ROUNDINGS:
    raise ValueError(f"rounding must be one of {', '.join(map(repr, kernel.ROUNDINGS))} "
                     f"(got {value!r})")


def rounding(value: Any, key: Any) -> None:
  rounding_name(value)
  if value == kernel.STOCHASTIC:
    if key is None:
      raise ValueError("rounding='stochastic' needs key=jax.random.key(...)")
    if _is_torch(key) or not _is_key(key):
      raise TypeError("key must be a jax.random key: jax.random.key(seed) or "
                      f"jax.random.PRNGKey(seed) (got {_describe(key)})")
    single = () if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else (2,)
    if tuple(key.shape) != single:
      raise ValueError(f"key must be a single key, of shape {single} (got shape "
                       f"{tuple(key.shape)}); jax.vmap the call for a key per slice")
  elif key is not None:
    raise ValueError(f"key is only used with rounding='stochastic' (got rounding={value!r})")


def overflow(value: Any) -> None:
  if value not in kernel.OVERFLOWS:
    raise ValueError(f"overflow must be one of {', '.join(map(repr, kernel.OVERFLOWS))} "
                     f"(got {value!r})")


def _is_key(key: Any) -> bool:
  dtype = getattr(key, "dtype", None)
  if dtype is None:
    return False
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return True
  # A raw key from jax.random.PRNGKey: uint32 with trailing dimension 2.
  return np.dtype(dtype) == np.uint32 and tuple(key.shape[-1:]) == (2,)


def _describe(x: Any) -> str:
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    return type(x).__name__
  return f"{dtype}{list(getattr(x, 'shape', ()))}"


def scale_factor(value: Any, argname: str, shape: tuple[int, ...], *,
                 positive: bool = False) -> jax.Array:
  """Checks a scale where it is known now and returns it as float32.

  Finite and nonzero (and positive, if asked), broadcastable to `shape`
  without changing it. A traced scale (inside `jax.jit`) is returned as
  given: it cannot be checked before run time, and IEEE rules apply to it.
  """
  if isinstance(value, bool) or not isinstance(
      value, (int, float, np.integer, np.floating, np.ndarray, jax.Array)):
    raise TypeError(f"{argname} must be a number or a float array (got {type(value).__name__})")
  dtype = getattr(value, "dtype", None)
  if dtype is not None and not (jnp.issubdtype(dtype, jnp.floating)
                                or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"{argname} must be a real number or array (got {np.dtype(dtype)})")
  if isinstance(value, jax.core.Tracer):
    return value.astype(jnp.float32)
  with np.errstate(over="ignore"):
    arr = np.asarray(value, dtype=np.float32)
  if not np.all(np.isfinite(arr)) or np.any(arr == 0):
    raise ValueError(f"{argname} must be finite and nonzero in float32 (got {value!r})")
  if positive and np.any(arr < 0):
    raise ValueError(f"{argname} must be positive (got {value!r})")
  try:
    ok = np.broadcast_shapes(arr.shape, tuple(shape)) == tuple(shape)
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"{argname} of shape {arr.shape} must broadcast to the input's shape "
                     f"{tuple(shape)}")
  return jnp.asarray(arr)


def is_one(scale: jax.Array) -> bool:
  """Whether a checked scale is the concrete scalar 1 (scaling can be skipped)."""
  return (not isinstance(scale, jax.core.Tracer) and scale.ndim == 0
          and float(scale) == 1.0)


def out(value: Any, shape: tuple[int, ...], dtype: np.dtype, like: Any = None) -> None:
  """Checks `out=` against the result it will receive and the input `like`."""
  if value is None:
    return
  if not isinstance(value, jax.Array):
    raise TypeError(f"out must be a jax.Array (got {type(value).__name__})")
  if isinstance(value, jax.core.Tracer):
    return
  if value.is_deleted():
    raise ValueError("out was donated to an earlier call and holds no buffer; pass the array "
                     "that call returned")
  if (isinstance(like, jax.Array) and not isinstance(like, jax.core.Tracer)
      and value.sharding != like.sharding):
    raise ValueError(f"out must be on the input's devices {sorted(like.devices(), key=str)} "
                     f"with its sharding (got {sorted(value.devices(), key=str)})")
  if tuple(value.shape) != tuple(shape) or np.dtype(value.dtype) != np.dtype(dtype):
    raise ValueError(f"out must have shape {tuple(shape)} and dtype {np.dtype(dtype)} "
                     f"(got shape {tuple(value.shape)} and dtype {value.dtype})")


def scale_or_none(scaling_factor: Any, shape: tuple[int, ...]) -> jax.Array | None:
  """The checked `scaling_factor`, or None for 1.0, which skips scaling."""
  if type(scaling_factor) in (int, float) and scaling_factor == 1:
    return None  # the default: no array to build and read back on every call
  scale = scale_factor(scaling_factor, "scaling_factor", shape)
  return None if is_one(scale) else scale
