"""The progress bar of `fp8jax quantize` and `dequantize`: tqdm on stderr, tensor by tensor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import sys

from fp8jax.checkpoint.report import printable
from fp8jax.checkpoint.source import open_checkpoint

MIN_BYTES = 8 * 2**20
"""Checkpoints with fewer tensor bytes get no bar (they take a moment)."""
MIN_INTERVAL_S = 0.1


@contextlib.contextmanager
def progress_bar(src: str, quiet: bool) -> Iterator[Callable[[str, int], None] | None]:
  """Yields the `progress` callback for a conversion of `src`, or None for no bar.

  The bar shows only on a terminal (tqdm's `disable=None`), for checkpoints
  of `MIN_BYTES` or more, and not when `quiet`.
  """
  total = sum(t.nbytes for t in open_checkpoint(src).tensors)  # validates IN before any work
  if quiet or total < MIN_BYTES:
    yield None
    return
  from tqdm import tqdm
  with tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False,
            disable=None, mininterval=MIN_INTERVAL_S) as bar:
    def step(name: str, nbytes: int) -> None:
      bar.set_postfix_str(printable(name)[-40:], refresh=False)
      bar.update(nbytes)
    yield step
