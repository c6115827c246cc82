"""The `fp8jax` command (also `python -m fp8jax`): arguments, dispatch, errors, exit status.

    fp8jax quantize IN OUT [--format e4m3fn] [--scaling tensor|axis|block:B|block:BxC|mx[:RULE]|nvfp4[:RULE]]
                           [--rounding nearest|stochastic --seed N] [--include GLOB ...]
                           [--exclude GLOB ...] [--layout L] [--weight-only] [--sqnr] [--force] [-v] [-q]
    fp8jax dequantize IN OUT [--dtype bf16|f16|f32] [--force] [-v] [-q]
    fp8jax convert IN OUT --layout L [--weight-only] [--force] [-v] [-q]
    fp8jax inspect FILE [--format F ...] [--scaling S ...] [--match GLOB ...] [--plot out.png]
    fp8jax formats
    fp8jax demo [--tour]

`--scaling channel` is accepted as another name for `axis`, which is how
older commands and checkpoints spell it.

Exit status: 0 on success, 2 for bad input or arguments (one line on stderr,
nothing written), 1 when writing fails (disk full, permissions), 130 when
interrupted (Ctrl-C), 143 when terminated (SIGTERM). OUT appears only when
complete; IN is only read. `console` installs the signal handlers
(`checkpoint.interrupts`) before anything else runs.

The library's errors name its parameters (`rounding must be ...`); `FLAGS`
turns them into the flags that set them (`--rounding must be ...`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import contextlib
import math
import os
import signal
import sys

from fp8jax.checkpoint import inspection, interrupts
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.files import remove_temporaries
from fp8jax.checkpoint.layouts import LAYOUT_NAMES
from fp8jax.checkpoint.pipeline import (
  DTYPE_TAGS,
  ROUNDINGS,
  convert_checkpoint,
  dequantize_checkpoint,
  quantize_checkpoint,
)
from fp8jax.checkpoint.report import printable
from fp8jax.checkpoint.selection import Selection
from fp8jax.checkpoint.stored import WeightLayout
from fp8jax.cli import demo
from fp8jax.cli.progress import progress_bar
from fp8jax.core.formats import FORMATS

EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 1
EXIT_INTERRUPTED = 130

FLAGS = {
    "fmt": "--format",
    "formats": "--format",
    "scaling": "--scaling",
    "rounding": "--rounding",
    "seed": "--seed",
    "include": "--include",
    "exclude": "--exclude",
    "stored": "--layout",
    "weight_only": "--weight-only",
    "dtype": "--dtype",
    "match": "--match",
    "force": "--force",
}
"""Each library parameter a `CheckpointError` can name, and the flag that sets it."""


def error_message(e: CheckpointError) -> str:
  """The error's message as the command line says it: the parameter named by its flag.

  Example:
    >>> error_message(CheckpointError("rounding must be nearest or stochastic (got 'up')",
    ...                               param="rounding"))
    "--rounding must be nearest or stochastic (got 'up')"
  """
  text = str(e)
  flag = FLAGS.get(e.param)
  if flag is None or not text.startswith(e.param):
    return text
  return flag + text[len(e.param):]


class _Parser(argparse.ArgumentParser):
  """argparse with errors in one line, as the command's own errors are."""

  def error(self, message: str):
    self.exit(EXIT_BAD_INPUT, f"fp8jax: error: {printable(message)}\n")


