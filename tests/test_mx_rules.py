"""MX shared-exponent rules against torchao's own `to_mx` (ScaleCalculationMode), bit for bit.

`quantize(x, fmt, scaling="mx", scale_rounding=rule)`: "rceil", "ceil" and "even"
reproduce torchao 0.18's FLOOR/RCEIL/CEIL/EVEN modes, edge rules included (NaN and
infinite blocks, all-zero blocks, amax near float32's largest, subnormal amax): the
e8m0 scale codes, the element codes and the dequantized float32 values (torchao's
`to_dtype`). "floor" is OCP MX v1.0's rule as fp8jax always computed it; it equals
torchao's FLOOR on every block with a finite, nonzero amax and a nonzero code, and the
test counts and checks the blocks where the two differ by design.

torchao needs whole blocks, so ragged inputs reach it padded with zeros (the padding is
what fp8jax's short last block sees too). The counts of compared elements are kept in
COUNTS and printed by the last test (`pytest -s`).
"""

from __future__ import annotations

import collections
import math
import warnings

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from tests.block_inputs import BF16, pad_last, same_bits, wide

torch = pytest.importorskip("torch", reason="the peer comparisons need torch (extra 'torch')")
with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor",
                                  reason="the MX comparisons need torchao (extra 'test')")
  from torchao.prototype.mx_formats.config import ScaleCalculationMode
  from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
  from torchao.prototype.mx_formats.kernels import unpack_uint4

ELEMENTS = {
    "e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2, "e2m3fn": DTYPE_FP6_E2M3,
    "e3m2fn": DTYPE_FP6_E3M2, "e2m1fn": torch.float4_e2m1fn_x2,
}
MODES = {"floor": ScaleCalculationMode.FLOOR, "rceil": ScaleCalculationMode.RCEIL,
         "ceil": ScaleCalculationMode.CEIL, "even": ScaleCalculationMode.EVEN}
SHAPE = (3, 40, 100)  # the last axis ragged: 3 whole blocks and a short one
COUNTS: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)


def _torch(x: np.ndarray):
  if x.dtype == BF16:
    return torch.from_numpy(x.view(np.uint16).copy()).view(torch.bfloat16)
  return torch.from_numpy(x.copy())


