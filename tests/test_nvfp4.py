"""NVFP4, each rule against its stack, bit for bit: element codes, e4m3fn block scales,
the float32 tensor scale and the dequantized float32 values.

- "torchao": torchao 0.18's own `NVFP4Tensor.to_nvfp4` (`nvfp4_quantize`) with
  `per_tensor_scale=per_tensor_amax_to_scale(amax)`, and its `dequantize`; stacked
  experts through its 3-D path (one scale per expert).
- "compressed-tensors": compressed-tensors 0.20's own functions, as llm-compressor's
  min-max observer drives them: `generate_gparam` and `calculate_qparams` on the min and
  max in the weight's dtype, `quantize_and_pack_fp4` (the NVFP4 compressor's path) and
  `dequantize`; stacked experts one expert at a time (one Linear each).
- "te" and "modelopt": TransformerEngine needs CUDA and ModelOpt is not installed, so
  these compare with transcriptions of their published code (tests/nvfp4_reference.py).

Peers that need whole blocks see the input padded with zeros. Where a stack's own
arithmetic makes a scaled value NaN (a NaN input, or 0 * inf), it writes a code of its
arithmetic's choosing (torchao: 1.5 for +NaN) and fp8jax its NaN convention; those
positions are left out of the code and value comparisons (and counted), except where a
NaN block scale makes both dequantized values NaN.
"""

from __future__ import annotations

import collections
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8jax
from tests.block_inputs import BF16, pad_last, same_bits, wide

torch = pytest.importorskip("torch", reason="the peer comparisons need torch (extra 'torch')")
with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  nvfp4_tensor = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor",
                                     reason="the NVFP4 comparisons need torchao (extra 'test')")
  from torchao.prototype.mx_formats.kernels import unpack_uint4
  ct_helpers = pytest.importorskip("compressed_tensors.quantization.utils",
                                   reason="needs compressed-tensors (extra 'test')")
  from compressed_tensors.compressors.nvfp4.helpers import (
      quantize_and_pack_fp4,
      unpack_fp4_from_uint8,
  )
  from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
  from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

from tests import nvfp4_reference as ref  # noqa: E402  (needs torch)

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
RULES = ("torchao", "te", "modelopt", "compressed-tensors")
CT_ARGS = PRESET_SCHEMES["NVFP4"]["weights"]
TORCH_DTYPE = {BF16: torch.bfloat16, F16: torch.float16, F32: torch.float32}
FINITE = {"zero": 0.05, "tiny": 0.05, "small": 0.05, "neg_zero": 0.05}
COUNTS: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)


def _torch(x: np.ndarray) -> torch.Tensor:
  if x.dtype == BF16:
    return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
  return torch.from_numpy(x.copy())


def _nibbles(packed: torch.Tensor) -> np.ndarray:
  p = packed.contiguous().view(torch.uint8).numpy()
  return np.stack([p & 0xF, p >> 4], -1).reshape(p.shape[:-1] + (2 * p.shape[-1],))


def _e4m3_codes(s: torch.Tensor) -> np.ndarray:
  return s.to(torch.float8_e4m3fn).view(torch.uint8).numpy()


# --- the peers ----------------------------------------------------------------------------


def torchao_nvfp4(x: np.ndarray, stacked: bool):
  t = _torch(pad_last(x, 16))
  if stacked:
    amax = torch.amax(torch.abs(t), dim=(-2, -1), keepdim=True)
  else:
    amax = torch.max(torch.abs(t))
  pts = nvfp4_tensor.per_tensor_amax_to_scale(amax)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    q = nvfp4_tensor.NVFP4Tensor.to_nvfp4(t, 16, per_tensor_scale=pts)
    deq = q.dequantize(torch.float32)
  codes = unpack_uint4(q.qdata.contiguous().view(torch.uint8)).numpy()
  blocks = t.float().reshape(*t.shape[:-1], -1, 16)
  r = (1.0 / pts) / q.scale.float()
  nan = torch.isnan(blocks * r.unsqueeze(-1)).reshape(t.shape).numpy()
  return dict(codes=codes, scales=q.scale.view(torch.uint8).numpy(),
              tensor=pts.reshape(pts.shape[:-2] if stacked else ()).numpy(),
              deq=deq.numpy(), nan=nan)


