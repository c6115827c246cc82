"""Pieces of one large tensor along its leading rows, so that memory holds a piece at a time.

A tensor is viewed as rows: a 1-D tensor's elements, a 2-D tensor's rows,
and for 3 or more dimensions the slices along all axes but the last two
(so 2-D tiles, per-axis and block scales, which group values within the
last one or two axes, never straddle a piece). Pieces are consecutive runs
of whole rows, a multiple of `unit` rows each (the block rows of 2-D tiles),
about `CHUNK_BYTES` of input each, so quantizing piece by piece gives the
same codes and scales as quantizing the whole tensor at once.
"""

from __future__ import annotations

import dataclasses
import math

CHUNK_BYTES = 128 * 2**20
"""About how many input bytes one piece holds (tests lower it to exercise pieces)."""


@dataclasses.dataclass(frozen=True)
class Piece:
  """One run of rows: its first row, its shape, and its first element's flat index."""

  row: int
  shape: tuple[int, ...]
  start: int


def split(shape: tuple[int, ...], itemsize: int, unit: int = 1) -> list[Piece] | None:
  """The pieces of a tensor of `shape`, or None when it fits one piece (or has no rows).

  Args:
    shape: the tensor's shape.
    itemsize: bytes per element of the input.
    unit: pieces (all but the last) hold a multiple of this many rows.
  """
  if len(shape) == 0 or math.prod(shape) == 0:
    return None
  lead = max(len(shape) - 2, 1)
  rows, rest = math.prod(shape[:lead]), tuple(shape[lead:])
  row_bytes = math.prod(rest) * itemsize
  step = max(unit, CHUNK_BYTES // row_bytes // unit * unit)
  if step >= rows:
    return None
  size = math.prod(rest)
  return [Piece(r, (min(step, rows - r), *rest), r * size) for r in range(0, rows, step)]
