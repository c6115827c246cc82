"""FP8 matrix multiplication on quantized arrays: `dot` and `matmul`.

The codes go into `lax.dot_general` as float8 arrays (a bitcast, `as_float8`)
with a float32 `preferred_element_type`, and the scales are separate float32
multiplies of the result. That is the shape XLA's GPU compiler rewrites into
its FP8 GEMM (cuBLASLt on Hopper and later); on CPU XLA upcasts the float8
operands to float32, which is exact, so the result is the same computation.

Where a scale is constant along the contraction (per tensor, per row of `a`,
per column of `b`, tiles along the free axes) it multiplies the output once.
Where both operands are scaled in blocks along the contraction (1x128 blocks,
128x128 tiles, MX, NVFP4), the contraction is split into those blocks: one
dot_general gives a partial product per block, each partial is multiplied by
its two scales, and the partials are summed in float32. Everything else is
handled by dequantizing one operand to float32 first (see `dot`).

`scaled_matmul` hands MX and NVFP4 operands to XLA's block-scaled matmul
instead: `jax.nn.scaled_matmul` (cuDNN's block-scaled GEMM on Blackwell) on
CUDA, `jax.lax.scaled_dot` (which XLA decomposes) elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fp8jax.core import checks, codec, packing
from fp8jax.core.views import as_float8
from fp8jax.quant import nvfp4, scales
from fp8jax.quant.qarray import QArray
from fp8jax.quant.scaled import dequantize
from fp8jax.quant.spec import MX, NVFP4

_OUT_DTYPES = "float32, bfloat16 or float16"

DimensionNumbers = tuple[tuple[tuple[int, ...], tuple[int, ...]],
                         tuple[tuple[int, ...], tuple[int, ...]]]


class _Operand(NamedTuple):
  """One side of the product: unscaled values and the scale grid that multiplies them.

  `scale` (float32 or None) has the values' rank; along each axis it is
  constant (`block[d]` None, size 1) or holds one entry per run of
  `block[d]` values (the last run may be short).
  """

  values: jax.Array
  scale: jax.Array | None
  block: tuple[int | None, ...]


def _element_values(q: QArray) -> jax.Array:
  """The unscaled elements: a float8 view where XLA has one, else exact float32."""
  bits = q.bits
  if q.packed:
    bits = packing.unpack_codes(bits, q.shape[-1])
  if q.fmt.dtype is not None and q.fmt.bits == 8:
    return as_float8(bits, q.fmt)
  # FP6 / FP4: XLA stores these packed, so decode them (exactly) instead.
  return codec.decode_array(bits, q.fmt.bit_layout, np.dtype(np.float32))


def _scale_grid(q: QArray) -> tuple[jax.Array, tuple[int | None, ...]]:
  """q's scale as a float32 array of q's rank, and the run length along each axis."""
  shape = q.shape
  if q.granularity == NVFP4.kind:
    # Each block's multiplier, e4m3fn scale and tensor scale combined as dequantize does.
    scale = nvfp4.block_multipliers(q.scale, q.tensor_scale, q.spec)
  else:
    scale = jnp.asarray(scales.scale_f32(q.scale, q.granularity), jnp.float32)
  scale = scale.reshape(q.spec.grid_shape(shape))
  axes, blocks = q.spec.grouping(len(shape))
  blocked = {} if blocks is None else {a % len(shape): b for a, b in zip(axes, blocks, strict=False)}
  block = []
  for d in range(len(shape)):
    if scale.shape[d] == 1:
      block.append(None)  # constant along d (also when one block spans d)
    else:
      block.append(blocked.get(d, 1))
  return scale, tuple(block)


def _operand(x: Any) -> _Operand:
  if isinstance(x, QArray):
    scale, block = _scale_grid(x)
    return _Operand(_element_values(x), scale, block)
  return _Operand(x, None, (None,) * x.ndim)


def _dequantized(x: Any) -> _Operand:
  """x as plain float32 values: the scales applied element by element."""
  if isinstance(x, QArray):
    x = dequantize(x, jnp.float32)
  return _operand(x)


def _varying(op: _Operand, contracting: Sequence[int]) -> list[int]:
  """Indices into `contracting` of the axes along which op's scale changes."""
  return [i for i, d in enumerate(contracting) if op.block[d] is not None]


