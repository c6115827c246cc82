"""`fp8jax inspect`: what quantizing each tensor of a checkpoint would cost, and what a
quantized checkpoint holds; the log2|x| histogram plot.
"""

from __future__ import annotations

import fnmatch
import math
import os
import tempfile
from collections.abc import Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from fp8jax.checkpoint import safetensors_io as st
from fp8jax.quant.quantize import quantize
from fp8jax.quant.scales import amax
from fp8jax.quant.spec import MX_ELEMENTS
from fp8jax.quant import stats
from fp8jax.checkpoint.pipeline import METADATA_KEY, Checkpoint, _parse_quant_info, open_checkpoint
from fp8jax.core.formats import FORMATS, Format
from fp8jax.checkpoint.safetensors_io import CheckpointError, TensorInfo
from fp8jax.checkpoint.stored import WeightLayout

DEFAULT_FORMATS = ("e4m3fn", "e5m2")
DEFAULT_SCALINGS = ("none", "tensor", "channel", "block:128x128")
"""`none` is a raw cast (scale 1); the rest are `--scaling` spellings."""
_MAX_PLOTS = 8


def _matches(name: str, globs: Sequence[str]) -> bool:
  return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def _rows(x, shape: tuple[int, ...], formats: Sequence[str],
          scalings: Sequence[str]) -> Iterator[str]:
  for fmt in formats:
    for scaling in scalings:
      if scaling == "mx" and fmt not in MX_ELEMENTS:
        continue
      if scaling == "none":
        q = quantize(x, fmt, scaling=1.0)
      else:
        layout = WeightLayout.parse(fmt, scaling)
        if len(shape) < max(layout.min_ndim, 1 if scaling == "tensor" else 2):
          continue  # per channel / block of a 0-D or 1-D tensor says nothing new
        q = layout.quantize(x)
      s = stats.cast_stats(x, q)
      yield (f"    {fmt:<12s} {scaling:<14s} {s.overflow:>9.3%} {s.underflow:>10.3%} "
             f"{s.sqnr_db:>8.2f}")


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
    scalings: "none" (raw cast) and `--scaling` spellings to try.
    match: globs on tensor names; only matching tensors are reported.
  """
  for fmt in formats:
    if fmt not in FORMATS or not FORMATS[fmt].signed:
      raise CheckpointError(f"--format {fmt!r} is not a signed format name")
  for scaling in scalings:
    if scaling != "none":
      WeightLayout.parse("e4m3fn", scaling)
  ckpt = open_checkpoint(path)
  names = [t.name for t in ckpt.tensors]
  for g in match:
    if not any(fnmatch.fnmatchcase(n, g) for n in names):
      raise CheckpointError(f"--match {g!r} matches no tensor in the checkpoint")
  info = ckpt.quant_info()
  if info is not None:
    yield f"quantized by fp8jax: format {info['format']}, scaling {info['scaling']}"
  columns = (f"{'':4s}{'format':<12s} {'scaling':<14s} {'overflow':>9s} {'underflow':>10s} "
             f"{'SQNR dB':>8s}")
  for h in ckpt.headers:
    raw = h.metadata.get(METADATA_KEY)
    quantized = _parse_quant_info(h.path, raw)["tensors"] if raw is not None else {}
    scales = {e["scale"]: n for n, e in quantized.items()}
    by_name = {t.name: t for t in h.tensors}
    with open(h.path, "rb") as f:
      for t in h.tensors:
        if not _matches(t.name, match) or t.name in scales:
          continue
        head = f"{t.name}  {t.dtype} [{', '.join(map(str, t.shape))}]"
        if t.name in quantized:
          yield head + "  " + _describe_quantized(f, t, by_name[quantized[t.name]["scale"]],
                                                 quantized[t.name]["dtype"], info)
          continue
        if t.dtype not in st.FLOAT_TAGS:
          yield head + "  (not a bf16/f16/f32 tensor)"
          continue
        x = jnp.asarray(st.read_tensor(f, t))
        if x.size == 0:
          yield head + "  (empty)"
          continue
        if columns:
          yield columns  # once, above the first tensor with rows
          columns = ""
        yield head + f"  amax {float(amax(x)):.6g}"
        yield from _rows(x, t.shape, formats, scalings)


def _describe_quantized(f, t: TensorInfo, scale_info: TensorInfo, dtype: str, info) -> str:
  scale = st.read_tensor(f, scale_info)
  if info["scaling"] == "mx":
    exps = scale.astype(np.int32) - 127
    rng = f"2^{exps.min()} .. 2^{exps.max()}"
  else:
    rng = f"{scale.min():.6g} .. {scale.max():.6g}"
  return (f"{info['format']} {info['scaling']} (was {dtype}); scale {scale_info.name} "
          f"{scale_info.dtype} [{', '.join(map(str, scale_info.shape))}] in {rng}")


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
    raise CheckpointError("--plot needs matplotlib: pip install 'fp8jax[plot]'") from None
  if os.path.lexists(out) and not force:
    raise CheckpointError(f"{out} exists; pass --force to replace it")
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
    out: the PNG to write (written to a temporary name, then renamed).
    formats: the formats whose ranges to draw.
    match: globs on tensor names.
    force: replace an existing `out`.

  Returns:
    The names of the tensors drawn.
  """
  plt = check_plot(out, force)
  ckpt = open_checkpoint(ckpt) if isinstance(ckpt, str) else ckpt
  chosen = [(h, t) for h in ckpt.headers for t in h.tensors
            if t.dtype in st.FLOAT_TAGS and math.prod(t.shape) > 0
            and (_matches(t.name, match) if match else len(t.shape) >= 2)][:_MAX_PLOTS]
  if not chosen:
    raise CheckpointError("--plot: no bf16/f16/f32 tensor to draw")
  fig, axes = plt.subplots(len(chosen), 1, figsize=(8, 2.2 * len(chosen)), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (h, t) in zip(axes[:, 0], chosen):
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
  folder = os.path.dirname(os.path.abspath(out))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".png", dir=folder)
  os.close(fd)
  try:
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.unlink(tmp)
  return [t.name for _, t in chosen]