def _integer(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise argparse.ArgumentTypeError(f"invalid integer {shown!r}") from None


def _parser() -> argparse.ArgumentParser:
  p = _Parser(
      prog="fp8jax", description="Quantize safetensors checkpoints to FP8 and back, inspect "
      "them, compare formats.")
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

  q = sub.add_parser("quantize", help="quantize a checkpoint's weight matrices",
                     description="Quantize the weight matrices of a safetensors checkpoint "
                     "(a file, a *.safetensors.index.json, or a model folder).")
  q.add_argument("src", metavar="IN")
  q.add_argument("out", metavar="OUT", help="a file for a single-file IN, else a folder")
  q.add_argument("--format", default="e4m3fn", help="element format (default: e4m3fn)")
  q.add_argument("--scaling", default="tensor",
                 help="tensor (default), axis (one scale per output channel; also spelled "
                 "channel), block:B, block:BxC (e.g. block:128x128), mx, mx:RULE, nvfp4 or "
                 "nvfp4:RULE (with --format e2m1fn)")
  q.add_argument("--rounding", default="nearest", choices=ROUNDINGS)
  q.add_argument("--seed", type=_integer, default=None, help="seed for --rounding stochastic")
  q.add_argument("--include", action="append", default=[], metavar="GLOB",
                 help="also quantize matching float tensors with >= 2 dims (repeatable)")
  q.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                 help="do not quantize matching tensors; wins over --include (repeatable)")
  q.add_argument("--layout", default=None, choices=LAYOUT_NAMES,
                 help="how the weights are stored: compressed-tensors (transformers and vLLM "
                 "load it), vllm (vLLM's fp8: e4m3fn per tensor or 128x128 tiles), modelopt "
                 "(NVFP4), fp8jax (any format but NVFP4; only fp8jax dequantize reads it). "
                 "Default: for a model folder vllm for e4m3fn block:128x128, else the first of "
                 "compressed-tensors, modelopt and fp8jax that holds the format and scaling; "
                 "fp8jax for a file")
  q.add_argument("--weight-only", action="store_true",
                 help="declare no activation quantization (default for e4m3fn per tensor, per "
                 "channel and 2-D blocks in compressed-tensors: dynamic FP8 activations, as "
                 "vLLM serves them)")
  q.add_argument("--sqnr", action="store_true",
                 help="report each weight's SQNR (worst in the summary, each with -v); "
                 "takes about as long again")
  _common(q)

  d = sub.add_parser("dequantize", help="turn a quantized checkpoint back into a plain one")
  d.add_argument("src", metavar="IN")
  d.add_argument("out", metavar="OUT")
  d.add_argument("--dtype", choices=tuple(DTYPE_TAGS), default=None,
                 help="dtype of the dequantized weights (default: each weight's original)")
  _common(d)

  c = sub.add_parser("convert", help="rewrite a quantized model folder in another layout",
                     description="Rewrite a quantized model folder in another stored layout, "
                     "carrying the codes and scales over as they are (no quantizing again).")
  c.add_argument("src", metavar="IN")
  c.add_argument("out", metavar="OUT")
  c.add_argument("--layout", required=True, choices=LAYOUT_NAMES, help="the layout to write")
  c.add_argument("--weight-only", action="store_true",
                 help="declare no activation quantization (as for quantize)")
  _common(c)

  i = sub.add_parser("inspect", help="per-tensor range and quantization error report")
  i.add_argument("src", metavar="FILE", help="a safetensors file, an index or a folder")
  i.add_argument("--format", dest="formats", action="append", default=None, metavar="F",
                 help="formats to try (repeatable; default: e4m3fn and e5m2)")
  i.add_argument("--scaling", dest="scalings", action="append", default=None, metavar="S",
                 help="none (raw cast) or a --scaling spelling (repeatable; default: none, "
                 "tensor, axis, block:128x128)")
  i.add_argument("--match", action="append", default=[], metavar="GLOB",
                 help="report (and plot) only matching tensors (repeatable)")
  i.add_argument("--plot", metavar="PNG", default=None,
                 help="draw log2|x| histograms against each format's range (needs matplotlib)")
  i.add_argument("--force", action="store_true", help="replace an existing --plot file")

  sub.add_parser("formats", help="table of every format")
  demo = sub.add_parser("demo", help="quantize a built-in example checkpoint and back")
  demo.add_argument("--tour", action="store_true",
                    help="instead, show one tensor's codes in every format")
  return p


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--force", action="store_true", help="replace an existing OUT")
  p.add_argument("-v", "--verbose", action="store_true", help="print a line per tensor")
  p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")


def _print_summary(summary, args) -> None:
  if args.verbose:
    for t in summary.tensors:
      print(t.line())
  if not args.quiet:
    print(summary.line())


def _quantize(args) -> int:
  layout = WeightLayout.parse(args.format, args.scaling)
  selection = Selection(tuple(args.include), tuple(args.exclude))
  with progress_bar(args.src, args.quiet) as step:
    summary = quantize_checkpoint(args.src, args.out, layout, selection=selection,
                                  rounding=args.rounding, seed=args.seed, force=args.force,
                                  progress=step, sqnr=args.sqnr, stored=args.layout,
                                  weight_only=args.weight_only)
  if summary.note and not args.quiet:
    print(f"fp8jax: note: {summary.note}", file=sys.stderr)
  _print_summary(summary, args)
  return 0


def _dequantize(args) -> int:
  with progress_bar(args.src, args.quiet) as step:
    summary = dequantize_checkpoint(args.src, args.out, dtype=args.dtype, force=args.force,
                                    progress=step)
  _print_summary(summary, args)
  return 0


