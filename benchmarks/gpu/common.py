"""Shared pieces of the GPU check: the run context, budgets, checks that never raise, bit views.

Every section is a list of named checks. A check is a function returning a dict with at
least `ok`; `run_check` turns any exception into a recorded error with its traceback, so
one broken check never hides the others and the script always reaches its report. Files,
JSON, versions, the commit and medians come from benchmarks/common.py.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import time
import traceback
from typing import Any

import numpy as np

# Section and check states, as written to results.json.
OK, FAIL, ERROR, SKIPPED = "ok", "fail", "error", "skipped"


@dataclasses.dataclass
class Context:
  """What every section needs: the mode, the two backends, the clock."""

  cpu_mode: bool  # the CPU backend plays the accelerator (a smoke run of every code path)
  quick: bool  # small sizes and few repeats
  outdir: str
  root: str  # the repository root (for the pytest subprocess and git)
  device: Any  # the jax.Device under test
  cpu: Any  # the jax.Device the results are compared against
  deadline: float  # time.monotonic() by which every section should be done

  def remaining(self) -> float:
    return self.deadline - time.monotonic()


class Budget:
  """A section's soft time limit: checks left when it runs out are recorded as skipped."""

  def __init__(self, seconds: float, ctx: Context | None = None):
    limit = seconds if ctx is None else min(seconds, max(ctx.remaining(), 0.0))
    self.start = time.monotonic()
    self.limit = limit

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def over(self) -> bool:
    return self.elapsed() > self.limit


def run_check(name: str, fn: Callable[[], dict[str, Any]], budget: Budget | None = None
              ) -> dict[str, Any]:
  """Runs one check; never raises. The result always has `name`, `status` and `seconds`."""
  if budget is not None and budget.over():
    return {"name": name, "status": SKIPPED, "ok": None, "seconds": 0.0,
            "reason": f"section time budget of {budget.limit:.0f} s used up"}
  start = time.monotonic()
  try:
    result = dict(fn())
    if "status" not in result:
      result["status"] = OK if result.get("ok") else FAIL
  except Exception as e:  # the point is to record anything and go on
    result = {"ok": False, "status": ERROR, "error": f"{type(e).__name__}: {e}"[:2000],
              "traceback": traceback.format_exc()[-6000:]}
  result = {"name": name, **result, "seconds": round(time.monotonic() - start, 3)}
  print(f"  [{result['status']:>7}] {name} ({result['seconds']:.1f} s)", flush=True)
  return result


def summarize(checks: list[dict[str, Any]]) -> dict[str, Any]:
  """A section's status from its checks: error > fail > ok; all skipped is skipped."""
  states = [c["status"] for c in checks]
  if ERROR in states:
    status = ERROR
  elif FAIL in states:
    status = FAIL
  elif states and all(s == SKIPPED for s in states):
    status = SKIPPED
  else:
    status = OK
  return {"status": status, "checks": checks,
          "compared": int(sum(c.get("compared", 0) or 0 for c in checks)),
          "counts": {s: states.count(s) for s in (OK, FAIL, ERROR, SKIPPED)}}


def bits(a: Any) -> np.ndarray:
  """The bit patterns of an array as unsigned integers of the same width (NaN bits kept)."""
  a = np.asarray(a)
  if a.dtype == np.bool_ or a.dtype.kind == "u":
    return a
  return a.view(f"u{a.dtype.itemsize}")


def first_mismatches(got: np.ndarray, want: np.ndarray, limit: int = 6) -> list[str]:
  """A few differing positions, as hex bit patterns, for the report."""
  g, w = bits(got).ravel(), bits(want).ravel()
  idx = np.nonzero(g != w)[0][:limit]
  return [f"[{int(i)}] got {int(g[i]):#x} want {int(w[i]):#x}" for i in idx]