def torchao_mx(x: np.ndarray, fmt: str, rule: str):
  """torchao's (scale codes, element codes, dequantized float32) of x, cut to x's blocks."""
  padded = pad_last(x, 32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    scale, data = mx_tensor.to_mx(_torch(padded), ELEMENTS[fmt], 32, MODES[rule])
    deq = mx_tensor.to_dtype(data, scale, ELEMENTS[fmt], 32, torch.float32)
  if fmt == "e2m1fn":
    codes = unpack_uint4(data.contiguous().view(torch.uint8))
  else:
    codes = data.contiguous().view(torch.uint8)
  n, nb = x.shape[-1], math.ceil(x.shape[-1] / 32)
  return (scale.view(torch.uint8).numpy()[..., :nb], codes.numpy()[..., :n],
          deq.numpy()[..., :n])


def _expand(blocks: np.ndarray, n: int) -> np.ndarray:
  return np.repeat(blocks, 32, axis=-1)[..., :n]


def _block_amax(x: np.ndarray) -> np.ndarray:
  """torch.amax(|x|) per block: NaN if any NaN, as float64."""
  a = np.abs(pad_last(x, 32).astype(np.float64))
  a = a.reshape(a.shape[:-1] + (-1, 32))
  nan = np.isnan(a).any(-1)
  return np.where(nan, np.nan, np.nanmax(np.where(np.isnan(a), 0, a), -1))


def _nan_codes(codes: np.ndarray, fmt) -> np.ndarray:
  if not fmt.has_nan:
    return np.zeros(codes.shape, bool)
  return np.isnan(codes.view(fmt.dtype).astype(np.float32))


def compare(x: np.ndarray, fmt_name: str, rule: str) -> None:
  fmt = fp8jax.FORMATS[fmt_name]
  want_scale, want_codes, want_deq = torchao_mx(x, fmt_name, rule)
  # torchao clamps before its casts: satfinite (matters for e5m2's infinities).
  q = fp8jax.quantize(jnp.asarray(x), fmt, scaling="mx", scale_rounding=rule,
                      overflow="satfinite")
  assert q.spec.granularity == fp8jax.MX(-1, rule)
  got_scale = np.asarray(q.scale)
  got_codes = np.asarray(q.bits)
  got_deq = np.asarray(fp8jax.dequantize(q, jnp.float32))
  n = x.shape[-1]
  key = (rule, fmt_name, str(x.dtype))
  if rule == "floor":
    # Where the OCP floor and torchao's FLOOR part by design.
    amax = _block_amax(x)
    regular = np.isfinite(amax) & (amax > 0) & (want_scale > 0)
    odd = ~regular
    np.testing.assert_array_equal(got_scale[regular], want_scale[regular])
    zero = amax == 0
    np.testing.assert_array_equal(got_scale[zero], 127)  # OCP: X = 1; torchao: code 0
    np.testing.assert_array_equal(want_scale[zero], 0)
    COUNTS[key]["floor: blocks torchao computes otherwise"] += int(odd.sum())
    COUNTS[key]["floor: of which scale codes differ"] += int((got_scale != want_scale)[odd].sum())
    keep = _expand(regular, n)
  else:
    np.testing.assert_array_equal(got_scale, want_scale)
    keep = np.ones(x.shape, bool)
  if not fmt.has_nan:
    # FP6 / FP4 have no NaN code: torchao writes its bit formula's result for NaN (1.5 for
    # +NaN in e2m1), fp8jax its NaN convention; the block scale makes both NaN.
    keep &= _expand(want_scale != 255, n) & ~np.isnan(x.astype(np.float32))
  both_nan = _nan_codes(got_codes, fmt) & _nan_codes(want_codes, fmt)  # NaN signs: x86's
  same = (got_codes == want_codes) | both_nan
  assert same[keep].all(), (
      f"{key}: {int((~same & keep).sum())} codes differ, e.g. x={x[~same & keep][:4]} "
      f"got {got_codes[~same & keep][:4]} want {want_codes[~same & keep][:4]}")
  deq_keep = keep if rule == "floor" else np.ones(x.shape, bool)
  ok = same_bits(got_deq, want_deq)
  assert ok[deq_keep].all(), (key, got_deq[~ok & deq_keep][:4], want_deq[~ok & deq_keep][:4])
  COUNTS[key]["elements compared"] += int(keep.sum())
  COUNTS[key]["dequantized compared"] += int(deq_keep.sum())
  COUNTS[key]["scales compared"] += int(want_scale.size if rule != "floor" else regular.sum())


CASES = [(rule, fmt, dtype) for rule in MODES for fmt in ELEMENTS
         for dtype in (BF16, np.dtype(np.float32))
         if dtype == BF16 or fmt in ("e4m3fn", "e2m1fn")]  # float32: the 8- and 4-bit ends


@pytest.mark.parametrize("rule,fmt,dtype", CASES, ids=str)
def test_matches_torchao_to_mx(rule, fmt, dtype):
  # A 3-D input with a ragged last axis: plain wide-range blocks and every edge kind.
  compare(wide(SHAPE, dtype, seed=CASES.index((rule, fmt, dtype)), block=32), fmt, rule)


@pytest.mark.parametrize("rule", ["rceil", "ceil", "even"])
def test_edge_blocks_match_torchao(rule):
  """One block per edge case, each rule's code spelled out (e4m3fn: emax 8, mbits 3)."""
  f32max = float(np.finfo(np.float32).max)
  blocks = {
      "zero": [0.0] * 32,
      "nan": [1.0, np.nan] + [2.0] * 30,
      "inf": [1.0, -np.inf] + [2.0] * 30,
      "nan_inf": [np.nan, np.inf] + [2.0] * 30,
      "f32max": [f32max] + [1.0] * 31,
      "near_f32max": [f32max * 0.99] + [-1.0] * 31,
      "subnormal": [2.0**-140, -(2.0**-149)] + [0.0] * 30,
      "tiny_normal": [2.0**-120, 3 * 2.0**-124] + [2.0**-126] * 30,
      "pow2": [256.0] + [1.0] * 31,
      "just_above_pow2": [float(np.nextafter(np.float32(256), np.float32(512)))] + [1.0] * 31,
      "even_carry": [496.0] + [1.0] * 31,  # 1.9375 * 2^8 rounds up to 2^9 at 3 mantissa bits
  }
  x = np.array(list(blocks.values()), np.float32)
  compare(x, "e4m3fn", rule)
  want = {  # e8m0 codes from the module table in fp8jax/quant/scales.py
      "rceil": {"zero": 0, "nan": 255, "inf": 254, "nan_inf": 255, "f32max": 127 + 120,
                "subnormal": 0, "tiny_normal": 0, "pow2": 127, "just_above_pow2": 127,
                "even_carry": 128},
      "ceil": {"zero": 0, "nan": 255, "inf": 255 - 8, "nan_inf": 255, "f32max": 127 + 120,
               "subnormal": 0, "tiny_normal": 0, "pow2": 127, "just_above_pow2": 128,
               "even_carry": 128},
      "even": {"zero": 0, "nan": 255, "inf": 255 - 8, "nan_inf": 255, "f32max": 127 + 120,
               "subnormal": 0, "tiny_normal": 0, "pow2": 127, "just_above_pow2": 127,
               "even_carry": 128},
  }[rule]
  got = np.asarray(fp8jax.quantize(jnp.asarray(x), "e4m3fn", scaling="mx",
                                   scale_rounding=rule).scale)[:, 0]
  for i, name in enumerate(blocks):
    if name in want:
      assert got[i] == want[name], (rule, name, got[i], want[name])


def test_rceil_is_the_exact_ceiling_where_torchao_cpu_log2_rounds():
  """torchao's CPU fallback for RCEIL is ceil(torch.log2(amax / max)) in float32; just
  above a power of two far from 1 the float32 log2 rounds to the integer and the code
  comes out one lower. fp8jax computes the exact ceiling, as cuBLAS, TransformerEngine and
  torchao's own Blackwell path (cvt.rp.satfinite.ue8m0x2.f32) do."""
  descale = np.float32(2.0**-9) * np.nextafter(np.float32(1), np.float32(2))  # 2^-9 (1 + 2^-23)
  amax = np.float32(descale * np.float32(448))
  assert np.float32(amax / np.float32(448)) == descale
  x = np.zeros((1, 32), np.float32)
  x[0, 0] = amax
  log2 = torch.log2(torch.tensor([descale], dtype=torch.float32)).item()
  want, _, _ = torchao_mx(x, "e4m3fn", "rceil")
  got = np.asarray(fp8jax.quantize(jnp.asarray(x), "e4m3fn", scaling="mx",
                                   scale_rounding="rceil").scale)
  assert got[0, 0] == 127 - 9 + 1  # 2^-8: ceil(log2(2^-9 (1 + 2^-23))) = -8
  if log2 == -9.0:  # torch's float32 log2 rounded: torchao gives one code lower
    assert want[0, 0] == got[0, 0] - 1
  else:
    assert want[0, 0] == got[0, 0]


def test_the_keyword_and_the_spec_give_the_same_packed_codes():
  x = wide((16, 64), np.float32, 3, 32)
  for rule in ("rceil", "even"):
    q = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="mx", scale_rounding=rule, pack=True)
    assert q.scale.dtype == jnp.uint8 and q.scale.shape == (16, 2)
    assert q.spec == fp8jax.QuantSpec("e2m1fn", fp8jax.MX(-1, rule), pack=True)
    q2 = fp8jax.quantize(jnp.asarray(x), fp8jax.QuantSpec("e2m1fn", fp8jax.MX(rule=rule),
                                                         pack=True))
    np.testing.assert_array_equal(np.asarray(q.bits), np.asarray(q2.bits))
    np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(q2.scale))