def ct_nvfp4(x: np.ndarray):
  """One tensor (a 2-D weight) through compressed-tensors, as llm-compressor drives it."""
  t = _torch(pad_last(x, 16))
  gs = ct_helpers.generate_gparam(t.amin(), t.amax())  # the observer's min/max, t's dtype
  groups = t.unflatten(-1, (t.shape[-1] // 16, 16))
  scale, _ = ct_helpers.calculate_qparams(groups.amin(-1), groups.amax(-1), CT_ARGS,
                                          global_scale=gs)
  packed = quantize_and_pack_fp4(t, scale, global_scale=gs, zero_point=None, group_size=16)
  m, n = t.shape
  deq = ct_dequantize(unpack_fp4_from_uint8(packed, m, n, dtype=torch.float32), scale,
                      args=CT_ARGS, dtype=torch.float32, global_scale=gs)
  d = (scale / gs).unsqueeze(-1)
  nan = torch.isnan(groups.float() / d).reshape(t.shape).numpy()
  return dict(codes=_nibbles(packed), scales=_e4m3_codes(scale), tensor=gs.numpy()[0],
              deq=deq.numpy(), nan=nan)


def te_nvfp4(x: np.ndarray, tile: int):
  t = _torch(pad_last(x, 16, rows=tile))
  codes, block, clipped, amax = ref.te_quantize(t, tile)
  # The reference's own buckets agree with the signed-zero rounding except on -0.0.
  neg_zero = torch.signbit(clipped) & (clipped == 0)
  bucket = ref.te_reference_codes(clipped)
  agree = (bucket == codes) | neg_zero | torch.isnan(clipped)
  assert bool(agree.all()), "TE's cast_to_fp4x2 differs from nearest-even rounding"
  deq = ref.te_dequantize(codes, block, amax)
  scales = block.view(torch.uint8).numpy()
  if tile == 16:
    scales = scales[::16]
  return dict(codes=codes.numpy(), scales=scales, tensor=amax.numpy()[0], deq=deq.numpy(),
              nan=torch.isnan(clipped).numpy())


def modelopt_nvfp4(x: np.ndarray):
  t = _torch(x)
  packed, scale, wsf2, scaled = ref.modelopt_quantize(t)
  deq = ref.modelopt_dequantize(packed, scale, wsf2)
  return dict(codes=_nibbles(packed), scales=scale.view(torch.uint8).numpy(),
              tensor=wsf2.numpy(), deq=deq.numpy(), nan=torch.isnan(scaled).numpy())


def peer(rule: str, x: np.ndarray, stacked: bool = False, tile: int = 1):
  if stacked and rule != "torchao":  # one tensor (expert) at a time, then stacked
    parts = [peer(rule, x[e], tile=tile) for e in range(x.shape[0])]
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}
  if rule == "torchao":
    return torchao_nvfp4(x, stacked)
  if rule == "compressed-tensors":
    return ct_nvfp4(x)
  if rule == "te":
    return te_nvfp4(x, tile)
  return modelopt_nvfp4(x)


# --- the comparison -----------------------------------------------------------------------


def _e4m3_same(got: np.ndarray, want: np.ndarray) -> np.ndarray:
  nan = lambda c: (c & 0x7F) == 0x7F
  return (got == want) | (nan(got) & nan(want))


def _cut(a: np.ndarray, shape) -> np.ndarray:
  return a[tuple(slice(0, n) for n in shape)]


def compare(x: np.ndarray, rule: str, *, stacked: bool = False, tile: int = 1,
            label: str = "") -> None:
  block = (16, 16) if tile == 16 else 16
  q = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="nvfp4", nvfp4_rule=rule,
                      block_size=block, stacked=stacked)
  want = peer(rule, x, stacked, tile)
  key = (rule, str(x.dtype), label)
  got_codes = np.asarray(q.bits)
  want_codes = _cut(want["codes"], x.shape)
  keep = ~_cut(want["nan"], x.shape)
  bad = (got_codes != want_codes) & keep
  assert not bad.any(), (f"{key}: {int(bad.sum())} codes differ, e.g. x={x[bad][:4]} got "
                         f"{got_codes[bad][:4]} want {want_codes[bad][:4]}")
  got_scales = np.asarray(q.scale)
  want_scales = _cut(want["scales"], got_scales.shape)
  same = _e4m3_same(got_scales, want_scales)
  assert same.all(), (key, got_scales[~same][:6], want_scales[~same][:6])
  ok = same_bits(np.asarray(q.tensor_scale), want["tensor"])
  assert np.all(ok), (key, np.asarray(q.tensor_scale), want["tensor"])
  got_deq = np.asarray(fp8jax.dequantize(q, jnp.float32))
  want_deq = _cut(want["deq"], x.shape)
  deq_keep = keep | np.isnan(want_deq)  # a NaN scale makes both NaN
  ok = same_bits(got_deq, want_deq) | ~deq_keep
  assert ok.all(), (key, x[~ok][:4], got_deq[~ok][:4], want_deq[~ok][:4])
  c = COUNTS[key]
  c["codes"] += int(keep.sum())
  c["left out (peer's scaled value NaN)"] += int((~keep).sum())
  c["block scales"] += got_scales.size
  c["tensor scales"] += int(np.size(want["tensor"]))
  c["dequantized"] += int(deq_keep.sum())


