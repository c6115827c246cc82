"""`fp8jax inspect`: what quantizing each tensor of a checkpoint would cost, and what a
quantized checkpoint holds; the log2|x| histogram plot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import dataclasses
import fnmatch
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from fp8jax.checkpoint import chunks, foreign, interrupts, safetensors_io as st
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.files import atomic_write
from fp8jax.checkpoint.metadata import QuantMetadata
from fp8jax.checkpoint.report import printable
from fp8jax.checkpoint.safetensors_io import TensorInfo
from fp8jax.checkpoint.source import Checkpoint, open_checkpoint
from fp8jax.checkpoint.stored import WeightLayout, signed_format
from fp8jax.core.formats import FORMATS, Format
from fp8jax.quant import stats
from fp8jax.quant.qarray import QArray
from fp8jax.quant.scaled import dequantize, quantize
from fp8jax.quant.scales import amax, scale_from_amax
from fp8jax.quant.spec import MX_ELEMENTS

DEFAULT_FORMATS = ("e4m3fn", "e5m2")
DEFAULT_SCALINGS = ("none", "tensor", "axis", "block:128x128")
"""`none` is a raw cast (scale 1); the rest are `WeightLayout.parse` spellings."""
_MAX_PLOTS = 8


def _matches(name: str, globs: Sequence[str]) -> bool:
  return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def _combos(shape: tuple[int, ...], formats: Sequence[str],
            scalings: Sequence[str]) -> list[tuple[str, str, WeightLayout | None]]:
  """The rows of one tensor: format, scaling spelling and layout (None for a raw cast)."""
  out = []
  for fmt in formats:
    for scaling in scalings:
      if scaling == "mx" and fmt not in MX_ELEMENTS:
        continue
      if scaling == "none":
        out.append((fmt, scaling, None))
        continue
      layout = WeightLayout.parse(fmt, scaling)
      if len(shape) < max(layout.min_ndim, 1 if scaling == "tensor" else 2):
        continue  # per axis / block of a 0-D or 1-D tensor says nothing new
      out.append((fmt, layout.scaling, layout))  # "channel" prints as "axis"
  return out


def _unit(shape: tuple[int, ...], combos) -> int:
  """Rows per piece must be a multiple of every 2-D tile's rows (for a 2-D tensor)."""
  unit = 1
  for _, _, layout in combos:
    block = layout.block if layout is not None else None
    if block is not None and len(block) == 2 and len(shape) == 2:
      unit = math.lcm(unit, block[0])
  return unit


@functools.partial(jax.jit, static_argnames=("one", "limit"))
def _piece_stats(x: jax.Array, q: QArray, *, one: int, limit: float):
  """What `stats.cast_stats` counts and sums, for one piece, in one pass."""
  y = dequantize(q, jnp.float32)
  # Each value's group scale, exactly: decode(code of 1.0) * scale = scale.
  ones = jnp.full(q.bits.shape, one, jnp.uint8)
  unit = dequantize(dataclasses.replace(q, bits=ones, odd=False), jnp.float32)
  xf = x.astype(jnp.float32)
  finite = jnp.isfinite(xf)
  over = jnp.sum(finite & (jnp.abs(xf) > limit * unit), dtype=jnp.int32)
  under = jnp.sum(finite & (xf != 0) & (y == 0), dtype=jnp.int32)
  return over, under, stats.sqnr_sums(x, y)


def _rows(f, t: TensorInfo, formats: Sequence[str], scalings: Sequence[str],
          amax_line: Callable[[float], str]) -> Iterator[str]:
  """The amax line and a row per format and scaling, reading `t` a piece at a time."""
  combos = _combos(t.shape, formats, scalings)
  pieces = chunks.split(t.shape, st.DTYPES[t.dtype].itemsize, _unit(t.shape, combos))
  if pieces is None:
    pieces = [chunks.Piece(0, t.shape, 0)]
  read = (lambda p: jnp.asarray(st.read_part(f, t, p.start, p.shape)))
  if len(pieces) == 1:
    x = read(pieces[0])
    top = float(amax(x))
  else:
    x = None
    top = max(float(amax(read(p))) for p in pieces)
  yield amax_line(top)
  parts: list[list] = [[] for _ in combos]
  for p in pieces:
    interrupts.check()
    if x is None or len(pieces) > 1:
      x = read(p)
    for (fmt, _, layout), acc in zip(combos, parts, strict=True):
      if layout is None:
        q = quantize(x, fmt, scaling=1.0)
      elif layout.spec.kind == "tensor" and len(pieces) > 1:
        scale = scale_from_amax(top, layout.fmt, pow2=layout.spec.pow2,
                                margin=layout.spec.margin)
        q = quantize(x, fmt, scaling=scale, overflow=layout.spec.overflow)
      else:
        q = layout.quantize(x)
      acc.append(_piece_stats(x, q, one=stats.one_code(q.fmt),
                              limit=stats.overflow_threshold(q.fmt)))
    x = None
  n = max(math.prod(t.shape), 1)
  for (fmt, spelling, _), acc in zip(combos, parts, strict=True):
    got = jax.device_get(acc)
    over = sum(int(a[0]) for a in got) / n
    under = sum(int(a[1]) for a in got) / n
    sqnr = stats.sqnr_from_sums([a[2] for a in got])
    yield f"    {fmt:<12s} {spelling:<14s} {over:>9.3%} {under:>10.3%} {sqnr:>8.2f}"