def _convert(args) -> int:
  with progress_bar(args.src, args.quiet) as step:
    summary = convert_checkpoint(args.src, args.out, args.layout, weight_only=args.weight_only,
                                 force=args.force, progress=step)
  if summary.note and not args.quiet:
    print(f"fp8jax: note: {summary.note}", file=sys.stderr)
  _print_summary(summary, args)
  return 0


def _inspect(args) -> int:
  formats = tuple(args.formats or inspection.DEFAULT_FORMATS)
  scalings = tuple(args.scalings or inspection.DEFAULT_SCALINGS)
  if args.plot:
    inspection.check_plot(args.plot, args.force)  # before the report, not after it
  for line in inspection.inspect_checkpoint(args.src, formats=formats, scalings=scalings,
                                            match=tuple(args.match)):
    print(line, flush=True)
  if args.plot:
    drawn = inspection.plot_histograms(args.src, args.plot, formats=formats,
                                       match=tuple(args.match), force=args.force)
    print(printable(f"wrote {args.plot}: {', '.join(drawn)}"))
  return 0


def format_table() -> str:
  """Every named format: bits, bias, max, min normal, min subnormal, eps, specials."""
  head = ("name", "bits", "e", "m", "bias", "max", "min normal", "min subnormal", "eps",
          "specials")
  rows = [head]
  for name, f in FORMATS.items():
    rows.append((name, str(f.bits), str(f.exponent_bits), str(f.mantissa_bits), str(f.bias),
                 _number(f.max), _number(f.min_normal), _number(f.min_subnormal),
                 _number(f.eps), _specials(f)))
  widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
  return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _number(v: float) -> str:
  """Powers of two far from 1 as 2^k (exact), the rest as decimals."""
  k = math.log2(v)
  if k == int(k) and abs(k) >= 4:
    return f"2^{int(k)}"
  return f"{v:g}"


def _specials(f) -> str:
  parts = []
  if f.inf_code is not None:
    parts.append(f"±inf {f.inf_code:#04x}/{f.neg_inf_code:#04x}")
  if f.nan_code is not None:
    parts.append(f"NaN {f.nan_code:#04x}")
  if f.convention == "fnuz":
    parts.append("no -0")
  if f.convention == "e8m0":
    parts.append("unsigned, no zero")
  return ", ".join(parts) or "none (saturates)"


def _formats(args) -> int:
  print(format_table())
  return 0


def _demo(args) -> int:
  if args.tour:
    demo.tour()
    return 0
  return demo.main()


_COMMANDS = {"quantize": _quantize, "dequantize": _dequantize, "convert": _convert,
             "inspect": _inspect, "formats": _formats, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status.

  Example:
    >>> main(["formats"])  # doctest: +ELLIPSIS
    name         bits  e  m  bias  max    min normal ...
    e2m1fn       4     2  1  1     6      1           0.5            0.5    none (saturates)
    0
  """
  try:
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)
  except CheckpointError as e:
    return _fail(error_message(e), EXIT_BAD_INPUT)
  except BrokenPipeError:
    # The reader went away (`fp8jax inspect ... | head`): stop quietly.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  except OSError as e:
    return _fail(str(e), EXIT_WRITE_FAILED)
  except KeyboardInterrupt as e:
    return _interrupted(e)


def _fail(message: str, status: int) -> int:
  print(f"fp8jax: error: {printable(message)}", file=sys.stderr)
  return status


def _interrupted(e: KeyboardInterrupt) -> int:
  """Removes what the interrupted run left, says so in one line; returns 130 or 143."""
  remove_temporaries()
  status = getattr(e, "exit_status", EXIT_INTERRUPTED)
  what = "terminated" if status == 128 + signal.SIGTERM else "interrupted"
  print(f"fp8jax: {what}; nothing written", file=sys.stderr)
  return status


def console() -> None:
  """The console script, once `fp8jax.cli.console` has installed the signal handlers.

  Signals are ignored once `main` is done, so that the exit status is the
  run's. After a signal the process ends with `os._exit` once the output
  is flushed: Python's own shutdown can crash in native code (XLA's
  threads) after an interrupt, and there is nothing left to clean up.
  """
  if not interrupts.installed():
    interrupts.install()
  try:
    status = main()
  except KeyboardInterrupt as e:  # one that landed outside main's own handling
    status = _interrupted(e)
  finally:
    interrupts.ignore()
  if interrupts.received() is None:
    sys.exit(status)
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(OSError, ValueError):
      stream.flush()
  os._exit(status)