CASES = [(rule, dtype) for rule in RULES for dtype in (BF16, F16, F32)
         if not (rule == "torchao" and dtype == F16)]  # torchao takes bfloat16 and float32


@pytest.mark.parametrize("rule,dtype", CASES, ids=lambda v: str(v))
def test_matches_the_stack(rule, dtype):
  # Wide dynamic range with zero, subnormal, tiny and -0.0 blocks; a ragged last axis;
  # then blocks near the dtype's largest value (which push most scales to their floor).
  for seed in range(3):
    compare(wide((45, 200), dtype, seed, 16, FINITE), rule, label="wide")
  compare(wide((45, 200), dtype, 7, 16, {**FINITE, "huge": 0.05}), rule, label="huge")


@pytest.mark.parametrize("rule", RULES)
def test_stacked_experts_get_one_tensor_scale_each(rule):
  x = wide((3, 20, 48), BF16, 11, 16, FINITE)
  x[1] *= np.asarray(2.0**-30, BF16)  # experts far apart
  compare(x, rule, stacked=True, label="stacked")
  q = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="nvfp4", nvfp4_rule=rule, stacked=True)
  assert q.tensor_scale.shape == (3,) and q.scale.shape == (3, 20, 3)


def test_te_16x16_tiles_match_the_weight_recipe():
  for seed in range(2):
    compare(wide((45, 200), BF16, 20 + seed, 16, FINITE, tile=16), "te", tile=16, label="tile")
  q = fp8jax.quantize(jnp.ones((45, 200)), "e2m1fn", scaling="nvfp4", nvfp4_rule="te",
                      block_size=(16, 16))
  assert q.scale.shape == (3, 13)


TENSORS = {  # whole tensors at the edges of float32
    "zero": np.zeros((4, 64), np.float32),
    "normal_tiny": np.float32(2.0**-110) * np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64),
    "subnormal": np.float32(2.0**-140) * np.arange(-128, 128, dtype=np.float32).reshape(4, 64),
    "near_max": np.float32(3.0e38) * np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64),
    "nan": np.where(np.arange(256) == 5, np.nan, np.linspace(-3, 3, 256)).astype(np.float32)
    .reshape(4, 64),
    "inf": np.where(np.arange(256) == 70, -np.inf, np.linspace(-3, 3, 256)).astype(np.float32)
    .reshape(4, 64),
}


@pytest.mark.parametrize("rule", RULES)
def test_edge_tensors_match_the_stack(rule):
  for name, x in TENSORS.items():
    compare(x, rule, label=name)


