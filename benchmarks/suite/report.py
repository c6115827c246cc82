"""What the suite reports: floor fractions, the target ratios, the tables and the JSON.

See benchmarks/README.md for the targets and what "of floor" means.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any, NamedTuple

from benchmarks import common
from benchmarks.suite import registry


class Ratio(NamedTuple):
  """A target on time(numerator) / time(denominator), at the same mode and size.

  It is computed at every size and mode where both were measured, or only at `sizes`
  (size labels such as "16M") and in `modes` where these are given.
  """
  key: str
  numerator: str
  denominator: str
  op: str                                # ">=" or "<="
  target: float
  sizes: tuple[str, ...] | None = None   # None: every size
  modes: tuple[str, ...] | None = None   # None: both modes


# The targets are for the CPU machine, at 64M elements unless a ratio gives its sizes (the
# decode ≥ 1.1 target is meant to hold at every size). The first six are the older targets.
RATIOS = (
    Ratio("encode speedup vs xla astype", "xla astype e4m3fn", "encode e4m3fn", ">=", 1.5),
    Ratio("encode speedup vs torch .to()", "torch .to(e4m3fn)", "encode e4m3fn", ">=", 1.5),
    Ratio("decode speedup vs xla astype", "xla astype f8→bf16", "decode e4m3fn→bf16", ">=", 1.5),
    Ratio("stochastic / nearest", "encode e4m3fn stochastic", "encode e4m3fn", "<=", 1.5),
    Ratio("quantize tensor / encode", "quantize tensor", "encode e4m3fn", "<=", 1.7),
    Ratio("torchao recipe / quantize tensor", "torchao recipe", "quantize tensor", ">=", 2.0),
    Ratio("decode speedup vs xla astype (≥1.1)", "xla astype f8→bf16", "decode e4m3fn→bf16",
          ">=", 1.1),
    Ratio("e5m2 encode vs xla astype", "xla astype e5m2", "encode e5m2", ">=", 1.0),
    Ratio("stochastic / nearest (≤1.3)", "encode e4m3fn stochastic", "encode e4m3fn", "<=", 1.3),
    Ratio("out= encode vs donated xla astype (16M)", "xla astype e4m3fn", "encode e4m3fn", ">=",
          1.5, sizes=("16M",), modes=("reused",)),
    Ratio("out= encode vs torch copy_ (16M)", "torch .to(e4m3fn)", "encode e4m3fn", ">=", 2.5,
          sizes=("16M",), modes=("reused",)),
    Ratio("fresh encode vs xla astype (16M)", "xla astype e4m3fn", "encode e4m3fn", ">=", 1.1,
          sizes=("16M",), modes=("fresh",)),
    Ratio("fresh encode vs torch .to() (16M)", "torch .to(e4m3fn)", "encode e4m3fn", ">=", 1.4,
          sizes=("16M",), modes=("fresh",)),
)

# (key, implementations, mode, floor, target): each implementation's fraction of `floor`
# (its bytes at the floor's bandwidth in the same mode and size, over its time) must be
# at least `target`; the entry's value is the smallest of them. For the CPU machine, at
# 64M elements.
FLOOR_TARGETS = (
    ("every quantize granularity ≥ 0.6 floor (reused)", registry.QUANTIZE_NAMES, "reused",
     registry.JAX_FLOORS[1], 0.6),
    ("mx/nvfp4 quantize ≥ 0.5 floor (reused)", registry.MX_NVFP4_QUANTIZE, "reused",
     registry.JAX_FLOORS[1], 0.5),
    ("dequantize ≥ 0.6 floor (reused)", registry.DEQUANTIZE_NAMES, "reused",
     registry.JAX_FLOORS[1], 0.6),
)

# What the JSON's "notes" say.
NOTES = (
    ("times in seconds; gb_per_s counts bytes read + written: 3 per element for casts "
     "and decode, 5 for per-tensor quantize (amax pass + cast), 3 for per-axis, "
     "per-block and MX quantize, 3 for dequantize (codes in, bfloat16 out)"),
    (f"floor_fraction: (bytes / the faster of {' and '.join(registry.JAX_FLOORS)}'s "
     "bandwidth in the same mode and size) / time; 1 would be a copy's speed"),
    ("ratios: time(numerator) / time(denominator); targets are for the CPU machine, at "
     "64M elements unless the ratio names a size (some are computed only at that size "
     "and in one mode)"),
    "first_call_s of runs after the first can hit the jit caches",
    ("quantize mx rceil, mxfp4 (e2m1fn) and nvfp4 (e2m1fn, torchao rule, 1x16 blocks) "
     "write unpacked codes, one byte each: 3 bytes per element for MX, 5 for NVFP4 (its "
     "tensor scale needs the tensor's amax before the first code, as per-tensor quantize)"),
    ("floor_targets: each listed implementation's bytes at the named floor's bandwidth "
     "over its time, in the target's mode; the value is the smallest (worst), and "
     "floor_target_summary gives its range over the runs"),
)


# --- derived numbers ---------------------------------------------------------------

def add_floor_fractions(rows: list[dict[str, Any]]) -> None:
  """floor_fraction = (bytes moved / floor bandwidth) / time, same mode and size."""
  floors: dict[tuple[str, str], float] = {}
  for r in rows:
    if r["name"] in registry.JAX_FLOORS:
      key = (r["mode"], r["size"])
      floors[key] = max(floors.get(key, 0.0), r["gb_per_s"])
  for r in rows:
    bw = floors.get((r["mode"], r["size"]))
    r["floor_fraction"] = None if bw is None else r["gb_per_s"] / bw


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Every RATIOS entry at each mode and size where both of its times were measured (and
  which its `sizes` and `modes` allow)."""
  t = {(r["name"], r["mode"], r["size"]): r["median_s"] for r in rows}
  keys = sorted({(r["mode"], r["size"], r["elements"]) for r in rows},
                key=lambda k: (registry.MODES.index(k[0]), k[2]))
  out = []
  for ratio in RATIOS:
    for mode, size, _ in keys:
      if ((ratio.sizes is not None and size not in ratio.sizes)
          or (ratio.modes is not None and mode not in ratio.modes)):
        continue
      a, b = t.get((ratio.numerator, mode, size)), t.get((ratio.denominator, mode, size))
      if a is None or b is None:
        continue
      value = a / b
      meets = value >= ratio.target if ratio.op == ">=" else value <= ratio.target
      out.append({"ratio": ratio.key, "numerator": ratio.numerator,
                  "denominator": ratio.denominator, "mode": mode, "size": size,
                  "value": value, "target": f"{ratio.op} {ratio.target}", "meets": meets})
  return out


