"""`fp8jax quantize` on a whole checkpoint against safetensors' load-and-save and a torch script.

Usage: python benchmarks/cli.py [--layers 16] [--repeat 3] [--quick] [--out FILE]

Writes a synthetic bf16 checkpoint once (default: 16 layers, each one 4096x4096 and one
11008x4096 weight, 32 tensors, 1.84 GiB), then runs three commands on it, each as a fresh
process, `--repeat` times, interleaved (the order rotates every round):

- `fp8jax quantize IN OUT --format e4m3fn --scaling block:128x128 -q`;
- safetensors load and save: `save_file(load_file(IN), OUT)` (safetensors.torch);
- the torch script (TORCH_SCRIPT below): the whole file in memory, 128x128 block amax
  scales, divide, clamp to +-448, cast to torch.float8_e4m3fn, save_file.

Each run's wall time, CPU time and peak RSS come from os.wait4 on that process; the
medians are compared with the targets (quantize <= 1.6x the load-and-save time, and the
torch script >= 1.5x quantize's time). Writes benchmarks/results/cli.json (or --out;
cli-quick.json with --quick), atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common

# Writes the checkpoint: argv = OUT, layers, d_model, d_ff. One tensor at a time, straight
# into the safetensors layout (8-byte header length, JSON header, raw little-endian data),
# so that the generator never holds the whole file.
GENERATE_SCRIPT = """\
import json, struct, sys
import torch
path, layers, d, f = sys.argv[1], *map(int, sys.argv[2:5])
shapes = []
for i in range(layers):
  shapes.append((f"model.layers.{i}.self_attn.q_proj.weight", (d, d)))
  shapes.append((f"model.layers.{i}.mlp.gate_proj.weight", (f, d)))
header, offset = {"__metadata__": {"format": "pt"}}, 0
for name, (r, c) in shapes:
  header[name] = {"dtype": "BF16", "shape": [r, c], "data_offsets": [offset, offset + 2 * r * c]}
  offset += 2 * r * c
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
g = torch.Generator().manual_seed(0)
with open(path, "wb") as out:
  out.write(struct.pack("<Q", len(text)) + text)
  for name, shape in shapes:
    w = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    w.view(torch.int16).numpy().tofile(out)
"""

# safetensors' own load and save of the same file.
SAFETENSORS_SCRIPT = """\
import sys
from safetensors.torch import load_file, save_file
save_file(load_file(sys.argv[1]), sys.argv[2])
"""

# The torch script of the issue: the whole file in memory, 128x128 block scales (amax /
# 448, stored as fp8jax and DeepSeek-V3 store them, under `_scale_inv`), divide, clamp,
# cast. Shapes that are not multiples of 128 are padded for the scales and cropped back.
TORCH_SCRIPT = """\
import sys, torch
from safetensors.torch import load_file, save_file
B, MAX = 128, torch.finfo(torch.float8_e4m3fn).max
out = {}
for name, w in load_file(sys.argv[1]).items():
  if w.ndim != 2 or not w.is_floating_point():
    out[name] = w
    continue
  r, c = w.shape
  x = torch.nn.functional.pad(w.float(), (0, -c % B, 0, -r % B)) if r % B or c % B else w.float()
  x = x.reshape(x.shape[0] // B, B, x.shape[1] // B, B)
  scale = x.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12) / MAX
  q = (x / scale).clamp(-MAX, MAX).to(torch.float8_e4m3fn).reshape(-1, x.shape[2] * B)
  out[name], out[name + "_scale_inv"] = q[:r, :c].contiguous(), scale[:, 0, :, 0].contiguous()
save_file(out, sys.argv[2])
"""

FP8JAX = "fp8jax quantize"
SAFETENSORS = "safetensors load+save"
TORCH = "torch script"
IMPLS = (FP8JAX, SAFETENSORS, TORCH)

# (name, numerator, denominator, target, "<=" or ">="): median time ratios.
TARGETS = (
    ("quantize / safetensors load+save", FP8JAX, SAFETENSORS, 1.6, "<="),
    ("torch script / quantize", TORCH, FP8JAX, 1.5, ">="),
)

GiB = 1 << 30
MiB = 1 << 20


def _commands(tmp: str, src: str) -> dict[str, tuple[list[str], str]]:
  """Each implementation's command line and its output file."""
  py = sys.executable
  return {
      FP8JAX: ([py, "-m", "fp8jax", "quantize", src, os.path.join(tmp, "fp8jax.safetensors"),
                "--format", "e4m3fn", "--scaling", "block:128x128", "-q"],
               os.path.join(tmp, "fp8jax.safetensors")),
      SAFETENSORS: ([py, os.path.join(tmp, "safetensors_roundtrip.py"), src,
                     os.path.join(tmp, "safetensors.safetensors")],
                    os.path.join(tmp, "safetensors.safetensors")),
      TORCH: ([py, os.path.join(tmp, "torch_fp8.py"), src,
               os.path.join(tmp, "torch.safetensors")],
              os.path.join(tmp, "torch.safetensors")),
  }


