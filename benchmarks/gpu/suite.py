"""The repository's own numeric tests, run under the backend being checked.

They compare fp8jax against ml_dtypes and the slow references independently of this
script. They run as separate pytest processes (shards of files, in parallel: their work is
mostly compilation and NumPy on the host's cores), started first and in the background so
that they overlap the correctness sections, and waited for, with a time limit, before
anything is timed. The logs are joined into OUTDIR/tests.log; the counts come from the
outcome files the plugin writes as tests finish, so that a timeout still reports what ran.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import common
from benchmarks.gpu import pytest_plugin
from benchmarks.gpu.common import ERROR, FAIL, OK, Context

# The numeric test files in shards of about equal length (measured on CPU): test_scaling
# alone, then the rest, most telling first in each (a timeout cuts the tail).
FULL = [["tests/test_scaling.py"],
        ["tests/test_decode.py", "tests/test_encode.py", "tests/test_dot.py",
         "tests/test_dot_cases.py"],
        ["tests/test_stochastic.py", "tests/test_interop.py", "tests/test_views.py"]]
# Quick: every code decoded and every 16-bit input (and 10M float32 ones) encoded, against
# ml_dtypes: about ten seconds on two CPU cores.
QUICK = [["tests/test_decode.py", "tests/test_encode.py", "-k", "ml_dtypes"]]


class Shard:
  """One pytest process running in the background, its output in a temporary log."""

  def __init__(self, ctx: Context, args: list[str], env: dict[str, str]):
    fd, self.events = tempfile.mkstemp(prefix="gpu-check-events-")
    os.close(fd)
    fd, self.log_path = tempfile.mkstemp(prefix="gpu-check-log-")
    self.cmd = [sys.executable, "-m", "pytest", "-q", "--maxfail=20", "-p", "no:cacheprovider",
                "-p", "benchmarks.gpu.pytest_plugin", *args]
    self.start = time.monotonic()
    with os.fdopen(fd, "w") as log:  # the child keeps its own handle
      # A session of its own, so that a timeout kills pytest and anything it started.
      self.proc = subprocess.Popen(self.cmd, cwd=ctx.root,
                                   env={**env, pytest_plugin.EVENTS_ENV: self.events},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

  def kill(self) -> None:
    """Ends the process group if it still runs (after an interruption of the check)."""
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()

  def wait(self, deadline: float) -> tuple[int, bool, float]:
    """(return code, timed out, seconds), killing the process group at the deadline."""
    try:
      rc = self.proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
      timed_out = False
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      rc, timed_out = self.proc.wait(), True
    return rc, timed_out, time.monotonic() - self.start

  def take_log(self) -> str:
    with open(self.log_path, errors="replace") as f:
      text = f.read()
    os.unlink(self.log_path)
    return text

  def take_counts(self) -> dict[str, int]:
    """Outcomes from the plugin's file: passed, failed, error, skipped."""
    with open(self.events) as f:
      outcomes = [line.split(" ", 1)[0] for line in f if line.strip()]
    os.unlink(self.events)
    return dict(collections.Counter(outcomes))


class Run:
  """The test shards, started at once."""

  def __init__(self, ctx: Context, timeout_s: float):
    self.ctx = ctx
    self.timeout_s = timeout_s
    self.deadline = time.monotonic() + timeout_s
    env = dict(os.environ)
    env["PYTHONPATH"] = ctx.root + os.pathsep + env.get("PYTHONPATH", "")
    env[pytest_plugin.EXPECT_ENV] = "cpu" if ctx.cpu_mode else "gpu"
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU's memory
    self.missing: list[str] = []
    self.shards = [Shard(ctx, args, env) for args in self.present(QUICK if ctx.quick else FULL)]

  def present(self, shards: list[list[str]]) -> list[list[str]]:
    """The shards with the test files that exist (files get renamed); empty ones dropped."""
    kept = []
    for args in shards:
      files = [a for a in args if a.endswith(".py")]
      gone = [f for f in files if not os.path.exists(os.path.join(self.ctx.root, f))]
      self.missing += gone
      if len(gone) < len(files):
        kept.append([a for a in args if a not in gone])
    return kept

  def kill(self) -> None:
    for shard in self.shards:
      shard.kill()

  def finish(self) -> dict[str, Any]:
    """Waits for every shard until the time limit and reports; tests.log gets every log."""
    parts, counts, shards = [], collections.Counter(), []
    for shard in self.shards:
      rc, timed_out, seconds = shard.wait(self.deadline)
      log = shard.take_log()
      shard_counts = shard.take_counts()
      counts.update(shard_counts)
      note = f"\n[gpu check] killed after {seconds:.0f} s (limit {self.timeout_s:.0f} s)\n"
      parts.append(f"$ {' '.join(shard.cmd[1:])}\n{log}{note if timed_out else ''}")
      shards.append({"command": " ".join(shard.cmd[1:]), "returncode": rc,
                     "timed_out": timed_out, "wall_s": round(seconds, 1),
                     "counts": shard_counts, "summary_line": summary_line(log),
                     "status": status(rc, timed_out, shard_counts)})
    text = "\n".join(parts)
    common.write_text(os.path.join(self.ctx.outdir, "tests.log"), text)
    states = [s["status"] for s in shards] or [ERROR]  # no test file found at all
    overall = FAIL if FAIL in states else ERROR if ERROR in states else OK
    return {"status": overall, "passed": counts.get("passed", 0), "counts": dict(counts),
            "timed_out": any(s["timed_out"] for s in shards), "limit_s": round(self.timeout_s),
            "wall_s": max((s["wall_s"] for s in shards), default=0.0), "shards": shards,
            "missing_files": self.missing,
            "failures": re.findall(r"^(?:FAILED|ERROR) .*$", text, re.MULTILINE)[:20],
            "log": "tests.log", "log_tail": text[-1500:] if overall != OK else None}


def summary_line(log: str) -> str | None:
  """The last line of a -q run ("66 passed, 327 deselected in 8.71s"), framed by = or not."""
  found = re.findall(r"^=* ?(\d+ (?:passed|failed|error|skipped|deselected).* in [\d.]+s.*?)"
                     r"(?: =+)?$", log, re.MULTILINE)
  return found[-1] if found else None


def status(rc: int, timed_out: bool, counts: dict[str, int]) -> str:
  """fail if a test failed; ok if all that ran passed (a timeout leaves the rest unknown);
  error for a run that broke without failing tests (a usage error: wrong backend...)."""
  if counts.get("failed", 0) + counts.get("error", 0):
    return FAIL
  if timed_out:
    return OK if counts.get("passed") else ERROR
  return OK if rc == 0 else ERROR