def test_packing_puts_the_even_element_in_the_low_nibble_as_every_stack_stores_it():
  x = wide((45, 200), BF16, 0, 16, FINITE)  # test_matches_the_stack's first input
  t = _torch(pad_last(x, 16))
  for rule in ("torchao", "compressed-tensors", "modelopt"):
    q = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="nvfp4", nvfp4_rule=rule)
    if rule == "torchao":
      pts = nvfp4_tensor.per_tensor_amax_to_scale(torch.max(torch.abs(t)))
      packed = nvfp4_tensor.NVFP4Tensor.to_nvfp4(t, 16, per_tensor_scale=pts).qdata
    elif rule == "modelopt":
      packed = ref.modelopt_quantize(t)[0]
    else:
      gs = ct_helpers.generate_gparam(t.amin(), t.amax())
      g = t.unflatten(-1, (t.shape[-1] // 16, 16))
      scale, _ = ct_helpers.calculate_qparams(g.amin(-1), g.amax(-1), CT_ARGS, global_scale=gs)
      packed = quantize_and_pack_fp4(t, scale, global_scale=gs, zero_point=None, group_size=16)
    np.testing.assert_array_equal(np.asarray(fp8jax.pack_fp4(q.bits)),
                                  packed.contiguous().view(torch.uint8).numpy()[:, :100])
  p = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="nvfp4", nvfp4_rule=rule, pack=True)
  np.testing.assert_array_equal(np.asarray(p.bits), np.asarray(fp8jax.pack_fp4(q.bits)))
  np.testing.assert_array_equal(np.asarray(fp8jax.dequantize(p, jnp.float32)),
                                np.asarray(fp8jax.dequantize(q, jnp.float32)))


def test_bfloat16_dequantize_rounds_the_float32_value_once_more():
  x = wide((48, 208), BF16, 9, 16, FINITE)[:45, :200]  # test_matches_the_stack's shape
  t = _torch(pad_last(x, 16))
  pts = nvfp4_tensor.per_tensor_amax_to_scale(torch.max(torch.abs(t)))
  want = nvfp4_tensor.NVFP4Tensor.to_nvfp4(t, 16, per_tensor_scale=pts).dequantize(torch.bfloat16)
  q = fp8jax.quantize(jnp.asarray(x), "e2m1fn", scaling="nvfp4", nvfp4_rule="torchao")
  got = np.asarray(fp8jax.dequantize(q, jnp.bfloat16))
  np.testing.assert_array_equal(got.view(np.uint16), want.view(torch.int16).numpy()
                                .view(np.uint16)[:, :200])


def test_stochastic_rounding_is_reproducible_and_unbiased():
  # Every block holds a 6 (block multiplier about 1): 1.25 rounds to 1 or 1.5, half each.
  x = jnp.full((32, 256), 1.25, jnp.float32).at[:, ::16].set(6.0)
  samples = np.arange(256) % 16 != 0
  key = jax.random.key(3)
  for rule in ("te", "modelopt"):  # the multiply and the divide routes
    a = fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule=rule, rounding="stochastic",
                        key=key)
    b = fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule=rule, rounding="stochastic",
                        key=key)
    np.testing.assert_array_equal(np.asarray(a.bits), np.asarray(b.bits))
    codes = np.asarray(a.bits)[:, samples]
    assert set(np.unique(codes)) <= {2, 3}  # 1.0 and 1.5
    up = (codes == 3).mean()
    assert abs(up - 0.5) < 5 * np.sqrt(0.25 / codes.size), (rule, up)


