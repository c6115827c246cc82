"""The PyTorch bridge: zero-copy exchange, torch-facing functions, float8 views."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch bridge needs torch (extra 'torch')")

import fp8jax  # noqa: E402
import interop  # noqa: E402
from interop import convert as iconvert  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
BF16 = torch.bfloat16
TORCH_OF = {np.dtype(ml_dtypes.bfloat16): torch.bfloat16, np.dtype(np.float16): torch.float16,
            np.dtype(np.float32): torch.float32}


def every_16bit(dtype: torch.dtype, device="cpu") -> torch.Tensor:
  return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).to(device)


def jax_of(t: torch.Tensor) -> jax.Array:
  return jnp.asarray(t.cpu().view(torch.uint16 if t.element_size() == 2 else torch.int32)
                     .numpy().view({torch.bfloat16: ml_dtypes.bfloat16, torch.float16: np.float16,
                                    torch.float32: np.float32}[t.dtype]))


@pytest.fixture(params=["table", "jax"])
def route(request, monkeypatch):
  """Runs a test through the code table and through the JAX kernel."""
  monkeypatch.setattr(iconvert, "TABLE_MAX_ELEMENTS", 1 << 30 if request.param == "table" else -1)
  return request.param


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "toward_zero"])
@pytest.mark.parametrize("overflow", ["saturate", "satfinite", "ieee"])
@pytest.mark.parametrize("device", DEVICES)
def test_encode_matches_the_jax_core_on_every_16bit_input(fmt, dtype, rounding, overflow, device,
                                                          route):
  t = every_16bit(dtype, device)
  got = interop.encode(t, fmt, rounding=rounding, overflow=overflow)
  assert got.dtype == torch.uint8 and got.device.type == device
  want = fp8jax.encode(jax_of(t), fmt, rounding=rounding, overflow=overflow)
  np.testing.assert_array_equal(got.cpu().numpy(), np.asarray(want))


@pytest.mark.parametrize("fmt", list(fp8jax.FORMATS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_decode_matches_the_jax_core_on_every_code(fmt, dtype, device, route):
  codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).to(device)
  got = interop.decode(codes, fmt, dtype)
  assert got.dtype == dtype
  jdtype = {torch.bfloat16: jnp.bfloat16, torch.float16: jnp.float16,
            torch.float32: jnp.float32}[dtype]
  want = np.asarray(fp8jax.decode(jnp.arange(256, dtype=jnp.uint8), fmt, jdtype))
  np.testing.assert_array_equal(got.cpu().view(torch.uint8).numpy(), want.view(np.uint8))


def test_table_covers_every_named_format_exhaustively():
  t = every_16bit(torch.bfloat16)
  for fmt in fp8jax.FORMATS:
    got = interop.encode(t, fmt)  # 65,536 elements: the table route
    np.testing.assert_array_equal(got.numpy(), np.asarray(fp8jax.encode(jax_of(t), fmt)))


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (7, 13), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_original_api_matches_jax_on_random_shapes(shape, dtype, route):
  g = torch.Generator().manual_seed(sum(shape) + 1)
  t = (torch.randn(shape, generator=g) * 100).to(dtype)
  for n in (2, 3, 4, 5):
    for s in (1.0, 0.5, 3.7):
      got = interop.round_to_fp8_represented_as_int8(t, n, scaling_factor=s)
      want = fp8jax.round_to_fp8_represented_as_int8(jax_of(t), n, scaling_factor=s)
      np.testing.assert_array_equal(got.numpy(), np.asarray(want))
      back = interop.undo_int8_fp8(got, n, dtype, scaling_factor=s)
      want_back = fp8jax.undo_int8_fp8(want, n, jax_of(t).dtype, scaling_factor=s)
      np.testing.assert_array_equal(back.reshape(-1).view(torch.uint8).numpy(),
                                    np.asarray(want_back).reshape(-1).view(np.uint8))


def test_stochastic_rounding_is_reproducible_and_equals_jax():
  t = torch.linspace(-3, 3, 5000).to(torch.bfloat16)
  a = interop.encode(t, "e4m3fn", rounding="stochastic", seed=42)
  b = interop.encode(t, "e4m3fn", rounding="stochastic", seed=42)
  assert torch.equal(a, b)
  want = fp8jax.encode(jax_of(t), "e4m3fn", rounding="stochastic", key=jax.random.key(42))
  np.testing.assert_array_equal(a.numpy(), np.asarray(want))
  g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
  c = interop.encode(t, "e4m3fn", rounding="stochastic", generator=g1)
  d = interop.encode(t, "e4m3fn", rounding="stochastic", generator=g2)
  assert torch.equal(c, d)
  e = interop.encode(t, "e4m3fn", rounding="stochastic", generator=g1)  # the generator advanced
  assert not torch.equal(c, e)
  o = torch.zeros(5000, dtype=torch.uint8)
  assert interop.round_to_fp8_represented_as_int8(t, 3, o, rounding="stochastic", seed=42) is o
  assert torch.equal(o, a)


def test_int32_to_bfloat16_matches_jax():
  words = torch.randint(-2**31, 2**31 - 1, (4096,), dtype=torch.int32,
                        generator=torch.Generator().manual_seed(0))
  got = interop.int32_to_bfloat16(words)
  want = fp8jax.int32_to_bfloat16(jnp.asarray(words.numpy()))
  np.testing.assert_array_equal(got.view(torch.uint16).numpy(), np.asarray(want).view(np.uint16))
  assert interop.int32_to_bfloat16(torch.tensor(0x3F80, dtype=torch.int32)).item() == 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.uint8,
                                   torch.int32, torch.float8_e4m3fn, torch.float8_e5m2,
                                   torch.float8_e4m3fnuz, torch.float8_e5m2fnuz], ids=str)
def test_exchange_is_zero_copy_both_ways(dtype):
  t = torch.arange(64, dtype=torch.float32).to(dtype)
  a = interop.to_jax(t)
  assert a.unsafe_buffer_pointer() == t.data_ptr()
  back = interop.to_torch(a)
  assert back.data_ptr() == a.unsafe_buffer_pointer() and back.dtype == dtype
  assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))


def test_misaligned_and_strided_tensors_give_right_values():
  base = torch.arange(300, dtype=torch.float32).to(torch.bfloat16)
  view = base[1:257]  # 2-byte offset: XLA needs 64-byte alignment, so one copy
  a = interop.to_jax(view)
  np.testing.assert_array_equal(np.asarray(a, np.float32), view.float().numpy())
  strided = torch.arange(48, dtype=torch.float32).reshape(6, 8).t()[::2]
  np.testing.assert_array_equal(np.asarray(interop.to_jax(strided)), strided.numpy())
  got = interop.encode(strided.to(torch.bfloat16), "e4m3fn")
  want = fp8jax.encode(jnp.asarray(strided.numpy(), jnp.bfloat16), "e4m3fn")
  np.testing.assert_array_equal(got.numpy(), np.asarray(want))


def test_zero_d_and_empty_tensors():
  z = torch.tensor(3.0)
  assert interop.to_jax(z).shape == () and float(interop.to_jax(z)) == 3.0
  assert interop.to_torch(jnp.float32(2.0)).shape == ()
  assert interop.to_jax(torch.zeros((0, 3))).shape == (0, 3)
  assert interop.encode(torch.zeros((0, 4), dtype=BF16), "e5m2").shape == (0, 4)


def test_tensors_that_require_grad_are_refused_with_advice():
  t = torch.ones(3, requires_grad=True)
  with pytest.raises(TypeError, match=r"t requires grad; pass t.detach\(\)"):
    interop.to_jax(t)
  with pytest.raises(TypeError, match=r"t requires grad"):
    interop.encode(t, "e4m3fn")


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz"])
def test_float8_views_decode_like_fp8jax_and_share_storage(fmt):
  codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
  view = interop.as_torch_float8(codes, fmt)
  assert view.data_ptr() == codes.data_ptr()
  want = np.asarray(fp8jax.decode(jnp.arange(256, dtype=jnp.uint8), fmt, jnp.float32))
  np.testing.assert_array_equal(view.to(torch.float32).numpy(), want)
  back = interop.from_torch_float8(view)
  assert back.data_ptr() == codes.data_ptr() and torch.equal(back, codes)


def test_out_receives_the_result_and_is_returned(route):
  t = torch.randn(1000).to(BF16)
  out = torch.full((1000,), 7, dtype=torch.uint8)
  ptr = out.data_ptr()
  res = interop.round_to_fp8_represented_as_int8(t, 3, out)
  assert res is out and out.data_ptr() == ptr
  np.testing.assert_array_equal(out.numpy(), np.asarray(fp8jax.encode(jax_of(t), "e4m3fn")))
  dec = torch.empty(1000, dtype=torch.float32)
  assert interop.undo_int8_fp8(out, 3, torch.float32, dec) is dec
  np.testing.assert_array_equal(dec.numpy(), np.asarray(fp8jax.decode(jnp.asarray(out.numpy()),
                                                                      "e4m3fn", jnp.float32)))
  assert interop.encode(t, "e5m2", out=out) is out
  assert interop.decode(out, "e5m2", torch.float32, out=dec) is dec


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.zeros(999, dtype=torch.uint8), r"out must have shape \(1000,\)"),
    (lambda: torch.zeros(1000, dtype=torch.int8), r"out must have dtype torch.uint8"),
    (lambda: torch.zeros(2000, dtype=torch.uint8)[::2], r"contiguous"),
    (lambda: torch.zeros(1000, dtype=torch.uint8, device="meta"), r"device cpu"),
])
def test_bad_out_raises_and_leaves_out_untouched(bad, match):
  t = torch.randn(1000).to(BF16)
  out = bad()
  before = out.clone() if out.device.type != "meta" else None
  with pytest.raises(ValueError, match=match):
    interop.round_to_fp8_represented_as_int8(t, 3, out)
  if before is not None:
    assert torch.equal(out, before)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: interop.encode(torch.ones(3, dtype=torch.int32), "e4m3fn"), TypeError,
     r"t must be torch.bfloat16, torch.float16 or torch.float32 \(got torch.int32\)"),
    (lambda: interop.encode(np.ones(3, np.float32), "e4m3fn"), TypeError, r"t must be a torch"),
    (lambda: interop.encode(torch.ones(3), "e4m3fn", rounding="stochastic"), ValueError,
     r"needs exactly one of seed=int or generator"),
    (lambda: interop.encode(torch.ones(3), "e4m3fn", seed=1), ValueError,
     r"only used with rounding='stochastic'"),
    (lambda: interop.encode(torch.ones(3), "e4m3fn", rounding="stochastic", seed="1"), TypeError,
     r"seed must be an int"),
    (lambda: interop.encode(torch.ones(3), "bogus"), ValueError, r"fmt must be one of"),
    (lambda: interop.encode(torch.ones(3), "e4m3fn", overflow="wrap"), ValueError,
     r"overflow must be one of"),
    (lambda: interop.decode(torch.ones(3), "e4m3fn"), TypeError, r"bits must be torch.uint8"),
    (lambda: interop.decode(torch.ones(3, dtype=torch.uint8), "e4m3fn", torch.int8), TypeError,
     r"dtype must be"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(3), 9), ValueError,
     r"n_mantissa must be one of"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(3), 3, scaling_factor=0.0),
     ValueError, r"scaling_factor must be finite and nonzero"),
    (lambda: interop.undo_int8_fp8(torch.ones(3, dtype=torch.uint8), 3, torch.int32), TypeError,
     r"target_dt must be"),
    (lambda: interop.int32_to_bfloat16(torch.ones(3)), TypeError, r"x must be torch.int32"),
    (lambda: interop.as_torch_float8(torch.ones(3, dtype=torch.uint8), "e2m1fn"), ValueError,
     r"fmt 'e2m1fn' has no torch float8 dtype"),
    (lambda: interop.from_torch_float8(torch.ones(3)), TypeError, r"t must be a torch float8"),
    (lambda: interop.to_torch(np.ones(3)), TypeError, r"a must be a jax.Array"),
])
def test_bad_input(call, exc, match):
  with pytest.raises(exc, match=match):
    call()


# Where torch's own casts differ from fp8jax's policies, over all 65,536 bf16 inputs
# (torch 2.13, CPU): e4m3fn saturates like "satfinite" and "saturate"; e5m2 and the FNUZ
# formats follow "ieee", e5m2 writing NaN as 0x7F/0xFF where fp8jax writes the canonical
# quiet NaN 0x7E/0xFE. "overflow" means: only inputs beyond the format's max differ.
TORCH_DIFFERS = {
    "e4m3fn": {"satfinite": "none", "saturate": "none", "ieee": "overflow"},
    "e5m2": {"ieee": "nan", "satfinite": "overflow+nan", "saturate": "overflow+nan"},
    "e4m3fnuz": {"ieee": "none", "satfinite": "overflow", "saturate": "overflow"},
    "e5m2fnuz": {"ieee": "none", "satfinite": "overflow", "saturate": "overflow"},
}


@pytest.mark.parametrize("fmt", list(TORCH_DIFFERS))
def test_where_torch_native_casts_differ_from_each_policy(fmt):
  t = every_16bit(torch.bfloat16)
  native = t.to(interop.dlpack.TORCH_FLOAT8[fmt]).view(torch.uint8).numpy()
  x = t.float().numpy()
  beyond = np.abs(x) > fp8jax.FORMATS[fmt].max  # NaN compares False
  for policy, where in TORCH_DIFFERS[fmt].items():
    ours = interop.encode(t, fmt, overflow=policy).numpy()
    differ = native != ours
    allowed = np.zeros_like(differ)
    if "overflow" in where:
      allowed |= beyond
      assert differ[beyond].any(), policy
    if "nan" in where:
      allowed |= np.isnan(x)
      assert differ[np.isnan(x)].all(), policy
      np.testing.assert_array_equal(native[np.isnan(x)] & 0x7F, 0x7F)  # torch's NaN: all ones
    assert not (differ & ~allowed).any(), (policy, x[differ & ~allowed][:5])


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_exchange_keeps_the_device_and_the_pointer():
  t = torch.arange(1024, dtype=torch.float32, device="cuda").to(BF16)
  a = interop.to_jax(t)
  assert a.unsafe_buffer_pointer() == t.data_ptr()
  assert a.devices().pop().platform == "gpu"
  back = interop.to_torch(a)
  assert back.device == t.device and back.data_ptr() == t.data_ptr()
  big = torch.randn(1 << 20, device="cuda").to(BF16)  # the JAX route on the GPU
  got = interop.encode(big, "e4m3fn")
  assert got.device == big.device
  np.testing.assert_array_equal(got.cpu().numpy(), interop.encode(big.cpu(), "e4m3fn").numpy())
