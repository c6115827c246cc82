"""The README's format table and first commands stay true to the code."""

from __future__ import annotations

import math
import os
import re

import fp8jax

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _pow2(v: float) -> str:
  return f"2^{math.log2(v):g}"


def _num(v: float) -> str:
  return _pow2(v) if v >= 2**20 else f"{v:g}"


def format_table() -> str:
  rows = ["| name | bits | e | m | bias | convention | max | min normal | min subnormal "
          "| NaN | +inf | jnp dtype |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, f in fp8jax.FORMATS.items():
    nan = "—" if f.nan_code is None else f"{f.nan_code:#04x}"
    inf = "—" if f.inf_code is None else f"{f.inf_code:#04x}"
    dtype = f"`{f.dtype.name}`" if f.dtype is not None else "—"
    rows.append(f"| `{name}` | {f.bits} | {f.exponent_bits} | {f.mantissa_bits} | {f.bias} "
                f"| {f.convention} | {_num(f.max)} | {_pow2(f.min_normal)} "
                f"| {_pow2(f.min_subnormal)} | {nan} | {inf} | {dtype} |")
  return "\n".join(rows)


def test_format_table_is_current():
  text = open(README).read()
  assert format_table() in text, "README's format table is stale; paste:\n" + format_table()


def test_first_shell_block_opens_with_demo_then_tests():
  text = open(README).read()
  block = re.search(r"```(?:bash|sh)\n(.*?)```", text, re.S).group(1).splitlines()
  assert block[0].endswith(".venv/bin/fp8jax demo")
  assert "python -m pytest -q" in block[1]
  ci = open(os.path.join(os.path.dirname(README), ".ci", "run")).read()
  assert block[1] in ci


def test_python_examples_run():
  text = open(README).read()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) >= 3
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, README, "exec"), namespace)
  assert namespace["w_hat"].shape == (300, 260)
  assert namespace["ys"].shape == (50, 1024)