def floor_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Every FLOOR_TARGETS entry at each size where its floor and implementations ran.

  An entry has the keys of a `ratios` one ("ratio" is the target's name), so that the
  same tables and summaries show it; "fractions" gives each implementation's.
  """
  gbps = {(r["name"], r["mode"], r["size"]): r["gb_per_s"] for r in rows}
  sizes = sorted({(r["size"], r["elements"]) for r in rows}, key=lambda k: k[1])
  out = []
  for key, names, mode, floor, target in FLOOR_TARGETS:
    for size, _ in sizes:
      bw = gbps.get((floor, mode, size))
      fractions = {n: gbps[(n, mode, size)] / bw for n in names if (n, mode, size) in gbps}
      if not bw or not fractions:
        continue
      worst = min(fractions, key=fractions.get)
      value = fractions[worst]
      out.append({"ratio": key, "numerator": worst, "denominator": floor, "mode": mode,
                  "size": size, "value": value, "target": f">= {target}",
                  "meets": value >= target, "fractions": fractions})
  return out


def summarize_runs(runs: list[dict[str, Any]], field: str = "ratios") -> list[dict[str, Any]]:
  """Each ratio's (or, with field="floor_targets", each floor target's) min and max over
  repeated runs."""
  acc: dict[tuple[str, str, str], list[float]] = {}
  meta = {}
  for run in runs:
    for e in run.get(field, []):
      k = (e["ratio"], e["mode"], e["size"])
      acc.setdefault(k, []).append(e["value"])
      meta[k] = e["target"]
  out = []
  for (key, mode, size), values in acc.items():
    op, target = meta[(key, mode, size)].split()
    lo, hi = min(values), max(values)
    worst = lo if op == ">=" else hi
    meets = worst >= float(target) if op == ">=" else worst <= float(target)
    out.append({"ratio": key, "mode": mode, "size": size, "min": lo, "max": hi,
                "runs": len(values), "target": meta[(key, mode, size)],
                "meets_in_every_run": meets})
  return out


# --- tables ------------------------------------------------------------------------

def _table(head: list[str], body: list[list[str]]) -> str:
  """Aligned columns: the first left-justified, the others right-justified."""
  widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(row, widths, strict=True))) for row in [head] + body]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def report(run: dict[str, Any], impl_names: list[str]) -> str:
  """The tables printed after a run: times and GB/s, floor fractions, first calls, ratios."""
  rows = run["results"]
  sizes = sorted({(r["elements"], r["size"]) for r in rows})
  by = {(r["name"], r["mode"], r["size"]): r for r in rows}
  parts = []
  for mode in registry.MODES:
    names = [n for n in impl_names if any((n, mode, s) in by for _, s in sizes)]
    if not names:
      continue
    body = []
    for name in names:
      cells = [name]
      for _, s in sizes:
        r = by.get((name, mode, s))
        cells.append("—" if r is None else f"{common.fmt_time(r['median_s'])} "
                     f"±{100 * r['iqr_s'] / r['median_s']:.0f}% {r['gb_per_s']:6.2f}")
      body.append(cells)
    parts.append(f"## {mode} output: median time, ±interquartile range as a % of it, GB/s "
                 "(bytes read + written)\n"
                 + _table(["implementation"] + [s for _, s in sizes], body))
    body = []
    for name in names:
      cells = [name]
      for _, s in sizes:
        r = by.get((name, mode, s))
        frac = None if r is None else r["floor_fraction"]
        cells.append("—" if frac is None else f"{frac:.2f}")
      body.append(cells)
    parts.append(f"## {mode} output: fraction of the memory floor (floor time / time)\n"
                 + _table(["implementation"] + [s for _, s in sizes], body))
  body = []
  for name in impl_names:
    for mode in registry.MODES:
      if any((name, mode, s) in by for _, s in sizes):
        body.append([f"{name} [{mode}]"] + [
            common.fmt_time(by[(name, mode, s)]["first_call_s"]) if (name, mode, s) in by else "—"
            for _, s in sizes])
  parts.append("## first call (compile and one run for JAX; table build for the torch "
               "bridge's small sizes)\n" + _table(["implementation"] + [s for _, s in sizes],
                                                  body))
  parts.append(ratio_table(run["ratios"] + run.get("floor_targets", [])))
  return "\n\n".join(parts)


def _ratio_grid(entries: list[dict[str, Any]], cell: Callable[[dict[str, Any]], str]) -> str:
  """A table of ratios (rows) by mode and size (columns), one `cell` each."""
  cols = sorted({(registry.MODES.index(e["mode"]), e["mode"], e["size"]) for e in entries},
                key=lambda c: (c[0], registry.parse_size(c[2])))
  by = {(e["ratio"], e["mode"], e["size"]): e for e in entries}
  body = []
  lines = ([(r.key, r.op, r.target) for r in RATIOS]
           + [(key, ">=", target) for key, _, _, _, target in FLOOR_TARGETS])
  for key, op, target in lines:
    if not any((key, m, s) in by for _, m, s in cols):
      continue
    cells = [key, f"{op} {target}"]
    for _, m, s in cols:
      e = by.get((key, m, s))
      cells.append("—" if e is None else cell(e))
    body.append(cells)
  return _table(["ratio", "target"] + [f"{m} {s}" for _, m, s in cols], body)


def _mark(meets: bool) -> str:
  return " ✓" if meets else " ✗"


def ratio_table(entries: list[dict[str, Any]]) -> str:
  """The targets: ratios of median times, then floor targets (the worst fraction of the
  named floor among their implementations)."""
  return ("## ratios of median times and floor targets (targets are for the CPU machine, at "
          "64M elements unless the ratio names a size; ✓ meets, ✗ misses)\n" + _ratio_grid(
              entries, lambda e: f"{e['value']:.2f}{_mark(e['meets'])}"))


def summary_table(summary: list[dict[str, Any]]) -> str:
  runs = summary[0]["runs"] if summary else 0
  return (f"## ratio and floor target ranges over {runs} runs (min–max; ✓: the target is "
          f"met in every run, ✗: missed in some run)\n"
          + _ratio_grid(summary, lambda e: f"{e['min']:.2f}–{e['max']:.2f}"
                        f"{_mark(e['meets_in_every_run'])}"))


def mismatches(runs: list[dict[str, Any]]) -> list[str]:
  """'size: check' for every bit check that failed in any run."""
  return [f"{size}: {name}" for run in runs for size, checks in run["bit_identical"].items()
          for name, ok in checks.items() if not ok]


# --- the JSON ----------------------------------------------------------------------

def environment(argv: list[str]) -> dict[str, Any]:
  """The date, the command, the machine, the versions and the devices of a run."""
  env = {"date": common.now(), "command": common.command(argv), **common.machine(),
         **common.versions(), **common.device()}
  torch = registry.torch
  if torch is not None:
    env.update(torch=torch.__version__, torch_num_threads=torch.get_num_threads(),
               torch_device=registry.torch_device())
  else:
    env.update(torch=None)
  return env


def result(env: dict[str, Any], sizes: list[int], modes: list[str], timing: Any,
           wall_s: float, impls: list[registry.Impl], skipped: list[dict[str, str]],
           runs: list[dict[str, Any]], summary: list[dict[str, Any]],
           floor_summary: list[dict[str, Any]] | None = None) -> dict[str, Any]:
  """Everything a run writes to <platform>.json."""
  return {
      "environment": env, "sizes": [registry.size_label(n) for n in sizes], "modes": modes,
      "timing": dataclasses.asdict(timing), "wall_s": wall_s,
      "implementations": [
          {"name": i.name, "kind": i.kind, "bytes_per_element": i.bytes_per_element,
           "modes": [m for m in modes if (i.fresh if m == "fresh" else i.reused)],
           "note": i.note} for i in impls],
      "skipped": skipped, "notes": list(NOTES), "runs": runs, "ratio_summary": summary,
      "floor_target_summary": (summarize_runs(runs, "floor_targets") if floor_summary is None
                               else floor_summary),
      "floor_target_definitions": [{"target": key, "implementations": list(names), "mode": mode,
                         "floor": floor, "min_fraction": target}
                        for key, names, mode, floor, target in FLOOR_TARGETS],
      "bit_identical_all": not mismatches(runs)}
