"""Timing: warm up, then medians over repeated batches of calls, each batch synchronized.

A GPU kernel over 2^24 elements takes about as long as a Python dispatch, so calls are
issued in batches (sized from the warm-up to take about 2 ms on the device) and only the
batch is synchronized: the queue stays full and the time per call is the device's. On CPU
a call is long enough that batches are a single call. The clock and the median are
benchmarks/common.py's (`time_calls`, `median`); the batching and the synchronization
(jax.block_until_ready, torch.cuda.synchronize) are this check's own.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

import jax

from benchmarks import common

TARGET_BATCH_S = 2e-3  # enough queued work to hide dispatch
MAX_BATCH = 64


def _batch_size(one_call_s: float) -> int:
  return max(1, min(MAX_BATCH, math.ceil(TARGET_BATCH_S / max(one_call_s, 1e-7))))


def measure(call: Callable[[], Any], sync: Callable[[Any], None], repeats: int
            ) -> dict[str, Any]:
  """Median, minimum and first-call seconds of `call`, synchronizing with `sync`."""
  # The first run compiles (JAX) or sets up (torch); the second sizes the batches.
  first, warm = common.time_calls(lambda: sync(call()), 2)
  batch = _batch_size(warm)

  def run_batch() -> None:  # only the last output is waited for; each is freed at once
    for _ in range(batch - 1):
      call()
    sync(call())

  samples = [s / batch for s in common.time_calls(run_batch, repeats)]
  return {"median_s": common.median(samples), "min_s": min(samples), "first_s": first,
          "repeats": repeats, "batch": batch}


def time_jax(fn: Callable[..., Any], args: tuple, repeats: int) -> dict[str, Any]:
  """Times a (jitted) JAX function on fixed arguments; fresh outputs each call."""
  return measure(lambda: fn(*args), jax.block_until_ready, repeats)


def time_torch(torch: Any, fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
  """Times a torch call; synchronizes CUDA when the output lives there."""

  def sync(out: Any) -> None:
    if getattr(out, "is_cuda", False):
      torch.cuda.synchronize()

  return measure(fn, sync, repeats)