def _common_block(ga: int | None, gb: int | None) -> int | None:
  """A run length that lies inside one block of each side, or None if there is none
  worth using (per-element scales, or block sizes where neither divides the other)."""
  if ga is None or gb is None:
    g = ga if gb is None else gb
  elif ga % gb == 0 or gb % ga == 0:
    g = min(ga, gb)
  else:
    return None
  return g if g > 1 else None


def _expand(scale: jax.Array, axis: int, block: int | None, n: int) -> jax.Array:
  """Repeats each scale entry along `axis` over its run of `block`, cut to `n`."""
  if block is None or block == 1:
    return scale
  return jnp.repeat(scale, block, axis=axis, total_repeat_length=n)


def _split_contraction(values: jax.Array, axis: int, g: int) -> tuple[jax.Array, int]:
  """Pads `axis` with zeros to whole runs of g, splits it into (runs, g); returns the count."""
  n = values.shape[axis]
  runs = -(-n // g)
  if runs * g != n:
    pads = [(0, 0)] * values.ndim
    pads[axis] = (0, runs * g - n)
    values = jnp.pad(values, pads)
  values = values.reshape(values.shape[:axis] + (runs, g) + values.shape[axis + 1:])
  return values, runs


def _output_scale(op: _Operand, shape: Sequence[int], batch: Sequence[int],
                  contracting: Sequence[int], k: int | None, g: int | None, runs: int,
                  before: int, after: int) -> jax.Array:
  """op's scale laid out to broadcast against the output.

  The output is [runs] (with a split contraction) + batch + free axes of the
  left operand + free axes of the right one; `before` / `after` count the free
  axes of the other operand that come before / after this one's.
  """
  s = op.scale
  nd = len(shape)
  for d in range(nd):
    if d != k and d not in contracting:
      s = _expand(s, d, op.block[d], shape[d])
  free = [d for d in range(nd) if d not in batch and d not in contracting]
  rest = [d for d in contracting if d != k]  # constant along these: size 1
  order = ([k] if k is not None else []) + list(batch) + free + rest
  s = jnp.transpose(s, order)
  if k is not None:
    # The entry of each run of g: op's block j*g // block along k.
    s = _expand(s, 0, None if op.block[k] is None else op.block[k] // g, runs)
  lead = 1 if k is not None else 0
  s = s.reshape(s.shape[:lead + len(batch) + len(free)])
  out_free = (1,) * before + tuple(s.shape[lead + len(batch):]) + (1,) * after
  return s.reshape(tuple(s.shape[:lead + len(batch)]) + out_free)


@functools.partial(jax.jit, static_argnames=("dimension_numbers", "preferred_element_type"))
def _dot(a, b, *, dimension_numbers, preferred_element_type):
  (ca, cb), (ba, bb) = dimension_numbers
  shape_a, shape_b = tuple(a.shape), tuple(b.shape)
  opa, opb = _operand(a), _operand(b)
  # Scales that change along the contraction: per-element ones, or blocks on
  # more than one contracted axis, are applied to the operand (dequantized).
  va, vb = _varying(opa, ca), _varying(opb, cb)
  if len(va) > 1 or any(opa.block[ca[i]] == 1 for i in va):
    opa, va = _dequantized(a), []
  if len(vb) > 1 or any(opb.block[cb[i]] == 1 for i in vb):
    opb, vb = _dequantized(b), []
  if va and vb and va != vb:
    opb, vb = _dequantized(b), []
  pair = (va or vb or [None])[0]
  g = runs = None
  if pair is not None:
    g = _common_block(opa.block[ca[pair]], opb.block[cb[pair]])
    if g is None:  # block sizes that do not nest: apply b's scales inside
      opb, vb = _dequantized(b), []
      pair = va[0] if va else None
      g = None if pair is None else opa.block[ca[pair]]

  na, nb = len(shape_a), len(shape_b)
  dims = ((tuple(ca), tuple(cb)), (tuple(ba), tuple(bb)))
  xa, xb = opa.values, opb.values
  ka = kb = None
  if pair is not None:
    ka, kb = ca[pair], cb[pair]
    xa, runs = _split_contraction(xa, ka, g)
    xb, _ = _split_contraction(xb, kb, g)

    def shift(d, k):  # axis d after k became (runs, g): k itself maps to its g axis
      return d + 1 if d >= k else d

    ca2 = tuple(shift(d, ka) for d in ca)
    cb2 = tuple(shift(d, kb) for d in cb)
    # The runs axis goes first among the batch axes, so first in the output.
    dims = ((ca2, cb2), ((ka,) + tuple(shift(d, ka) for d in ba),
                         (kb,) + tuple(shift(d, kb) for d in bb)))
  wide = any(np.dtype(v.dtype) == np.float32 for v in (xa, xb))
  out = lax.dot_general(xa, xb, dims, precision=lax.Precision.HIGHEST if wide else None,
                        preferred_element_type=jnp.float32)
  free_a = na - len(ca) - len(ba)
  free_b = nb - len(cb) - len(bb)
  scales = []
  if opa.scale is not None:
    scales.append(_output_scale(opa, shape_a, ba, ca, ka, g, runs, 0, free_b))
  if opb.scale is not None:
    scales.append(_output_scale(opb, shape_b, bb, cb, kb, g, runs, free_a, 0))
  if scales:
    # One multiply by the product of the scales: for two per-tensor scales this is
    # dot(f8, f8) * broadcast(a_scale * b_scale), the form XLA's GPU compiler folds
    # into its FP8 GEMM call.
    out = out * functools.reduce(jnp.multiply, scales)
  if pair is not None:
    out = jnp.sum(out, axis=0)
  return out.astype(preferred_element_type)


def _check_operand(x: Any, argname: str) -> Any:
  if isinstance(x, QArray):
    return x
  checks.float_layout(x, argname)
  return jnp.asarray(x)


def _axes(value: Any, nd: int, what: str) -> tuple[int, ...]:
  try:
    axes = tuple(int(v) for v in value)
  except TypeError:
    raise ValueError(f"dimension_numbers: {what} must be a sequence of ints (got {value!r})"
                     ) from None
  for d in axes:
    if not -nd <= d < nd:
      raise ValueError(f"dimension_numbers: {what} axis {d} is out of range for a {nd}-D operand")
  axes = tuple(d % nd for d in axes)
  if len(set(axes)) != len(axes):
    raise ValueError(f"dimension_numbers: {what} repeats an axis ({value!r})")
  return axes


def check_dimension_numbers(value: Any, shape_a: Sequence[int], shape_b: Sequence[int]
                       ) -> DimensionNumbers:
  na, nb = len(shape_a), len(shape_b)
  if value is None:
    if na < 1 or nb < 1:
      raise ValueError("dot without dimension_numbers contracts a's last axis with b's first; "
                       f"a and b need at least one axis (got {na}-D and {nb}-D)")
    value = (((na - 1,), (0,)), ((), ()))
  try:
    (ca, cb), (ba, bb) = value
  except (TypeError, ValueError):
    raise ValueError("dimension_numbers must be ((a_contracting, b_contracting), (a_batch, "
                     f"b_batch)) as in lax.dot_general (got {value!r})") from None
  ca, ba = _axes(ca, na, "a contracting"), _axes(ba, na, "a batch")
  cb, bb = _axes(cb, nb, "b contracting"), _axes(bb, nb, "b batch")
  if len(ca) != len(cb) or len(ba) != len(bb):
    raise ValueError(f"dimension_numbers pair {len(ca)} contracting and {len(ba)} batch axes of "
                     f"a with {len(cb)} and {len(bb)} of b")
  if set(ca) & set(ba) or set(cb) & set(bb):
    raise ValueError("dimension_numbers: an axis cannot be both contracting and batch")
  for x, y, what in ((ca, cb, "contracting"), (ba, bb, "batch")):
    for i, j in zip(x, y, strict=False):
      if shape_a[i] != shape_b[j]:
        raise ValueError(f"dimension_numbers: {what} axes differ in length: a axis {i} has "
                         f"{shape_a[i]}, b axis {j} has {shape_b[j]}")
  return (ca, cb), (ba, bb)


def check_out_dtype(value: Any) -> np.dtype:
  try:
    dt = np.dtype(value)
  except TypeError:
    dt = None
  if dt not in (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16)):
    raise TypeError(f"preferred_element_type must be {_OUT_DTYPES} (got {value!r})")
  return dt


def dot(a: QArray | jax.Array, b: QArray | jax.Array, *, dimension_numbers: Any = None,
        preferred_element_type: Any = jnp.float32) -> jax.Array:
  """The product of two quantized arrays, `dequantize(a) · dequantize(b)`, without dequantizing.

  The codes enter `lax.dot_general` as float8 arrays (FP6/FP4 codes, which
  have no byte-sized XLA type, as exact float32), accumulate in float32, and
  the scales multiply the result:

  - constant along the contraction (per tensor, static, "axis" scales of a
    row of `a` or a column of `b`, blocks or tiles along the free and batch
    axes): one multiply of the output per operand, after the dot;
  - blocks along one contracted axis (1x128 blocks, 128x128 tiles, MX,
    NVFP4, whose block multipliers include the tensor scale): the
    contraction is split into runs of the block size (the smaller one when
    one side's block size divides the other's), `dot_general` gives one
    float32 partial product per run, each is multiplied by its two scales
    and the partials are summed. Memory: (K / block) partials of the output;
  - otherwise the operand's scales are applied element by element first
    (`dequantize(q, float32)`) and it enters the dot as float32: per-element
    scales along the contraction ("axis" scales of a column of `a` or a row
    of `b`), blocks on two contracted axes, and block sizes along K where
    neither divides the other (then `b` is the one dequantized).

  Either operand may be a plain bfloat16/float16/float32 array. Edges need
  not divide the block: the short last run is padded with zero codes.

  Args:
    a: a `QArray` or a float array.
    b: a `QArray` or a float array.
    dimension_numbers: as in `lax.dot_general`: `((a_contracting,
      b_contracting), (a_batch, b_batch))`. Default: a's last axis with b's
      first, no batch axes (`a @ b` for matrices).
    preferred_element_type: dtype of the result: float32 (default), bfloat16
      or float16. Accumulation and scaling are float32 either way; the result
      is rounded to this dtype once, at the end.

  Returns:
    An array of shape batch + a's free axes + b's free axes, as
    `lax.dot_general` orders them.

  Example:
    >>> a = fp8jax.quantize(jnp.ones((2, 3)), "e4m3fn", scaling="axis")
    >>> b = fp8jax.quantize(jnp.full((3, 4), 2.0), "e4m3fn", scaling="axis", axis=0)
    >>> dot(a, b)[0, 0]
    Array(6.0000005, dtype=float32)
  """
  a = _check_operand(a, "a")
  b = _check_operand(b, "b")
  dims = check_dimension_numbers(dimension_numbers, a.shape, b.shape)
  out_dtype = check_out_dtype(preferred_element_type)
  return _dot(a, b, dimension_numbers=dims, preferred_element_type=out_dtype)


def matmul(a: QArray | jax.Array, b: QArray | jax.Array, *,
           preferred_element_type: Any = jnp.float32) -> jax.Array:
  """`a @ b` for matrices, either of them a `QArray`: `dot` with the default axes.

  Args:
    a: `[M, K]`, a `QArray` (typically scaled per row, in 1x128 blocks or MX
      blocks along K) or a float array.
    b: `[K, N]`, a `QArray` (typically scaled per column, `axis=0`, or in
      128x128 tiles) or a float array.
    preferred_element_type: float32 (default), bfloat16 or float16.

  Returns:
    `[M, N]` in `preferred_element_type`.

  Example:
    >>> a = fp8jax.quantize(jnp.ones((2, 3)), "e4m3fn")
    >>> matmul(a, jnp.ones((3, 4)))[0, 0]
    Array(3.0000002, dtype=float32)
  """
  a = _check_operand(a, "a")
  b = _check_operand(b, "b")
  for x, name in ((a, "a"), (b, "b")):
    if len(x.shape) != 2:
      raise ValueError(f"matmul takes matrices; {name} has shape {tuple(x.shape)} "
                       "(use dot with dimension_numbers for other ranks)")
  return dot(a, b, preferred_element_type=preferred_element_type)



# --- block-scaled matmul: XLA's scaled_matmul / scaled_dot ---------------------

_SCALED_ELEMENTS = ("e4m3fn", "e5m2", "e2m1fn")


class ScaledOperand(NamedTuple):
  """A QArray as an operand of `jax.nn.scaled_matmul`.

  Attributes:
    values: `[B, M, K']` codes viewed as `float8_e4m3fn`, `float8_e5m2` or
      `float4_e2m1fn` (no arithmetic), K' = K padded with zero codes to whole
      blocks.
    scales: `[B, M, K' / block]` block scales viewed as `float8_e8m0fnu` (MX)
      or `float8_e4m3fn` (NVFP4; 16x16 tiles repeated over their 16 rows).
    tensor_scale: NVFP4: float32 `[B]`, the tensor's decode multiplier
      (`nvfp4.tensor_multiplier`), which multiplies the product; None for MX.
  """

  values: jax.Array
  scales: jax.Array
  tensor_scale: jax.Array | None


def _check_scaled(q: Any, name: str) -> QArray:
  if not isinstance(q, QArray):
    raise TypeError(f"{name} must be a QArray (got {type(q).__name__})")
  if q.granularity not in (MX.kind, NVFP4.kind):
    raise ValueError(f"{name} must be scaled with scaling='mx' or 'nvfp4' for a block-scaled "
                     f"matmul (got scaling={q.granularity!r})")
  if q.fmt.name not in _SCALED_ELEMENTS:
    raise ValueError(f"{name}: block-scaled matmul takes elements "
                     f"{', '.join(_SCALED_ELEMENTS)} (got {q.fmt.name!r})")
  if len(q.shape) not in (2, 3):
    raise ValueError(f"{name} must be [M, K] or [B, M, K] (got shape {q.shape})")
  if q.axes[-1] != -1:
    raise ValueError(f"{name} must be scaled in blocks along its last axis, the contraction "
                     f"(got blocks along axis {q.axes[-1]})")
  return q


@jax.jit
def _operands(q: QArray) -> ScaledOperand:
  shape = q.shape
  block = q.block[-1]
  bits = packing.unpack_codes(q.bits, shape[-1]) if q.packed else q.bits
  pad = -shape[-1] % block
  if pad:
    bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, pad)])
  if q.fmt.bits == 8:
    values = as_float8(bits, q.fmt)
  else:  # two codes per byte, low nibble first: XLA's float4 layout
    packed = packing.pack_codes(bits)
    values = lax.bitcast_convert_type(packed, jnp.float4_e2m1fn).reshape(bits.shape)
  scale_dtype = jnp.float8_e8m0fnu if q.granularity == MX.kind else jnp.float8_e4m3fn
  block_scales = lax.bitcast_convert_type(q.scale, scale_dtype)
  if len(q.block) == 2:  # 16x16 tiles: one scale row per 16 rows
    block_scales = jnp.repeat(block_scales, q.block[0], axis=-2,
                              total_repeat_length=shape[-2])
  tensor = None
  if q.granularity == NVFP4.kind:
    tensor = nvfp4.tensor_multiplier(q.tensor_scale, q.spec.granularity.rule)
  if len(shape) == 2:
    values, block_scales = values[None], block_scales[None]
  if tensor is not None:
    tensor = jnp.broadcast_to(tensor.reshape(-1), values.shape[:1])
  return ScaledOperand(values, block_scales, tensor)