@pytest.mark.parametrize("call,match", [
    (lambda x: fp8jax.quantize(x, "e4m3fn", scaling="block", block_size=32,
                               scale_rounding="ceil"), "scale_rounding applies to scaling='mx'"),
    (lambda x: fp8jax.quantize(x, "e4m3fn", scale_rounding="ceil"),
     "scale_rounding applies to scaling='mx'"),
    (lambda x: fp8jax.quantize(x, "e4m3fn", scaling="mx", scale_rounding="nearest"),
     "the MX rule must be one of 'floor', 'rceil', 'ceil', 'even'"),
    (lambda x: fp8jax.quantize(x, fp8jax.QuantSpec("e4m3fn", fp8jax.MX()),
                               scale_rounding="ceil"), "not both"),
])
def test_bad_rule_arguments_are_named_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.ones((2, 64), jnp.float32))


def test_spelling_round_trips_every_rule():
  for rule in MODES:
    spec = fp8jax.QuantSpec("e4m3fn", fp8jax.MX(rule=rule))
    assert fp8jax.QuantSpec.parse("e4m3fn", spec.spelling()) == spec
  assert fp8jax.QuantSpec("e4m3fn", fp8jax.MX()).spelling() == "mx"


def test_zz_report_counts():
  print()
  for key in sorted(COUNTS):
    print("mx", *key, dict(COUNTS[key]))
  assert ml_dtypes  # keeps the import for the bfloat16 dtype used above