def inspect_checkpoint(path: str, *, formats: Sequence[str] = DEFAULT_FORMATS,
                       scalings: Sequence[str] = DEFAULT_SCALINGS,
                       match: Sequence[str] = ()) -> Iterator[str]:
  """The report's lines, one tensor at a time.

  For each floating-point tensor: shape, dtype, amax, and for each format
  and scaling the fraction of values that overflow (saturate), the fraction
  of nonzero values that underflow (flush to zero) and the SQNR in dB. For
  a checkpoint quantized by fp8jax: its format and scaling, and for each
  quantized weight its stored dtype and its scale's shape and range.

  Args:
    path: a safetensors file, an index or a folder.
    formats: format names to try.
    scalings: "none" (raw cast) and `WeightLayout.parse` spellings to try.
    match: globs on tensor names; only matching tensors are reported.

  Raises:
    CheckpointError: bad input or arguments (its `param` names the argument).

  Example:
    >>> import os, shutil, tempfile
    >>> from fp8jax.checkpoint.safetensors_io import write_file
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "model.safetensors")
    >>> write_file(path, {"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)})
    >>> for line in inspect_checkpoint(path, formats=["e4m3fn"], scalings=["tensor"]):
    ...   print(line)
        format       scaling         overflow  underflow  SQNR dB
    w  F32 [8, 8]  amax 1
        e4m3fn       tensor            0.000%     0.000%    32.12
    >>> shutil.rmtree(folder)
  """
  formats = format_names(formats)
  for scaling in scalings:
    if scaling != "none":
      WeightLayout.parse("e4m3fn", scaling)
  ckpt = open_checkpoint(path)
  names = [t.name for t in ckpt.tensors]
  for g in match:
    if not any(fnmatch.fnmatchcase(n, g) for n in names):
      raise CheckpointError(f"match {g!r} matches no tensor in the checkpoint", param="match")
  merged = QuantMetadata.merged(ckpt.headers)
  metas = [QuantMetadata.of(h) for h in ckpt.headers]
  for h, meta in zip(ckpt.headers, metas, strict=True):
    if meta is not None:
      meta.check(h)  # every file, before the first line
  plan = foreign.detect(ckpt) if merged is None else None
  if merged is not None:
    yield (f"quantized by fp8jax: format {merged.layout.fmt.name}, "
           f"scaling {merged.layout.scaling}")
  elif plan is not None:
    yield f"quantized by {plan.producer}"
  columns = (f"{'':4s}{'format':<12s} {'scaling':<14s} {'overflow':>9s} {'underflow':>10s} "
             f"{'SQNR dB':>8s}")
  for h, meta in zip(ckpt.headers, metas, strict=True):
    quantized = meta.tensors if meta is not None else {}
    scales = meta.scales if meta is not None else {}
    by_name = {t.name: t for t in h.tensors}
    with open(h.path, "rb") as f:
      for t in h.tensors:
        if not _matches(t.name, match) or t.name in scales:
          continue
        if plan is not None and t.name in plan.consumed:
          continue  # a scale, shown with its weight
        head = f"{printable(t.name)}  {t.dtype} [{', '.join(map(str, t.shape))}]"
        if plan is not None and t.name in plan.weights:
          yield head + "  " + _describe_foreign(f, plan.weights[t.name])
          continue
        if t.name in quantized:
          entry = quantized[t.name]
          if entry.name is not None:  # the weight's own name, not its codes'
            head = f"{printable(entry.name)}  {t.dtype} [{', '.join(map(str, t.shape))}]"
          yield head + "  " + _describe_quantized(f, by_name[entry.scale], entry.dtype, meta)
          continue
        if t.dtype not in st.FLOAT_TAGS:
          yield head + "  (not a bf16/f16/f32 tensor)"
          continue
        if math.prod(t.shape) == 0:
          yield head + "  (empty)"
          continue
        if columns:
          yield columns  # once, above the first tensor with rows
          columns = ""
        yield from _rows(f, t, formats, scalings, lambda top, head=head: f"{head}  amax {top:.6g}")


