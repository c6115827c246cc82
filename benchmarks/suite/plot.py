"""The suite's figure: throughput against size, one panel per output mode, as a PNG.

Needs matplotlib (the `plot` extra); without it no figure is made and the run says why.
"""

from __future__ import annotations

from typing import Any

from benchmarks import common
from benchmarks.suite import registry

_FLOOR_STYLES = {registry.JAX_FLOORS[0]: "--", registry.JAX_FLOORS[1]: (0, (6, 2, 1, 2))}


def plot(run: dict[str, Any], impl_names: list[str], path: str, title: str) -> str | None:
  """Throughput against size, one panel per mode; None, or why no plot was made."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return "matplotlib is not installed (pip install matplotlib, or the 'plot' extra)"
  rows = run["results"]
  modes = [m for m in registry.MODES if any(r["mode"] == m for r in rows)]
  fig, axes = plt.subplots(1, len(modes), figsize=(7.5 * len(modes), 6.5), squeeze=False,
                           sharey=True)
  cmap = plt.get_cmap("tab20")
  for ax, mode in zip(axes[0], modes, strict=True):
    for i, name in enumerate(impl_names):
      pts = sorted((r["elements"], r) for r in rows if r["name"] == name and r["mode"] == mode)
      if not pts:
        continue
      xs = [p[0] for p in pts]
      floor = pts[0][1]["kind"] == "floor"
      # A floor is drawn as the throughput of a 3-byte-per-element op at its bandwidth.
      ys = [p[1]["gb_per_s"] * 1e9 / registry.CAST_BYTES if floor else p[1]["elements_per_s"]
            for p in pts]
      ax.plot(xs, ys, label=name, color="black" if floor else cmap(i % 20),
              linestyle=_FLOOR_STYLES.get(name, ":") if floor else
              ("-" if pts[0][1]["kind"] == "fp8jax" else "-."),
              marker=None if floor else "os^vD<>"[i % 7], linewidth=2 if floor else 1.3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input elements (bfloat16)")
    ax.set_title(f"{mode} output")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][0].set_ylabel("input elements per second (floors: 3 B/element at the copy's GB/s)")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.17, 1, 0.97))
  try:
    common.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
  finally:
    plt.close(fig)
  return None


def figure_title(env: dict[str, Any]) -> str:
  """The figure's title, from a run's environment."""
  return (f"fp8jax benchmarks, bf16 input, {env['device_kind']} ({env['platform']}), "
          f"jax {env['jax']}, {env['date']}")