def scaled_matmul_operands(q: QArray) -> ScaledOperand:
  """A QArray as `jax.nn.scaled_matmul` operands: codes and scales viewed as XLA's types.

  MX (e4m3fn, e5m2, e2m1fn elements) and NVFP4 QArrays of shape `[M, K]` or
  `[B, M, K]`, scaled in blocks along the last axis (the contraction, as
  `jax.nn.scaled_matmul` wants for both operands: a weight `[out, in]` as
  it is stored). Nothing is converted: the codes become `float8_*` /
  `float4_e2m1fn` arrays and the scale codes `float8_e8m0fnu` /
  `float8_e4m3fn` arrays by bitcasts; a ragged K is padded with zero codes.

  Args:
    q: a QArray from `quantize(..., scaling="mx" or "nvfp4")`.

  Returns:
    A `ScaledOperand` (values, scales, tensor_scale).

  Example:
    >>> q = fp8jax.quantize(jnp.ones((4, 64)), "e4m3fn", scaling="mx")
    >>> v, s, t = scaled_matmul_operands(q)
    >>> v.shape, v.dtype, s.shape, s.dtype, t
    ((1, 4, 64), dtype(float8_e4m3fn), (1, 4, 2), dtype(float8_e8m0fnu), None)
  """
  return _operands(_check_scaled(q, "q"))