def _describe_quantized(f, scale_info: TensorInfo, dtype: str, meta: QuantMetadata) -> str:
  scale = st.read_tensor(f, scale_info)
  if scale.size == 0:
    rng = "(empty)"
  elif meta.layout.scaling == "mx":
    # e8m0fnu codes are biased exponents.
    exps = scale.astype(np.int32) - FORMATS["e8m0fnu"].bias
    rng = f"in 2^{exps.min()} .. 2^{exps.max()}"
  else:
    rng = f"in {scale.min():.6g} .. {scale.max():.6g}"
  return (f"{meta.layout.describe()} (was {dtype}); scale {printable(scale_info.name)} "
          f"{scale_info.dtype} [{', '.join(map(str, scale_info.shape))}] {rng}")


def _describe_foreign(f, w: foreign.ForeignWeight) -> str:
  """Another stack's weight: what it dequantizes to, its scales, the values' range."""
  interrupts.check()
  values = w.read(f)
  finite = np.isfinite(values)
  top = float(np.abs(values[finite]).max()) if finite.any() else 0.0
  scales = ", ".join(f"{printable(i.info.name)} {i.info.dtype} [{', '.join(map(str, i.info.shape))}]"
                     for i in w.inputs[1:])
  bad = "" if finite.all() else f", {int((~finite).sum())} not finite"
  return (f"-> {printable(w.name)} {w.dtype} [{', '.join(map(str, w.shape))}], amax {top:.6g}"
          f"{bad}; scales {scales}")


def format_names(formats: Sequence[str]) -> tuple[str, ...]:
  """The signed formats' names, as `get_format` reads them ("E4M3FN", "float8_e5m2", ...).

  Raises:
    CheckpointError: a name that is not a signed format's (`param` "formats").
  """
  return tuple(signed_format(fmt, "formats", "signed format names:").name for fmt in formats)


def check_plot(out: str, force: bool):
  """Checks that a plot can be drawn to `out`; returns `matplotlib.pyplot`.

  Raises:
    CheckpointError: matplotlib is missing, or `out` exists and not `force`.
  """
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise CheckpointError("plotting needs matplotlib: pip install 'fp8jax[plot]'") from None
  if os.path.lexists(out) and not force:
    raise CheckpointError(f"force is needed to replace {out}, which exists", param="force")
  return plt


def plot_histograms(ckpt: Checkpoint | str, out: str, *, formats: Sequence[str] = DEFAULT_FORMATS,
                    match: Sequence[str] = (), force: bool = False) -> list[str]:
  """Draws log2|x| histograms of chosen tensors against each format's range, as a PNG.

  Each panel is one tensor's histogram of log2|x| over its nonzero finite
  values; shaded bands mark each format's unscaled range, from its
  smallest subnormal to its largest value (a scale shifts the band). The
  tensors are those matching `match` (default: those with 2 or more
  dimensions), at most 8.

  Args:
    ckpt: a checkpoint or its path.
    out: the PNG to write (`atomic_write`: complete or not at all).
    formats: the formats whose ranges to draw.
    match: globs on tensor names.
    force: replace an existing `out`.

  Returns:
    The names of the tensors drawn.
  """
  plt = check_plot(out, force)
  formats = format_names(formats)
  ckpt = open_checkpoint(ckpt) if isinstance(ckpt, str) else ckpt
  chosen = [(h, t) for h in ckpt.headers for t in h.tensors
            if t.dtype in st.FLOAT_TAGS and math.prod(t.shape) > 0
            and (_matches(t.name, match) if match else len(t.shape) >= 2)][:_MAX_PLOTS]
  if not chosen:
    raise CheckpointError("no bf16/f16/f32 tensor to plot")
  fig, axes = plt.subplots(len(chosen), 1, figsize=(8, 2.2 * len(chosen)), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (h, t) in zip(axes[:, 0], chosen, strict=True):
    with open(h.path, "rb") as f:
      x = st.read_tensor(f, t).astype(np.float32).reshape(-1)
    x = np.abs(x[np.isfinite(x) & (x != 0)])
    ax.hist(np.log2(x), bins=120, color="0.3")
    for i, name in enumerate(formats):
      fmt: Format = FORMATS[name]
      ax.axvspan(math.log2(fmt.min_subnormal), math.log2(fmt.max), alpha=0.15,
                 color=colors[i % len(colors)], label=f"{name} range")
    ax.set_title(t.name, fontsize=9)
    ax.set_yscale("log")
  axes[0, 0].legend(fontsize=8, loc="upper left")
  axes[-1, 0].set_xlabel("log2 |x|")
  fig.tight_layout()
  try:
    with atomic_write(out, "wb") as f:
      fig.savefig(f, format="png", dpi=100)
  finally:
    plt.close(fig)
  return [t.name for _, t in chosen]
