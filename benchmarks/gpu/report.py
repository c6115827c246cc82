"""The human-readable outputs: summary.md (tables) and speed.png (fraction of copy bandwidth)."""

from __future__ import annotations

import io
import os
from typing import Any

from benchmarks import common
from benchmarks.gpu.speed import FLOOR, FLOORS, OURS, TORCH_PEERS, XLA_PEERS


def _fmt(v: Any, digits: int = 3) -> str:
  if v is None:
    return "—"
  if isinstance(v, float):
    return f"{v:.{digits}g}"
  return str(v)


def _size(n: int | None) -> str:
  return "—" if not n else f"2^{int(n).bit_length() - 1}"


def summary_md(results: dict[str, Any]) -> str:
  """A Markdown page: machine, section verdicts, failing checks, speed table, goals."""
  m = results.get("machine", {})
  v = m.get("versions", {})
  lines = [f"# fp8jax GPU check: {results.get('verdict', '?')}", "",
           (f"- mode: {m.get('mode')}; device: {m.get('device_kind')} ({m.get('device')}), "
            f"compute capability {m.get('compute_capability')}"),
           f"- host: {m.get('hostname')}, {m.get('platform')}",
           (f"- jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, torch {v.get('torch')} "
            f"(CUDA {m.get('torch_cuda')}), numpy {v.get('numpy')}, "
            f"ml_dtypes {v.get('ml_dtypes')}"),
           (f"- nvidia-smi: {m.get('nvidia_smi', {}).get('gpus')} "
            f"{m.get('nvidia_smi', {}).get('header') or ''}"),
           f"- git: {m.get('git', {}).get('commit')} (dirty: {m.get('git', {}).get('dirty')})",
           f"- total time: {_fmt(results.get('seconds'))} s", "",
           "## Sections", "", "| section | status | checks ok/fail/error/skipped | compared | s |",
           "| --- | --- | --- | --- | --- |"]
  for name, sec in results.get("sections", {}).items():
    c = sec.get("counts", {})
    counts = "/".join(str(c.get(k, 0)) for k in ("ok", "fail", "error", "skipped"))
    if name == "tests":
      counts = ", ".join(f"{k} {n}" for k, n in sorted(sec.get("counts", {}).items()))
    seconds = sec.get("wall_s", sec.get("seconds"))  # the tests ran in the background
    lines.append(f"| {name} | {sec.get('status')} | {counts} | {sec.get('compared', '—')} | "
                 f"{_fmt(seconds)} |")
  bad = [(name, c) for name, sec in results.get("sections", {}).items()
         for c in sec.get("checks", []) if c.get("status") in ("fail", "error")]
  if bad:
    lines += ["", "## Failed checks", ""]
    for name, c in bad:
      detail = c.get("error") or c.get("where") or c.get("facts") or c.get("problems") or ""
      lines.append(f"- **{name}: {c['name']}** ({c['status']}): {str(detail)[:400]}")
  tests = results.get("sections", {}).get("tests", {})
  if tests:
    lines += ["", "## Test suite (log in tests.log)", ""]
    for shard in tests.get("shards", []):
      lines.append(f"- `{shard['command']}`: {shard['summary_line'] or shard['counts']}"
                   f"{' (timed out)' if shard['timed_out'] else ''}")
  gemm = results.get("sections", {}).get("gemm", {})
  for c in gemm.get("checks", []):
    if "custom_call_targets" in c:
      lines += ["", "## FP8 GEMM", "",
                (f"- custom calls: {c['custom_call_targets']}; Triton fusions: "
                 f"{c.get('triton_fusion_kinds')}; cuBLASLt FP8: {c.get('cublaslt_f8')}")]
    if "max_error_over_bound" in c:
      lines.append(f"- accuracy {c.get('shape')}: {c['status']}, worst error / bound "
                   f"{_fmt(c['max_error_over_bound'])}, within the float32 bound: "
                   f"{c.get('within_float32_bound')}")
    for name, t in c.get("timings", {}).items():
      lines.append(f"- {name} at {c['size']}^3: {_fmt(t['tflops'], 4)} TFLOP/s "
                   f"({_fmt(t['median_s'] * 1e3, 4)} ms)")
  rows = results.get("sections", {}).get("speed", {}).get("table", [])
  if rows:
    lines += ["", "## Speed (medians; fraction = GB/s over the copy floor's GB/s)", "",
              "| operation | size | ms | GB/s | fraction of copy |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
      lines.append(f"| {r['op']} | {_size(r['elements'])} | {_fmt(r['ms'], 4)} | "
                   f"{_fmt(r['gbps'], 4)} | {_fmt(r.get('fraction_of_copy'))} |")
  goals = results.get("goals", [])
  if goals:
    lines += ["", "## Goals", "", "| goal | value | size | verdict |", "| --- | --- | --- | --- |"]
    for g in goals:
      lines.append(f"| {g['goal']} | {_fmt(g['value'])} | {g.get('at') or '—'} | "
                   f"{g['verdict']} |")
  return "\n".join(lines) + "\n"


def speed_png(results: dict[str, Any], path: str) -> str | None:
  """Bars of fraction-of-copy per operation, one bar per size. Returns a note if skipped."""
  rows = results.get("sections", {}).get("speed", {}).get("table", [])
  if not rows:
    return "no speed measurements to plot"
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except Exception as e:  # matplotlib is optional
    return f"matplotlib unavailable ({e}); speed.png not written"
  order = [op for op in OURS + XLA_PEERS + TORCH_PEERS + FLOORS + [FLOOR]
           if any(r["op"] == op for r in rows)]
  sizes = sorted({r["elements"] for r in rows})
  value = {(r["op"], r["elements"]): r.get("fraction_of_copy") or 0.0 for r in rows}
  width = 0.8 / len(sizes)
  fig, ax = plt.subplots(figsize=(12, 5.5))
  for i, n in enumerate(sizes):
    xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(order))]
    ax.bar(xs, [value.get((op, n), 0.0) for op in order], width, label=_size(n))
  ax.axhline(1.0, color="black", linewidth=0.8)
  ax.axhline(0.85, color="gray", linestyle="--", linewidth=0.8, label="0.85 goal")
  ax.axhline(0.80, color="gray", linestyle=":", linewidth=0.8, label="0.80 goal")
  ax.set_xticks(range(len(order)))
  ax.set_xticklabels(order, rotation=60, ha="right", fontsize=8)
  ax.set_ylabel("fraction of copy bandwidth")
  m = results.get("machine", {})
  ax.set_title(f"fp8jax on {m.get('device_kind')} ({m.get('mode')}), bf16 inputs")
  ax.legend(fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  plt.close(fig)
  common.write_bytes(path, buf.getvalue())
  return None


def write_all(results: dict[str, Any], outdir: str) -> None:
  """summary.md and speed.png; results.json is written by the caller after every section."""
  note = speed_png(results, os.path.join(outdir, "speed.png"))
  results["speed_png"] = note or "speed.png"
  common.write_text(os.path.join(outdir, "summary.md"), summary_md(results))
