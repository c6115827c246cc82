"""The benchmark suite still runs: `benchmarks/run.py --quick` at tiny sizes.

No timing is asserted here (the machine may be loaded); only that every
implementation ran, produced positive times, agreed bit for bit where it
should, and that the files appeared.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "run.py")

# The stable names the JSON and the README use.
QUANTIZE_NAMES = [
    "quantize tensor", "quantize axis", "quantize block128", "quantize block128x128",
    "quantize mx", "quantize mx rceil", "quantize mxfp4", "quantize nvfp4",
]
DEQUANTIZE_NAMES = [
    "dequantize tensor", "dequantize axis", "dequantize block128", "dequantize block128x128",
    "dequantize mx", "dequantize nvfp4",
]
JAX_NAMES = [
    "encode e4m3fn", "encode e5m2", "decode e4m3fn→bf16", "encode e4m3fn stochastic",
    *QUANTIZE_NAMES, *DEQUANTIZE_NAMES,
    "xla astype e4m3fn", "xla astype e5m2", "xla astype f8→bf16", "ml_dtypes astype e4m3fn",
    "memcpy floor (jax)", "narrowing copy floor (jax)", "memcpy floor (numpy)",
]
TORCH_NAMES = [
    "interop round_to_fp8 (torch)", "torch .to(e4m3fn)", "torch .to(e5m2)",
    "torch .to(bf16) from e4m3fn", "torchao recipe",
]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  found = sorted(out.glob("*-quick.json"))  # named after the platform: cpu, gpu
  assert len(found) == 1, os.listdir(out)
  with open(found[0]) as f:
    return out, json.load(f), proc.stdout


def test_every_implementation_is_timed_in_both_modes(quick_run):
  _, result, _ = quick_run
  expected = JAX_NAMES + (TORCH_NAMES if HAVE_TORCH else [])
  rows = result["runs"][0]["results"]
  for mode in ("fresh", "reused"):
    for size in ("1K", "64K"):
      timed = {r["name"] for r in rows if r["mode"] == mode and r["size"] == size}
      assert set(expected) <= timed, (mode, size, sorted(set(expected) - timed))
  for r in rows:
    assert r["median_s"] > 0 and r["min_s"] > 0 and r["first_call_s"] > 0, r
    assert r["repeats"] >= 3, r
    assert not r["donation_unused"], r["name"]
  if not HAVE_TORCH:
    assert {s["name"] for s in result["skipped"]} == set(TORCH_NAMES)


def test_results_agree_bit_for_bit(quick_run):
  _, result, stdout = quick_run
  flags = result["runs"][0]["bit_identical"]
  assert set(flags) == {"1K", "64K"}
  for size, checks in flags.items():
    assert checks and all(checks.values()), (size, checks)
    assert "encode e4m3fn ieee == xla astype" in checks
    assert "encode e4m3fn: reused == fresh" in checks
    for name in DEQUANTIZE_NAMES:
      assert f"{name}: reused == fresh" in checks, name
    if HAVE_TORCH:
      assert "encode e4m3fn satfinite == torch .to()" in checks
  assert result["bit_identical_all"] is True
  assert "MISMATCH" not in stdout


def test_ratios_and_environment_are_recorded(quick_run):
  _, result, stdout = quick_run
  entries = result["runs"][0]["ratios"]
  names = {e["ratio"] for e in entries}
  assert {"encode speedup vs xla astype", "decode speedup vs xla astype",
          "stochastic / nearest", "quantize tensor / encode",
          "decode speedup vs xla astype (≥1.1)", "e5m2 encode vs xla astype",
          "stochastic / nearest (≤1.3)"} <= names
  if HAVE_TORCH:
    assert {"encode speedup vs torch .to()", "torchao recipe / quantize tensor"} <= names
  # The 16M-only ratios are not computed at the quick run's sizes.
  assert not any("(16M)" in name for name in names), names
  for e in entries:
    assert e["value"] > 0, e
    assert set(e) == {"ratio", "numerator", "denominator", "mode", "size", "value", "target",
                      "meets"}, e
  env = result["environment"]
  for key in ("jax", "jaxlib", "numpy", "ml_dtypes", "cpu_count", "device", "date", "command"):
    assert env[key], key
  assert "## ratios of median times" in stdout
  assert "✓" in stdout or "✗" in stdout


@pytest.mark.parametrize("key, names, target", [
    ("every quantize granularity ≥ 0.6 floor (reused)", QUANTIZE_NAMES, 0.6),
    ("mx/nvfp4 quantize ≥ 0.5 floor (reused)",
     ["quantize mx", "quantize mx rceil", "quantize mxfp4", "quantize nvfp4"], 0.5),
    ("dequantize ≥ 0.6 floor (reused)", DEQUANTIZE_NAMES, 0.6),
])
def test_floor_targets_are_recorded(quick_run, key, names, target):
  _, result, stdout = quick_run
  entries = [e for e in result["runs"][0]["floor_targets"] if e["ratio"] == key]
  assert {e["size"] for e in entries} == {"1K", "64K"}, entries
  for e in entries:
    assert e["mode"] == "reused" and e["target"] == f">= {target}", e
    assert e["denominator"] == "narrowing copy floor (jax)", e
    assert set(e["fractions"]) == set(names), e
    assert e["value"] == min(e["fractions"].values()) > 0, e
    assert e["meets"] == (e["value"] >= target), e
  assert {s["size"] for s in result["floor_target_summary"] if s["ratio"] == key} == {"1K", "64K"}
  (definition,) = [d for d in result["floor_target_definitions"] if d["target"] == key]
  assert definition["implementations"] == names and definition["min_fraction"] == target
  assert key in stdout


def test_ratios_keep_to_their_sizes_and_modes():
  """A ratio with sizes or modes is computed only there; one without, everywhere."""
  from benchmarks.suite import report

  rows = [{"name": name, "mode": mode, "size": size, "elements": n, "median_s": t}
          for mode in ("fresh", "reused") for size, n in (("1M", 1 << 20), ("16M", 1 << 24))
          for name, t in (("encode e4m3fn", 1.0), ("xla astype e4m3fn", 1.2),
                          ("torch .to(e4m3fn)", 3.0))]
  entries = report.ratios(rows)
  where, meets = {}, {}
  for e in entries:
    where.setdefault(e["ratio"], set()).add((e["mode"], e["size"]))
    meets[e["ratio"]] = e["meets"]
  everywhere = {(m, s) for m in ("fresh", "reused") for s in ("1M", "16M")}
  assert where["encode speedup vs xla astype"] == everywhere
  assert where["out= encode vs donated xla astype (16M)"] == {("reused", "16M")}
  assert where["out= encode vs torch copy_ (16M)"] == {("reused", "16M")}
  assert where["fresh encode vs xla astype (16M)"] == {("fresh", "16M")}
  assert where["fresh encode vs torch .to() (16M)"] == {("fresh", "16M")}
  # Those whose times are missing (decode, stochastic, quantize) are left out.
  assert "decode speedup vs xla astype (≥1.1)" not in where
  assert meets == {"encode speedup vs xla astype": False, "encode speedup vs torch .to()": True,
                   "out= encode vs donated xla astype (16M)": False,
                   "out= encode vs torch copy_ (16M)": True,
                   "fresh encode vs xla astype (16M)": True,
                   "fresh encode vs torch .to() (16M)": True}
  table = report.ratio_table(entries)
  assert "out= encode vs torch copy_ (16M)" in table and "✓" in table and "✗" in table


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed, so no plot is made")
def test_plot_is_written(quick_run):
  out, _, _ = quick_run
  (png,) = out.glob("*-quick.png")
  assert png.stat().st_size > 10_000
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_phrasings_agree_with_the_plain_computations(tmp_path):
  """benchmarks/phrasings.py at a tiny size: every fast phrasing gives the plain one's bits."""
  out = tmp_path / "phrasings.json"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "phrasings.py"),
                         "--elements", str(128 * 1024), "--repeats", "2", "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  with open(out) as f:
    pairs = json.load(f)["pairs"]
  assert len(pairs) == 12
  for name, p in pairs.items():
    assert p["same_result"], name
    assert p["plain_s"] > 0 and p["fp8jax_s"] > 0, name
