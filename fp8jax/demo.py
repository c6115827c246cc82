"""A short demonstration: one bfloat16 tensor through every named format.

Run with `python -m fp8jax.demo`. For each format it prints the codes,
the decoded values and the error against the input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fp8jax.convert import decode, encode
from fp8jax.formats import FORMATS, Format

EXAMPLE = [0.0, -0.0, 1.0, -1.5, 3.14159, 0.1, 1e-3, -13.7, 300.0, 7e4, float("inf"), float("nan")]


def _fmt(v: float) -> str:
  return f"{v:.4g}"


def main() -> None:
  x = jnp.asarray(EXAMPLE, jnp.bfloat16)
  xs = np.asarray(x, np.float32)
  print("input (bfloat16):", " ".join(_fmt(v) for v in xs))
  print("overflow='saturate', rounding='nearest'\n")
  for name, fmt in FORMATS.items():
    _show(name, fmt, x, xs)


def _show(name: str, fmt: Format, x: jax.Array, xs: np.ndarray) -> None:
  bits = encode(x, fmt)
  back = np.asarray(decode(bits, fmt, jnp.float32))
  finite = np.isfinite(xs) & (np.abs(xs) <= fmt.max) & (np.abs(xs) >= fmt.min_normal)
  rel = np.abs(back[finite] - xs[finite]) / np.abs(xs[finite])
  print(f"{name:12s} max={_fmt(fmt.max):>8s}  min_subnormal={_fmt(fmt.min_subnormal)}")
  print("  bits  ", " ".join(f"{int(b):#04x}".rjust(7) for b in np.asarray(bits)))
  print("  value ", " ".join(_fmt(v).rjust(7) for v in back))
  with np.errstate(invalid="ignore"):
    err = back - xs
  print("  error ", " ".join(_fmt(v).rjust(7) for v in err))
  worst = f"{rel.max():.3g}" if rel.size else "n/a"
  print(f"  largest relative error on in-range normal inputs: {worst} "
        f"(bound: eps/2 = {fmt.eps / 2:.3g})\n")


if __name__ == "__main__":
  main()
