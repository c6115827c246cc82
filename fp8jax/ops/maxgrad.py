"""A float32 whose cotangents accumulate by max: delayed-scaling state shared by call sites.

Autodiff adds the cotangents of a value used in several places. For the
"overwrite with gradient" state of `fp8_dot_general` (the next amax history
and scale, returned as the state's cotangent) a sum is wrong: two call sites
with amaxes 1 and 2 would record 3. An array of this dtype accumulates by max
instead, so the shared history records 2, the amax of the whole step.

JAX has no public API for a custom cotangent accumulation; this is the
extended-dtype mechanism Flax's FP8 ops use for the same purpose (its
`fp32_max_grad`), written against JAX's internal dtype rules. Arrays of this
dtype exist only inside a traced function (`jax.jit`): they are created by
`tied` and converted back before anything leaves it.
"""

from __future__ import annotations

import dataclasses

from jax import lax
import jax.numpy as jnp
import numpy as np

try:  # JAX internals: a JAX that moved them loses only `tied`, with a clear error
  from jax._src import core as _core, dtypes as _dtypes
except ImportError:  # pragma: no cover
  _core = _dtypes = None


def _define():
  """The dtype, built from JAX's extended-dtype rules; None where they are missing."""
  class _Rules:
    """How JAX stores, converts and accumulates the max-accumulating float32."""

    @staticmethod
    def physical_element_aval(dtype):
      return _core.ShapedArray((), dtype.float_dtype)

    @staticmethod
    def convert_from(dtype, other) -> bool:
      return dtype.float_dtype == other

    @staticmethod
    def convert_to(other, dtype) -> bool:
      return dtype.float_dtype == other

    @staticmethod
    def add(dtype, x, y):
      return to_max(lax.max(from_max(x), from_max(y)))

    @staticmethod
    def zero(dtype):
      return to_max(np.array(-np.inf, dtype.float_dtype))

    @staticmethod
    def tangent_dtype(dtype):
      return dtype

    @staticmethod
    def full(shape, fill_value, dtype):
      value = lax.convert_element_type(fill_value, dtype.float_dtype)
      return to_max(lax.full(shape, value, dtype.float_dtype))

  class _maxgrad(_dtypes.extended):
    pass

  @dataclasses.dataclass(frozen=True)
  class _MaxGradType(_dtypes.ExtendedDType):
    float_dtype: np.dtype
    _rules: type = _Rules
    type: type = _maxgrad
    name: str = "float32_maxgrad"

  return _MaxGradType(np.dtype(np.float32))


try:
  MAX_F32 = None if _dtypes is None else _define()
except (AttributeError, TypeError):  # pragma: no cover
  MAX_F32 = None


def is_max(x) -> bool:
  return MAX_F32 is not None and getattr(x, "dtype", None) == MAX_F32


def to_max(x):
  """float32 -> the max-accumulating float32 (same values)."""
  if MAX_F32 is None:
    raise NotImplementedError("fp8jax.tied needs JAX's extended dtypes, which this JAX "
                              "version does not provide; give each call site its own state")
  return lax.convert_element_type(jnp.asarray(x, jnp.float32), MAX_F32)


def from_max(x):
  """The max-accumulating float32 -> float32 (same values); float32 passes through."""
  return lax.convert_element_type(x, np.dtype(np.float32)) if is_max(x) else x
