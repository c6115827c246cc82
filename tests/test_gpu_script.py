"""The GPU check script runs end to end in its CPU mode: `benchmarks/gpu/run.sh OUT --cpu --quick`.

The CPU backend stands in for the accelerator (and is its own reference), so this proves
that every code path of the script works and that its outputs have the promised shape, not
anything about a GPU. About 25 s on two idle CPU cores (60 s when they are busy).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "run.sh")
CORRECTNESS = ["correctness", "torch_bridge", "sharding", "gemm"]
OPERATIONS = [
    "encode e4m3fn", "encode e5m2", "encode e4m3fn stochastic", "decode e4m3fn->bf16",
    "decode e5m2->bf16", "quantize tensor", "quantize axis", "quantize block 1x128",
    "quantize block 128x128", "quantize mx", "quantize mx rceil", "quantize mxfp4",
    "quantize nvfp4", "xla astype e4m3fn", "xla astype e5m2", "xla astype e4m3fn->bf16",
    "xla astype e5m2->bf16", "copy floor",
]
TORCH_OPERATIONS = ["torch .to(e4m3fn)", "torch .to(e5m2)", "torch e4m3fn .to(bf16)",
                    "torch e5m2 .to(bf16)"]
HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu-check")
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run(["bash", SCRIPT, str(out), "--cpu", "--quick"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=170, check=False)
  tail = proc.stdout[-4000:] + proc.stderr[-3000:]
  assert proc.returncode == 0, tail
  with open(out / "results.json") as f:
    return out, json.load(f), tail


def test_every_correctness_section_passes_and_compares_something(cpu_run):
  _, results, tail = cpu_run
  assert results["verdict"] == "PASS", tail
  for name in CORRECTNESS:
    section = results["sections"][name]
    assert section["status"] == "ok", (name, section)
    assert section["compared"] > 0, name
    for check in section["checks"]:
      assert check["status"] in ("ok", "skipped"), (name, check)
      if check["status"] == "skipped":
        assert check.get("reason"), check  # every skip says why
  assert results["sections"]["correctness"]["compared"] >= 2 * 11 * 9 * 65536  # bf16 + f16


def test_the_repository_tests_ran_and_passed(cpu_run):
  out, results, _ = cpu_run
  tests = results["sections"]["tests"]
  assert tests["status"] == "ok" and not tests["timed_out"], tests
  assert tests["passed"] > 0 and not tests["counts"].get("failed"), tests
  with open(out / "tests.log") as f:
    log = f.read()
  assert re.search(r"\b\d+ passed\b", log), log[-2000:]
  assert "jax default backend: cpu" in log


def test_speed_has_every_operation_with_positive_throughput(cpu_run):
  _, results, _ = cpu_run
  rows = results["sections"]["speed"]["table"]
  expected = OPERATIONS + (TORCH_OPERATIONS if HAVE_TORCH else [])
  for op in expected:
    found = [r for r in rows if r["op"] == op]
    assert found, (op, sorted({r["op"] for r in rows}))
    assert all(r["gbps"] > 0 and r["ms"] > 0 and r["fraction_of_copy"] > 0 for r in found), found


def test_goals_are_reported_but_not_judged_on_cpu(cpu_run):
  _, results, _ = cpu_run
  goals = results["goals"]
  assert len(goals) >= 16
  assert all(g["verdict"] == "not applicable on cpu" for g in goals), goals
  assert all(g["value"] is not None and g["value"] > 0 for g in goals), goals


def test_machine_description_and_outputs(cpu_run):
  out, results, _ = cpu_run
  machine = results["machine"]
  assert machine["mode"] == "cpu quick" and machine["device_platform"] == "cpu"
  assert machine["versions"]["jax"] and machine["versions"]["numpy"]
  files = sorted(os.listdir(out))
  assert {"results.json", "summary.md", "tests.log"} <= set(files), files
  assert len(files) <= 8, files
  assert sum(os.path.getsize(out / f) for f in files) < 16 * 2**20
  with open(out / "summary.md") as f:
    summary = f.read()
  assert summary.startswith("# fp8jax GPU check: PASS")
