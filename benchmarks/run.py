"""The benchmark suite: fp8jax against its peers and the memory floor, side by side.

Usage:
  python benchmarks/run.py                       # 1K, 1M, 16M, 64M elements, both modes
  python benchmarks/run.py --sizes 1K,1M,16M --modes reused --only encode
  python benchmarks/run.py --repeat-run 3        # the whole suite 3 times; ratio ranges
  python benchmarks/run.py --quick --out /tmp/b  # smoke run: 1K and 64K, short timings

Writes <out>/<platform>.json and <platform>.png (cpu, gpu; "-quick" appended with --quick).
What is measured, the output modes, the floors and the targets: benchmarks/README.md.
The suite itself is the package benchmarks/suite; this file is its command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common
from benchmarks.suite import measure, plot, registry, report


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.splitlines()[1:]))
  parser.add_argument("--sizes", default=None,
                      help=f"comma-separated element counts with K/M/G suffixes "
                           f"(default {registry.DEFAULT_SIZES}; {registry.QUICK_SIZES} with "
                           f"--quick)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per measurement (default: adaptive, >= 0.3 s, 5 to 1000)")
  parser.add_argument("--modes", default=",".join(registry.MODES), help="fresh, reused or both")
  parser.add_argument("--out", default=common.RESULTS,
                      help="output directory (default %(default)s)")
  parser.add_argument("--only", default=None,
                      help="measure only implementations whose name contains this (the floors "
                           "always run)")
  parser.add_argument("--repeat-run", type=int, default=1,
                      help="run the whole suite this many times; report each ratio's min–max")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads(N) first (default: torch's own choice, "
                           "reported in the JSON)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: tiny sizes, short timings; files named *-quick")
  return parser


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    sizes = [registry.parse_size(s) for s in (
        args.sizes or (registry.QUICK_SIZES if args.quick else registry.DEFAULT_SIZES)
    ).split(",")]
  except argparse.ArgumentTypeError as e:
    parser.error(f"--sizes: {e}")
  modes = [m.strip() for m in args.modes.split(",")]
  bad = [m for m in modes if m not in registry.MODES]
  if bad:
    parser.error(f"--modes takes fresh and/or reused (got {', '.join(bad)})")
  if args.repeats is not None and args.repeats < 1:
    parser.error(f"--repeats must be at least 1 (got {args.repeats})")
  if args.repeat_run < 1:
    parser.error(f"--repeat-run must be at least 1 (got {args.repeat_run})")
  timing = (measure.Timing.quick(args.repeats) if args.quick
            else measure.Timing(repeats=args.repeats))
  if args.torch_threads is not None:
    if args.torch_threads < 1:
      parser.error(f"--torch-threads must be at least 1 (got {args.torch_threads})")
    if registry.torch is not None:
      registry.torch.set_num_threads(args.torch_threads)
  impls, skipped = registry.selected(args.only)
  names = [i.name for i in impls]

  for s in skipped:
    log(f"skipping {s['name']}: {s['reason']}")
  env = report.environment([sys.argv[0]] + argv)
  log(f"{env['device']} ({env['device_kind']}), {env['cpu_count']} CPUs, jax {env['jax']}, "
      f"torch {env['torch']} ({env.get('torch_num_threads')} threads)")
  wall = time.perf_counter()
  runs = []
  for k in range(args.repeat_run):
    if args.repeat_run > 1:
      log(f"=== run {k + 1} of {args.repeat_run}")
    runs.append(measure.run_once(sizes, modes, impls, timing, log))
    if args.repeat_run > 1:
      print(f"# run {k + 1} of {args.repeat_run}\n"
            + report.ratio_table(runs[-1]["ratios"] + runs[-1]["floor_targets"]) + "\n")
  summary = report.summarize_runs(runs)
  floor_summary = report.summarize_runs(runs, "floor_targets")
  print(report.report(runs[-1], names))
  if args.repeat_run > 1:
    print("\n" + report.summary_table(summary + floor_summary))
  mismatches = report.mismatches(runs)
  if mismatches:
    print("\n!!! BIT MISMATCHES (the timings above compare different results):\n  "
          + "\n  ".join(mismatches))
  stem = env["platform"] + ("-quick" if args.quick else "")
  json_path = os.path.join(args.out, stem + ".json")
  png_path = os.path.join(args.out, stem + ".png")
  result = report.result(env, sizes, modes, timing, time.perf_counter() - wall, impls,
                         skipped, runs, summary, floor_summary)
  common.write_json(json_path, result, indent=1, ensure_ascii=False)
  why = plot.plot(runs[-1], names, png_path, plot.figure_title(env))
  log(f"wrote {json_path}" + (f" and {png_path}" if why is None else f"; no plot: {why}"))
  log(f"total {time.perf_counter() - wall:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
