"""The timing loop: first call, warm-up, timed calls, medians; one pass over sizes and modes.

For each size the floors are timed first and last (the faster kept), the other
implementations in between, each mode in turn; the bits are checked before timing and
the reused outputs compared with the fresh ones after it. See benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import gc
import math
import time
from typing import Any
import warnings
import zlib

from benchmarks import common
from benchmarks.suite import registry, report
from benchmarks.suite.registry import Impl


@dataclasses.dataclass(frozen=True)
class Timing:
  """How long to measure: a time budget, bounds on the count, warm-up calls."""
  min_time_s: float = 0.3
  min_repeats: int = 5
  max_repeats: int = 1000
  warmup: int = 2
  repeats: int | None = None       # exact count, overriding the budget

  @classmethod
  def quick(cls, repeats: int | None = None) -> Timing:
    """The smoke run's: about 0.01 s per measurement, 3 to 20 calls, one warm-up call."""
    return cls(min_time_s=0.01, min_repeats=3, max_repeats=20, warmup=1, repeats=repeats)


def measure(step: Callable[[], None], timing: Timing) -> dict[str, Any]:
  """First call, warm-up, then per-call times; returns the statistics in seconds."""
  donation_unused = False
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
  for w in caught:
    if "donated buffers were not usable" in str(w.message):
      donation_unused = True
  warm = common.time_calls(step, timing.warmup)
  if timing.repeats is not None:
    reps = timing.repeats
  else:
    est = max(min(warm) if warm else first, 1e-7)
    reps = min(timing.max_repeats, max(timing.min_repeats, math.ceil(timing.min_time_s / est)))
  times = common.time_calls(step, reps)
  return {"first_call_s": first, **common.spread(times), "repeats": reps,
          "donation_unused": donation_unused}


def run_once(sizes: list[int], modes: list[str], impls: list[Impl], timing: Timing,
             log: Callable[[str], None]) -> dict[str, Any]:
  """One pass over every size, mode and implementation."""
  rows: list[dict[str, Any]] = []
  bit_identical: dict[str, dict[str, bool]] = {}
  for n in sizes:
    label = registry.size_label(n)
    log(f"[{label}] preparing data")
    d = registry.make_data(n)
    checks = registry.check_bits(d)
    digests: dict[tuple[str, str], int] = {}
    for mode in modes:
      # The floors run first and again last, and keep the faster median: a floor
      # is a lower bound, and on a busy machine one measurement can be unlucky.
      floors = [i for i in impls if i.kind == "floor"]
      measured: dict[str, dict[str, Any]] = {}
      for impl in floors + [i for i in impls if i.kind != "floor"] + floors:
        factory = impl.fresh if mode == "fresh" else impl.reused
        if factory is None:
          continue
        step, last = factory(d)
        stats = measure(step, timing)
        digests[(impl.name, mode)] = zlib.crc32(last())
        del step, last
        log(f"[{label}] {mode:6s} {impl.name:30s} {common.fmt_time(stats['median_s']):>9s}  "
            f"(first {common.fmt_time(stats['first_call_s'])}, {stats['repeats']} repeats)")
        if stats["donation_unused"]:
          log(f"  !!! {impl.name}: JAX did not use the donated buffer")
        earlier = measured.get(impl.name)
        if earlier is not None:
          medians = [earlier["median_s"], stats["median_s"]]
          stats = min(earlier, stats, key=lambda st: st["median_s"])
          stats["first_call_s"] = earlier["first_call_s"]
          stats["medians_s"] = medians
        measured[impl.name] = stats
      for impl in impls:
        stats = measured.get(impl.name)
        if stats is None:
          continue
        nbytes = impl.bytes_per_element * n
        rows.append({"name": impl.name, "kind": impl.kind, "mode": mode, "size": label,
                     "elements": n, "bytes_per_element": impl.bytes_per_element,
                     "gb_per_s": nbytes / stats["median_s"] / 1e9,
                     "elements_per_s": n / stats["median_s"], **stats})
    for impl in impls:
      fresh, reused = digests.get((impl.name, "fresh")), digests.get((impl.name, "reused"))
      if fresh is not None and reused is not None and impl.kind != "floor":
        checks[f"{impl.name}: reused == fresh"] = fresh == reused
    # Checked here, from the outputs kept above, so that no check warms a timed jit.
    for mode in modes:
      ours = digests.get(("interop round_to_fp8 (torch)", mode))
      ref = digests.get(("encode e4m3fn", mode))
      if ours is not None and ref is not None:
        checks[f"interop round_to_fp8 == encode e4m3fn ({mode})"] = ours == ref
    for name, ok in checks.items():
      if not ok:
        log(f"!!! BIT MISMATCH at {label}: {name} is FALSE")
    bit_identical[label] = checks
    del d
    gc.collect()
  report.add_floor_fractions(rows)
  return {"results": rows, "bit_identical": bit_identical, "ratios": report.ratios(rows),
          "floor_targets": report.floor_targets(rows)}
