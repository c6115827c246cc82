"""The torch bridge on tensors torch treats specially: lazily negated views, inference tensors,
sparse and meta tensors, scales of odd dtypes. Right values, or a clear error before any work."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch bridge needs torch (extra 'torch')")

import interop  # noqa: E402
from interop import convert as iconvert  # noqa: E402

CODE_MINUS_3 = 0xC4  # -3.0 in e4m3fn


def _neg_view(values, dtype=torch.float32) -> torch.Tensor:
  """A tensor with torch's negative bit set: its storage holds -values, it reads as values."""
  t = torch._neg_view(torch.tensor([-v for v in values], dtype=dtype))
  assert t.is_neg() and t.tolist() == values
  return t


@pytest.fixture(params=["table", "jax"])
def route(request, monkeypatch):
  monkeypatch.setattr(iconvert, "TABLE_MAX_ELEMENTS", 1 << 30 if request.param == "table" else -1)
  return request.param


# --- finding 8: the sign of lazily negated tensors ---------------------------------------

def test_a_conjugate_imaginary_part_keeps_its_sign():
  t = torch.tensor([1 + 3j]).conj().imag  # float32 with the negative bit set
  assert t.is_neg() and t.tolist() == [-3.0]
  assert interop.encode(t, "e4m3fn").tolist() == [CODE_MINUS_3]
  assert interop.round_to_fp8_represented_as_int8(t, 3).tolist() == [CODE_MINUS_3]
  assert np.asarray(interop.to_jax(t)).tolist() == [-3.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_negative_views_convert_as_their_values(dtype, route):
  t = _neg_view([3.0, -0.5, 448.0], dtype)
  want = interop.encode(t.clone().resolve_neg(), "e4m3fn")
  assert interop.encode(t, "e4m3fn").tolist() == want.tolist()
  codes = torch._neg_view(torch.tensor([2, 56, 100], dtype=torch.uint8))  # reads 254, 200, 156
  want = interop.decode(codes.clone().resolve_neg(), "e4m3fn", torch.float32)
  assert interop.decode(codes, "e4m3fn", torch.float32).tolist() == want.tolist()
  ints = torch._neg_view(torch.tensor([-0x3F80], dtype=torch.int32))
  assert interop.int32_to_bfloat16(ints).tolist() == [1.0]


def test_a_negative_scale_view_is_its_value():
  scale = _neg_view([2.0])
  got = interop.round_to_fp8_represented_as_int8(torch.ones(2), 3, None, scale)
  assert got.tolist() == interop.round_to_fp8_represented_as_int8(torch.ones(2), 3, None,
                                                                  2.0).tolist()


# --- out= that torch would refuse only after writing to it ----------------------------------

def _inference_out():
  with torch.inference_mode():
    return torch.zeros(4, dtype=torch.uint8)


def _grad_view_out():
  base = torch.zeros(4, requires_grad=True)
  return base[:]


@pytest.mark.parametrize("make,call,match", [
    (_inference_out, lambda t, out: interop.encode(t, "e4m3fn", out=out),
     "no inference-mode flag"),
    (_inference_out, lambda t, out: interop.encode(t.float(), "e4m3fn", out=out),
     "no inference-mode flag"),
    (lambda: torch._neg_view(torch.zeros(4)),
     lambda t, out: interop.undo_int8_fp8(torch.ones(4, dtype=torch.uint8), 3, torch.float32,
                                          out), "no lazy negation"),
    (_grad_view_out,
     lambda t, out: interop.undo_int8_fp8(torch.ones(4, dtype=torch.uint8), 3, torch.float32,
                                          out), "no autograd history"),
    (lambda: torch.zeros(4, dtype=torch.uint8).to_sparse(),
     lambda t, out: interop.encode(t, "e4m3fn", out=out), "a dense layout"),
], ids=["inference-table", "inference-jax", "negative", "grad-view", "sparse"])
def test_an_out_torch_cannot_write_is_refused_untouched(make, call, match):
  t = torch.ones(4, dtype=torch.bfloat16)
  out = make()
  before = out.detach().clone() if out.layout == torch.strided else None
  with pytest.raises(ValueError, match=match):
    call(t, out)
  if before is not None:
    assert torch.equal(out.detach(), before)


def test_an_inference_out_inside_inference_mode_is_fine():
  with torch.inference_mode():
    out = torch.zeros(4, dtype=torch.uint8)
    assert interop.encode(torch.ones(4), "e4m3fn", out=out) is out
  assert out.tolist() == [56] * 4


# --- finding 10 (torch side): arguments torch or NumPy would reject obscurely, or accept ---

@pytest.mark.parametrize("call,exc,match", [
    (lambda: interop.encode(torch.ones(4, 4).to_sparse(), "e4m3fn"), TypeError,
     r"t must be a dense tensor \(got layout torch.sparse_coo\)"),
    (lambda: interop.to_jax(torch.ones(4, 4).to_sparse()), TypeError,
     r"t must be a dense tensor"),
    (lambda: interop.encode(torch.ones(4, device="meta"), "e4m3fn"), ValueError,
     r"t must be on the CPU or a CUDA device \(got meta, which holds no data\)"),
    (lambda: interop.decode(torch.ones(4, dtype=torch.uint8, device="meta"), "e4m3fn"),
     ValueError, r"bits must be on the CPU or a CUDA device"),
    (lambda: interop.encode(torch.ones(4), "e4m3fn",
                            out=torch.empty(4, dtype=torch.uint8, device="meta")),
     ValueError, r"out must have device cpu \(got meta\)"),
    (lambda: interop.to_torch(torch.ones(2)), TypeError, r"a must be a jax.Array \(got Tensor\)"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(4), 3, None,
                                                      torch.tensor(2 + 1j)),
     TypeError, r"scaling_factor must be a real number or array \(got torch.complex64\)"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(4), 3, None,
                                                      np.array(2 + 1j)),
     TypeError, r"scaling_factor must be a real number or array \(got complex128\)"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(4), 3, None, np.array("2")),
     TypeError, r"scaling_factor must be a real number or array \(got <U1\)"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(4), 3, None,
                                                      torch.tensor(True)),
     TypeError, r"scaling_factor must be a real number or array \(got torch.bool\)"),
    (lambda: interop.undo_int8_fp8(torch.ones(4, dtype=torch.uint8), 3, torch.float32, None,
                                   np.array([True])),
     TypeError, r"scaling_factor must be a real number or array \(got bool\)"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(4), 3, None,
                                                      jnp.array(2 + 1j)),
     TypeError, r"scaling_factor must be a real number or array \(got complex64\)"),
    (lambda: interop.round_to_fp8_represented_as_int8(torch.ones(4), 3, None,
                                                      torch.tensor(2.0, device="meta")),
     ValueError, r"scaling_factor must be on the CPU or a CUDA device"),
], ids=["sparse", "sparse-to-jax", "meta", "meta-bits", "meta-out", "torch-as-jax",
        "complex-torch", "complex-numpy", "string", "bool-torch", "bool-numpy", "complex-jax",
        "meta-scale"])
def test_bad_arguments_are_clear_errors_naming_the_argument(call, exc, match):
  with pytest.raises(exc, match=match):
    call()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64, torch.int32],
                         ids=str)
def test_scales_of_any_real_torch_dtype_are_their_value(dtype):
  t = torch.linspace(-3, 3, 16)
  want = interop.round_to_fp8_represented_as_int8(t, 3, None, 4.0)
  got = interop.round_to_fp8_represented_as_int8(t, 3, None, torch.tensor(4, dtype=dtype))
  assert got.tolist() == want.tolist()
  back = interop.undo_int8_fp8(got, 3, torch.float32, None, torch.tensor(4, dtype=dtype))
  assert back.tolist() == interop.undo_int8_fp8(got, 3, torch.float32, None, 4.0).tolist()