def _run(argv: list[str], log: str) -> dict:
  """Runs argv as a fresh process: wall and CPU seconds and peak RSS, from os.wait4.

  The child's ru_maxrss is at least this process's peak RSS (Linux carries the old memory
  map's high-water mark across exec), which is why this launcher imports nothing large
  until every run is done; its own peak is recorded as `launcher_maxrss_bytes`.
  """
  load = os.getloadavg()
  with open(log, "wb") as f:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=common.ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    with open(log, "rb") as f:
      tail = f.read()[-3000:].decode(errors="replace")
    raise SystemExit(f"cli.py: {' '.join(argv)} exited with {proc.returncode}:\n{tail}")
  return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
          "user_s": usage.ru_utime, "system_s": usage.ru_stime,
          "maxrss_bytes": usage.ru_maxrss * 1024, "loadavg_before": list(load)}


def _agreement(fp8jax_out: str, torch_out: str, name: str) -> dict:
  """How fp8jax's output and the torch script's agree on one weight: the share of equal
  e4m3fn codes and the largest relative difference of the scales."""
  from safetensors import safe_open
  import torch

  # A single file is written in fp8jax's own layout (codes under a name no loader takes
  # for the weight); the torch script keeps the DeepSeek-V3 names.
  with safe_open(fp8jax_out, "pt") as a, safe_open(torch_out, "pt") as b:
    qa, qb = a.get_tensor(name + "_fp8jax_codes"), b.get_tensor(name)
    sa, sb = a.get_tensor(name + "_fp8jax_scale"), b.get_tensor(name + "_scale_inv")
  same = (qa.view(torch.uint8) == qb.view(torch.uint8)).float().mean().item()
  rel = ((sa.float() - sb.float()).abs() / sb.float().abs()).max().item()
  return {"tensor": name, "dtypes": [str(qa.dtype), str(qb.dtype)],
          "equal_codes_fraction": same, "scale_max_rel_diff": rel}


