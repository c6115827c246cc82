"""A pytest plugin for the GPU check's test run (`-p benchmarks.gpu.pytest_plugin`).

It refuses to run when JAX's default backend is not the one the check expects (so that a
GPU run cannot quietly test the CPU), names the backend in the log's header, and appends
each test's outcome to a file as it happens, so that the counts survive a timeout.
"""

from __future__ import annotations

import os

import pytest

EXPECT_ENV = "GPU_CHECK_EXPECT_BACKEND"  # "gpu" or "cpu"
EVENTS_ENV = "GPU_CHECK_EVENTS"  # path of the outcome file


def _backend() -> tuple[str, list[str]]:
  import jax
  return jax.default_backend(), [str(d) for d in jax.devices()]


def pytest_configure(config: pytest.Config) -> None:
  expected = os.environ.get(EXPECT_ENV)
  backend, _ = _backend()
  if expected and backend != expected:
    raise pytest.UsageError(f"JAX's default backend is {backend!r}, expected {expected!r}")


def pytest_sessionstart(session: pytest.Session) -> None:
  # A line at the top of the log, even under -q (which hides report headers).
  backend, devices = _backend()
  reporter = session.config.pluginmanager.get_plugin("terminalreporter")
  if reporter is not None:
    reporter.write_line(f"[gpu check] jax default backend: {backend}; devices: "
                        f"{', '.join(devices)}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
  path = os.environ.get(EVENTS_ENV)
  if not path:
    return
  # One line per outcome that counts: every call, and setup/teardown only when not passed.
  if report.when == "call" or report.outcome != "passed":
    outcome = report.outcome
    if report.when != "call" and outcome == "failed":
      outcome = "error"
    with open(path, "a") as f:
      f.write(f"{outcome} {report.when} {report.nodeid}\n")