def _block_scaled(a: ScaledOperand, b: ScaledOperand) -> jax.Array:
  """[B, M, K] x [B, N, K] -> [B, M, N] float32, by XLA's block-scaled matmul."""
  def cudnn(va, vb, sa, sb):
    return jax.nn.scaled_matmul(va, vb, sa, sb, preferred_element_type=jnp.float32)

  def decomposed(va, vb, sa, sb):
    return lax.scaled_dot(va, vb, lhs_scale=sa, rhs_scale=sb,
                          dimension_numbers=(((2,), (2,)), ((0,), (0,))),
                          preferred_element_type=jnp.float32)

  args = (a.values, b.values, a.scales, b.scales)
  return lax.platform_dependent(*args, cuda=cudnn, default=decomposed)


@functools.partial(jax.jit, static_argnames=("preferred_element_type",))
def _scaled_matmul(a, b, *, preferred_element_type):
  oa, ob = _operands(a), _operands(b)
  out = _block_scaled(oa, ob)
  if oa.tensor_scale is not None:
    out = out * (oa.tensor_scale * ob.tensor_scale)[:, None, None]
  if len(a.shape) == 2:
    out = out[0]
  return out.astype(preferred_element_type)


def scaled_matmul(a: QArray, b: QArray, *, preferred_element_type: Any = jnp.float32
                  ) -> jax.Array:
  """`a @ b.T` of two MX or NVFP4 QArrays, by XLA's block-scaled matmul.

  Both operands are scaled along their last axis, the contraction: `a` is
  `[M, K]` (or `[B, M, K]`), `b` is `[N, K]` (or `[B, N, K]`), a weight as
  stored `[out, in]`. The codes and scales go to `jax.nn.scaled_matmul`
  as they are (`scaled_matmul_operands`), which lowers to cuDNN's
  block-scaled GEMM on Blackwell GPUs; on other platforms to
  `jax.lax.scaled_dot`, which XLA decomposes (elements times scales,
  exactly, in bfloat16; a float32 dot). NVFP4 tensor scales multiply the
  float32 product. Equal to `dequantize(a) @ dequantize(b).T` within float32
  accumulation error (tests/test_block_scaled_dot.py derives the bound).

  Args:
    a: MX or NVFP4 QArray `[M, K]` or `[B, M, K]`.
    b: a QArray of the same kind and block size, `[N, K]` or `[B, N, K]`.
    preferred_element_type: float32 (default), bfloat16 or float16.

  Returns:
    `[M, N]` (or `[B, M, N]`) in `preferred_element_type`.

  Example:
    >>> a = fp8jax.quantize(jnp.ones((2, 64)), "e4m3fn", scaling="mx")
    >>> b = fp8jax.quantize(jnp.full((3, 64), 0.5), "e4m3fn", scaling="mx")
    >>> scaled_matmul(a, b)
    Array([[32., 32., 32.],
           [32., 32., 32.]], dtype=float32)
  """
  a = _check_scaled(a, "a")
  b = _check_scaled(b, "b")
  if a.granularity != b.granularity or a.block[-1] != b.block[-1]:
    raise ValueError(f"a and b must be scaled alike (got {a.spec.spelling()!r} and "
                     f"{b.spec.spelling()!r})")
  if len(a.shape) != len(b.shape) or a.shape[-1] != b.shape[-1] or a.shape[:-2] != b.shape[:-2]:
    raise ValueError(f"scaled_matmul takes a [B, M, K] and b [B, N, K] (or [M, K] and [N, K]) "
                     f"with the same B and K (got {a.shape} and {b.shape})")
  out_dtype = check_out_dtype(preferred_element_type)
  return _scaled_matmul(a, b, preferred_element_type=out_dtype)
