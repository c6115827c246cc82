"""The README's first command runs `fp8jax demo`: quantize a built-in checkpoint and back."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import fp8jax


def test_demo_quantizes_reports_and_checks_the_round_trip():
  start = time.perf_counter()
  r = subprocess.run([sys.executable, "-m", "fp8jax", "demo"], capture_output=True, text=True,
                     timeout=300, check=False)
  seconds = time.perf_counter() - start
  assert r.returncode == 0, r.stdout + r.stderr
  out = r.stdout
  assert seconds < 60, seconds
  # The per-tensor report: every weight matrix quantized with its SQNR, the rest kept.
  assert len(re.findall(r"_proj\.weight  BF16 \[\d+, \d+\]  quantized e4m3fn block:128x128  "
                        r".* SQNR  3\d\.\d\d dB", out)) == 28
  assert "model.embed_tokens.weight  BF16 [1024, 256]  kept (embed)" in out
  assert "model.norm.weight  BF16 [256]  kept (1-D)" in out
  assert re.search(r"^quantized 28 tensors, kept 11; .* worst SQNR 3\d\.\d\d dB", out, re.MULTILINE)
  saving = float(re.search(r"saving (\d+\.\d)%", out).group(1))
  assert 40 < saving < 45
  assert '"quant_method": "fp8"' in out and '"weight_block_size": [128, 128]' in out
  assert re.search(r"^round trip: OK: 39 tensors", out, re.MULTILINE)
  assert "MISMATCH" not in out


def test_demo_tour_prints_bits_values_and_errors_for_every_format():
  out = subprocess.run([sys.executable, "-m", "fp8jax", "demo", "--tour"], capture_output=True,
                       text=True, timeout=300, check=True).stdout
  for name in fp8jax.FORMATS:
    assert f"\n{name} " in out
  assert out.count("  bits ") == len(fp8jax.FORMATS)
  assert out.count("  error ") == len(fp8jax.FORMATS)
  assert "0x7e" in out  # 300 and above saturate to e4m3fn's 448
