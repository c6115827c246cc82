"""Reading, computing and writing a checkpoint's pieces at the same time.

JAX dispatches a computation and returns before it has run; its result is
waited for only when it is written. `Staging` holds each piece's writes back
until the next piece has been read and dispatched, so that reading the next
piece and writing the previous one happen while the current one computes.
At most two pieces are in flight, so memory holds about two pieces.

Inputs are read into reused host buffers aligned to 64 bytes. JAX on CPU
computes on such a NumPy array in place (`jax.device_put` aliases it rather
than copying), so a piece costs one copy out of the page cache and no fresh
pages. A buffer is read into again only once the writes of every
computation that used it have run, and those writes wait for their
computation to finish. An accelerator (or a JAX that copies) gets a copy
of the buffer, which is as correct.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
import math
from typing import BinaryIO

import jax
import numpy as np

from fp8jax.checkpoint import chunks
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.safetensors_io import DTYPES, TensorInfo

_ALIGN = 64  # what XLA's CPU client needs to use a host buffer in place
_SLOTS = 4  # a piece reads at most two inputs (codes and scale), and two pieces are in flight


def aligned_empty(nbytes: int) -> np.ndarray:
  """A fresh uint8 array of `nbytes` whose data starts on a 64-byte boundary."""
  raw = np.empty(nbytes + _ALIGN, np.uint8)
  skip = -raw.ctypes.data % _ALIGN
  return raw[skip:skip + nbytes]


class Staging:
  """Reused input buffers and writes deferred by one piece (see the module docstring).

  Use: `x = staging.read(f, t)`, dispatch the computation on
  `staging.device(x)`, then `staging.later(write)` with a function that
  writes its results (the first thing it does is wait for them). Every
  computation on `x` must be dispatched before `later` is called: after
  that, the buffer behind `x` may be refilled. `flush()` runs the
  deferred writes; `discard()` drops them after an error.
  """

  def __init__(self):
    self._buffers: list[np.ndarray] = []
    self._free: deque[int] = deque(range(_SLOTS))
    self._reading: list[int] = []  # buffers read since the last `later`
    self._pending: deque[tuple[Callable[[], None] | None, list[int]]] = deque()

  def read(self, f: BinaryIO, t: TensorInfo, start: int = 0,
           shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Reads `prod(shape)` elements of `t` from flat index `start` (default: all of it).

    Returns:
      A NumPy array of `shape` (default `t.shape`) in `DTYPES[t.dtype]`,
      valid until the computations dispatched on it have been handed to `later`.
    """
    shape = t.shape if shape is None else shape
    dtype = DTYPES[t.dtype]
    nbytes = math.prod(shape) * dtype.itemsize
    begin = t.start + start * dtype.itemsize
    if begin + nbytes > t.end:
      raise CheckpointError(f"tensor {t.name!r}: a read past its end")
    if nbytes > chunks.CHUNK_BYTES:
      data = aligned_empty(nbytes)  # a whole large tensor: its own buffer, freed with it
    else:
      while not self._free:
        self._run_oldest()
      slot = self._free.popleft()
      self._reading.append(slot)
      data = self._buffer(slot, nbytes)
    f.seek(begin)
    got = f.readinto(memoryview(data)) if nbytes else 0
    if got != nbytes:
      raise CheckpointError(f"tensor {t.name!r}: truncated read ({got} of {nbytes} bytes)")
    return data.view(dtype).reshape(shape)

  def _buffer(self, slot: int, nbytes: int) -> np.ndarray:
    while len(self._buffers) <= slot:
      self._buffers.append(aligned_empty(0))
    if self._buffers[slot].nbytes < nbytes:
      self._buffers[slot] = aligned_empty(nbytes)
    return self._buffers[slot][:nbytes]

  @staticmethod
  def device(x: np.ndarray) -> jax.Array:
    """`x` as a JAX array: in place on CPU when aligned, else copied."""
    return jax.device_put(x)

  def later(self, write: Callable[[], None] | None) -> None:
    """Defers `write` (None: nothing to write) until the next piece is dispatched.

    The buffers read since the last call are refilled only after `write` has run.
    """
    self._pending.append((write, self._reading))
    self._reading = []
    while len(self._pending) > 1:
      self._run_oldest()

  def _run_oldest(self) -> None:
    if not self._pending:
      raise AssertionError("every input buffer is in use and no write is pending")
    write, slots = self._pending.popleft()
    if write is not None:
      write()
    self._free.extend(slots)

  def flush(self) -> None:
    """Runs every deferred write, in order."""
    while self._pending:
      self._run_oldest()
    self._free.extend(self._reading)
    self._reading = []

  def discard(self) -> None:
    """Drops the deferred writes (after an error; the output is discarded too).

    The buffers are dropped with them: a computation still running keeps its
    own reference to the buffer it reads.
    """
    self._pending.clear()
    self._reading = []
    self._buffers = []
    self._free = deque(range(_SLOTS))