def test_qarray_carries_the_tensor_scale_through_jit_and_vmap():
  x = jnp.asarray(wide((2, 45, 200), np.float32, 13, 16, FINITE))  # slices cached above
  q = jax.vmap(lambda a: fp8jax.quantize(a, "e2m1fn", scaling="nvfp4", nvfp4_rule="te"))(x)
  assert q.tensor_scale.shape == (2,)
  for i in range(2):
    e = fp8jax.quantize(x[i], "e2m1fn", scaling="nvfp4", nvfp4_rule="te")
    np.testing.assert_array_equal(np.asarray(q.bits[i]), np.asarray(e.bits))
    np.testing.assert_array_equal(np.asarray(q.tensor_scale[i]), np.asarray(e.tensor_scale))
  back = jax.jit(lambda q: fp8jax.dequantize(q, jnp.float32))(q)
  for i in range(2):
    e = fp8jax.quantize(x[i], "e2m1fn", scaling="nvfp4", nvfp4_rule="te")
    np.testing.assert_array_equal(np.asarray(back[i]),
                                  np.asarray(fp8jax.dequantize(e, jnp.float32)))
  leaves = jax.tree_util.tree_leaves(q)
  assert len(leaves) == 4  # bits, scale, nan_count, tensor_scale


@pytest.mark.parametrize("call,error,match", [
    (lambda x: fp8jax.quantize(x, "e4m3fn", scaling="nvfp4", nvfp4_rule="te"), ValueError,
     "scaling='nvfp4' needs fmt 'e2m1fn' \\(got 'e4m3fn'\\)"),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule="te", block_size=32),
     ValueError, "blocks of 16 or tiles of 16x16 \\(got block_size=32\\)"),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule="te",
                               block_size=(16, 32)), ValueError, "blocks of 16 or tiles of 16x16"),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule="vllm"), ValueError,
     "the NVFP4 rule must be one of 'torchao', 'te', 'modelopt', 'compressed-tensors'"),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="nvfp4"), ValueError,
     "scaling='nvfp4' needs nvfp4_rule="),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="mx", nvfp4_rule="te"), ValueError,
     "nvfp4_rule applies to scaling='nvfp4'"),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="block", block_size=16, stacked=True),
     ValueError, "stacked applies to scaling='nvfp4'"),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule="te", scale_rounding="ceil"),
     ValueError, "scale_rounding applies to scaling='mx'"),
    (lambda x: fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule="te", margin=1),
     ValueError, "pow2 and margin do not apply to scaling='nvfp4'"),
    (lambda x: fp8jax.NVFP4("te", axis=0, block=(16, 16)), ValueError,
     "tiles cover the last two axes"),
    (lambda x: fp8jax.quantize(x[0], "e2m1fn", scaling="nvfp4", nvfp4_rule="te",
                               block_size=(16, 16)), ValueError, "at least two axes"),
    (lambda x: fp8jax.QuantSpec.parse("e2m1fn", "nvfp4:vllm"), ValueError,
     "the NVFP4 rule must be one of"),
    (lambda x: fp8jax.QuantSpec.parse("e2m1fn", "nvfp4:te:32x32"), ValueError, "scaling must be"),
])
def test_bad_arguments_are_named_errors(call, error, match):
  with pytest.raises(error, match=match):
    call(jnp.ones((4, 64), jnp.float32))


def test_the_stacks_disagree_on_the_same_input():
  """How many element codes, block scales and values each pair of rules gives differently
  (on test_matches_the_stack's bfloat16 inputs, so that nothing compiles again)."""
  for seed in range(3):
    x = jnp.asarray(wide((45, 200), BF16, seed, 16, FINITE))
    qs = {r: fp8jax.quantize(x, "e2m1fn", scaling="nvfp4", nvfp4_rule=r) for r in RULES}
    values = {r: np.asarray(fp8jax.dequantize(q, jnp.float32)) for r, q in qs.items()}
    for i, a in enumerate(RULES):
      for b in RULES[i + 1:]:
        COUNTS[("disagree", a, b)].update({
            "codes": int(np.sum(np.asarray(qs[a].bits) != np.asarray(qs[b].bits))),
            "block scales": int(np.sum(np.asarray(qs[a].scale) != np.asarray(qs[b].scale))),
            "dequantized": int(np.sum(~same_bits(values[a], values[b]))),
            "of elements": x.size, "of blocks": int(qs[a].scale.size)})


def test_zz_report_counts():
  print()
  for key in sorted(COUNTS):
    print("nvfp4", *key, dict(COUNTS[key]))
  assert ml_dtypes
