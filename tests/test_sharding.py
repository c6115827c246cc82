"""Sharded arrays on 8 host devices, and two JAX processes, each in a subprocess.

XLA's host device count is fixed when JAX starts, so these checks run in
fresh interpreters, bounded in time and always reaped.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import fp8jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_sharded_checks_pass_on_eight_host_devices():
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       os.path.join(HERE, "sharded_checks.py")],
      env=_env(8), cwd=ROOT, capture_output=True, text=True, timeout=900)
  tail = proc.stdout[-3000:] + proc.stderr[-2000:]
  assert proc.returncode == 0, tail
  passed = re.search(r"(\d+) passed", proc.stdout)
  assert passed and int(passed.group(1)) >= 100, tail
  assert "failed" not in proc.stdout.splitlines()[-1], tail


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_single_process_bits(tmp_path):
  port = _free_port()
  worker = os.path.join(HERE, "multihost_worker.py")
  procs = [subprocess.Popen([sys.executable, worker, str(port), str(i), str(tmp_path)],
                            env=_env(4), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=240)
      outputs.append(out)
  finally:
    for p in procs:  # always reaped, even on timeout or failure
      if p.poll() is None:
        p.kill()
      p.wait()
  if any("CPU collectives are not available" in o for o in outputs):
    pytest.skip("this jaxlib has no CPU collectives (gloo)")
  assert all(p.returncode == 0 for p in procs), "\n----\n".join(o[-3000:] for o in outputs)
  from tests.multihost_worker import LAYOUTS, data
  x = jnp.asarray(data())
  for name, kwargs in LAYOUTS.items():
    got = np.load(tmp_path / f"{name}.npz")
    ref = fp8jax.quantize(x, "e4m3fn", **kwargs)
    np.testing.assert_array_equal(got["bits"], np.asarray(ref.bits))
    np.testing.assert_array_equal(got["scale"], np.asarray(ref.scale))


def test_the_example_gives_the_same_codes_on_eight_devices_and_one():
  script = os.path.join(ROOT, "examples", "sharded_quantize.py")
  outs = []
  for n in (8, 1):
    env = _env(n)
    proc = subprocess.run([sys.executable, script, str(n)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs.append(proc.stdout)
  assert outs[0].startswith("8 device(s)") and outs[1].startswith("1 device(s)")
  checksum = [re.search(r"checksum of the codes: (\d+)", o).group(1) for o in outs]
  assert checksum[0] == checksum[1]