def _table(summary: dict, ratios: list[dict]) -> str:
  lines = [f"{'':24} {'median':>9} {'min':>9} {'max':>9} {'CPU':>9} {'peak RSS':>10}"]
  for name in IMPLS:
    s = summary[name]
    lines.append(f"{name:24} {common.fmt_time(s['median_s']):>9} "
                 f"{common.fmt_time(s['min_s']):>9} {common.fmt_time(s['max_s']):>9} "
                 f"{common.fmt_time(s['cpu_median_s']):>9} "
                 f"{s['maxrss_median_bytes'] / MiB:>7.0f} MiB")
  lines.append("")
  for r in ratios:
    mark = "✓" if r["met"] else "✗"
    lines.append(f"{r['name']:34} {r['value']:5.2f}  (target {r['op']} {r['target']})  {mark}")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=None,
                      help="layers of one d×d and one d_ff×d bf16 weight (default 16; 2 "
                           "with --quick)")
  parser.add_argument("--repeat", type=int, default=3, help="runs of each command")
  parser.add_argument("--quick", action="store_true",
                      help="a small checkpoint: d=1024, d_ff=2752 (2 layers by default)")
  parser.add_argument("--tmpdir", default=None,
                      help="where the checkpoint and outputs go (default: the system's)")
  parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
  parser.add_argument("--out", default=None,
                      help="the JSON (default benchmarks/results/cli.json; cli-quick.json "
                           "with --quick)")
  args = parser.parse_args()
  d, d_ff = (1024, 2752) if args.quick else (4096, 11008)
  layers = args.layers if args.layers is not None else (2 if args.quick else 16)
  out_path = args.out or common.results_path("cli-quick.json" if args.quick else "cli.json")

  tmp = tempfile.mkdtemp(prefix="fp8jax-cli-bench-", dir=args.tmpdir)
  try:
    for fname, text in (("generate.py", GENERATE_SCRIPT),
                        ("safetensors_roundtrip.py", SAFETENSORS_SCRIPT),
                        ("torch_fp8.py", TORCH_SCRIPT)):
      with open(os.path.join(tmp, fname), "w", encoding="utf-8") as f:
        f.write(text)
    src = os.path.join(tmp, "checkpoint.safetensors")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(tmp, "generate.py"), src, str(layers),
                    str(d), str(d_ff)], check=True, cwd=common.ROOT)
    gen_s = time.perf_counter() - t0
    size = os.path.getsize(src)
    print(f"checkpoint: {2 * layers} bf16 tensors ({layers} × [{d}, {d}] and [{d_ff}, {d}]), "
          f"{size / GiB:.2f} GiB, written in {gen_s:.1f} s, in {tmp}")

    commands = _commands(tmp, src)
    runs: dict[str, list[dict]] = {name: [] for name in IMPLS}
    load_start = os.getloadavg()
    for rep in range(args.repeat):
      order = IMPLS[rep % len(IMPLS):] + IMPLS[:rep % len(IMPLS)]
      for name in order:
        argv, output = commands[name]
        if os.path.exists(output):
          os.remove(output)
        os.sync()  # the previous run's dirty pages are written back before the clock starts
        r = _run(argv, os.path.join(tmp, "log.txt"))
        r["round"], r["output_bytes"] = rep, os.path.getsize(output)
        runs[name].append(r)
        print(f"  round {rep + 1}/{args.repeat}  {name:24} {common.fmt_time(r['wall_s']):>9}"
              f"  CPU {common.fmt_time(r['cpu_s']):>9}  peak RSS "
              f"{r['maxrss_bytes'] / MiB:7.0f} MiB  load {r['loadavg_before'][0]:.2f}",
              flush=True)
    load_end = os.getloadavg()
    import resource
    launcher_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    agreement = _agreement(commands[FP8JAX][1], commands[TORCH][1],
                           "model.layers.0.mlp.gate_proj.weight")
  finally:
    if args.keep:
      print(f"kept {tmp}")
    else:
      shutil.rmtree(tmp, ignore_errors=True)

  summary = {}
  for name in IMPLS:
    walls = [r["wall_s"] for r in runs[name]]
    rss = [r["maxrss_bytes"] for r in runs[name]]
    summary[name] = {**common.spread(walls), "max_s": max(walls),
                     "cpu_median_s": common.median(r["cpu_s"] for r in runs[name]),
                     "maxrss_median_bytes": common.median(rss), "maxrss_max_bytes": max(rss),
                     "output_bytes": runs[name][-1]["output_bytes"]}
  ratios = []
  for rname, num, den, target, op in TARGETS:
    value = summary[num]["median_s"] / summary[den]["median_s"]
    met = value <= target if op == "<=" else value >= target
    ratios.append({"name": rname, "numerator": num, "denominator": den, "value": value,
                   "target": target, "op": op, "met": met})
  rss_ratios = {f"{name} / {FP8JAX}": summary[name]["maxrss_median_bytes"]
                / summary[FP8JAX]["maxrss_median_bytes"] for name in IMPLS[1:]}

  print()
  print(_table(summary, ratios))
  print(f"\nfp8jax vs torch script on {agreement['tensor']}: "
        f"{agreement['equal_codes_fraction']:.4%} equal codes, scales within "
        f"{agreement['scale_max_rel_diff']:.2e} (relative)")
  print(f"load average: {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end "
        f"({os.cpu_count()} CPUs)")

  result = {
      "command": common.command(sys.argv), "date": common.now(), "machine": common.machine(),
      "versions": common.versions(*common.LIBRARIES, "torch", "safetensors"),
      "git": common.git_commit(),
      "loadavg": {"start": list(load_start), "end": list(load_end)},
      "launcher_maxrss_bytes": launcher_rss,
      "checkpoint": {"layers": layers, "tensors": 2 * layers, "dtype": "bf16",
                     "shapes": [[d, d], [d_ff, d]], "bytes": size, "generate_s": gen_s},
      "repeat": args.repeat,
      "commands": {name: " ".join(os.path.basename(a) if a.startswith(tmp) else a
                                  for a in commands[name][0]) for name in IMPLS},
      "scripts": {SAFETENSORS: SAFETENSORS_SCRIPT, TORCH: TORCH_SCRIPT},
      "runs": runs, "summary": summary, "ratios": ratios, "rss_ratios": rss_ratios,
      "agreement": agreement,
      "notes": [
          "Each run is a fresh process (interpreter start and imports included); wall time "
          "from Popen to os.wait4, CPU time and peak RSS (ru_maxrss) from os.wait4's rusage.",
          "Runs are interleaved, the order rotating each round; before each run the previous "
          "output is deleted and os.sync() flushes dirty pages. The input stays in the page "
          "cache (it was just written), so reads come from memory, not the disk.",
          "Peak RSS counts file pages mapped by the process (safetensors' load_file maps the "
          "file) as well as its own memory.",
          "The load average before each run is in runs[*].loadavg_before; other processes "
          "running at the same time slow every command alike only roughly.",
      ],
  }
  common.write_json(out_path, common.clean(result), ensure_ascii=False)
  print(f"wrote {out_path}")


if __name__ == "__main__":
  main()
