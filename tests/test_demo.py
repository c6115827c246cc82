"""The README's first command runs the demonstration; it must print every format."""

from __future__ import annotations

import subprocess
import sys

import fp8jax


def test_demo_prints_bits_values_and_errors_for_every_format():
  out = subprocess.run([sys.executable, "-m", "fp8jax.demo"], capture_output=True, text=True,
                       timeout=300, check=True).stdout
  for name in fp8jax.FORMATS:
    assert f"\n{name} " in out
  assert out.count("  bits ") == len(fp8jax.FORMATS)
  assert out.count("  error ") == len(fp8jax.FORMATS)
  assert "0x7e" in out  # 300 and above saturate to e4m3fn's 448
