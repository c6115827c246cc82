"""The GPU check: `python -m benchmarks.gpu OUTDIR [--cpu] [--quick]` from the repository root.

Runs every section in turn, each fenced so that a failure is recorded (with its
traceback) and the next section still runs, writes results.json after every section and
summary.md, speed.png at the end. The exit status is 1 when a correctness check failed or
a section broke, 2 when the backend under test is missing, 0 otherwise; speed goals are
reported, never fatal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GATING = ("correctness", "torch_bridge", "sharding", "tests", "gemm")  # fail the run
# Whole-run limits (seconds): the GPU run must end within 8 minutes.
TOTAL_S = {"gpu": 450, "gpu quick": 240, "cpu": 600, "cpu quick": 100}
TESTS_S = {"gpu": 270, "gpu quick": 120, "cpu": 450, "cpu quick": 75}


def parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="benchmarks/gpu/run.sh", description=__doc__.split("\n")[0])
  p.add_argument("outdir", help="folder for results.json, summary.md, speed.png, tests.log")
  p.add_argument("--cpu", action="store_true",
                 help="use the CPU backend as the device under test (a smoke run)")
  p.add_argument("--quick", action="store_true", help="small sizes, few repeats, fewer tests")
  return p.parse_args(argv)


def set_up_environment(cpu_mode: bool) -> None:
  """Must run before JAX is imported: the platforms and the allocator."""
  if cpu_mode:
    os.environ["JAX_PLATFORMS"] = "cpu"
  else:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and "cpu" not in platforms.split(","):
      os.environ["JAX_PLATFORMS"] = platforms + ",cpu"  # the reference backend is needed
  # Without preallocation JAX, torch and the pytest process share the GPU's memory.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def section(name: str, fn: Any, ctx: Any) -> dict[str, Any]:
  """Runs a section; anything it raises becomes an `error` result with the traceback."""
  print(f"== {name}", flush=True)
  start = time.monotonic()
  try:
    result = fn(ctx)
  except Exception as e:  # record and go on to the next section
    result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
              "traceback": traceback.format_exc()[-6000:], "checks": []}
  result["seconds"] = round(time.monotonic() - start, 1)
  print(f"== {name}: {result['status']} ({result['seconds']} s)", flush=True)
  return result


def verdict(results: dict[str, Any]) -> tuple[str, int]:
  """PASS when no gating section failed and no section broke (speed goals never count)."""
  broken = [n for n, s in results["sections"].items()
            if s.get("status") in ("fail", "error") and (n in GATING or s["status"] == "error")]
  return ("FAIL: " + ", ".join(broken), 1) if broken else ("PASS", 0)


def main(argv: list[str]) -> int:
  args = parse(argv)
  set_up_environment(args.cpu)
  # A termination (a harness's time limit) unwinds like Ctrl-C, so the cleanup below runs.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  start = time.monotonic()
  os.makedirs(args.outdir, exist_ok=True)

  import jax

  from benchmarks import common
  from benchmarks.gpu import (
    correctness,
    gemm,
    machine,
    report,
    sharding,
    speed,
    suite,
    torch_bridge,
  )
  from benchmarks.gpu.common import Context

  mode = ("cpu" if args.cpu else "gpu") + (" quick" if args.quick else "")
  results: dict[str, Any] = {"mode": mode, "sections": {}}
  json_path = os.path.join(args.outdir, "results.json")

  def save() -> None:
    results["seconds"] = round(time.monotonic() - start, 1)
    common.write_text(json_path, common.to_json(results))

  try:
    device = jax.devices("cpu")[0] if args.cpu else jax.devices("gpu")[0]
  except RuntimeError as e:
    results.update(verdict=f"FAIL: no {'cpu' if args.cpu else 'gpu'} backend", error=str(e))
    save()
    print(results["verdict"], e, file=sys.stderr)
    return 2
  ctx = Context(cpu_mode=args.cpu, quick=args.quick, outdir=args.outdir, root=ROOT,
                device=device, cpu=jax.devices("cpu")[0], deadline=start + TOTAL_S[mode])
  results["machine"] = machine.describe(ctx, argv)
  save()
  print(f"device under test: {device} ({results['machine']['device_kind']}); mode: {mode}",
        flush=True)

  tests = None
  try:
    tests = suite.Run(ctx, TESTS_S[mode])  # in the background, during sections a-c
  except Exception as e:
    results["sections"]["tests"] = {"status": "error", "error": repr(e), "checks": [],
                                    "traceback": traceback.format_exc()[-4000:]}
  try:
    for name, module in (("correctness", correctness), ("torch_bridge", torch_bridge),
                         ("sharding", sharding)):
      results["sections"][name] = section(name, module.run, ctx)
      save()
    if tests is not None:  # nothing is timed while the tests still use the device
      results["sections"]["tests"] = section("tests", lambda _: tests.finish(), ctx)
      save()
  finally:
    if tests is not None:  # interrupted: the test processes must not outlive this one
      tests.kill()
  for name, module in (("gemm", gemm), ("speed", speed)):
    results["sections"][name] = section(name, module.run, ctx)
    save()
  try:
    results["goals"] = speed.goals(results["sections"]["speed"], results["sections"]["gemm"],
                                   ctx.cpu_mode)
  except Exception:
    results["goals_error"] = traceback.format_exc()[-4000:]
  results["verdict"], code = verdict(results)
  try:
    report.write_all(results, args.outdir)
  except Exception:  # the JSON below still gets written
    results["report_error"] = traceback.format_exc()[-4000:]
  save()
  print(f"{results['verdict']} in {results['seconds']} s; results in {args.outdir}", flush=True)
  return code


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
