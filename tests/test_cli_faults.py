"""The command line under faults: a failing or killed swap, links and special files in a model
folder, Ctrl-C and SIGTERM at any moment. OUT always holds a complete model, old or new."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fp8jax import cli
from fp8jax.checkpoint import files, interrupts, output, pipeline, safetensors_io as st
from tests import cli_fixtures as fx

pytest.importorskip("safetensors", reason="inputs are written with the safetensors library")
pytest.importorskip("torch", reason="inputs are written with safetensors.torch")

SUBPROCESS_TIMEOUT_S = 120


def _model(folder) -> str:
  """A small model folder: two shards, an index, config.json and a tokenizer."""
  os.makedirs(folder)
  fx.save_sharded(str(folder), fx.example(), shards=2, config={"model_type": "llama"})
  (folder / "tokenizer.json").write_text('{"model": "bpe"}')
  return str(folder)


@pytest.fixture
def model(tmp_path):
  """IN (a model folder), an existing OUT (an older conversion), and the new OUT's contents."""
  src = _model(tmp_path / "in")
  ref = tmp_path / "ref" / "out"
  os.makedirs(ref.parent)
  assert cli.main(["quantize", src, str(ref), "-q"]) == 0
  out = tmp_path / "work" / "out"
  os.makedirs(out.parent)
  assert cli.main(["quantize", src, str(out), "-q", "--scaling", "axis"]) == 0
  (out / "old-marker.txt").write_text("the old model")
  return src, out, fx.contents(str(ref))


def _beside(out) -> list[str]:
  return sorted(os.listdir(out.parent))


@contextlib.contextmanager
def _handlers():
  """The command's signal handlers, installed in the test body (pytest swaps the unraisable
  hook per test phase) and removed after. A test run started in the background has SIGINT
  ignored, which `install` keeps: these tests are about a SIGINT that is not."""
  ignored = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)
             if signal.getsignal(s) is signal.SIG_IGN}
  for s in ignored:
    signal.signal(s, signal.SIG_DFL)
  interrupts.install()
  try:
    yield
  finally:
    interrupts.uninstall()
    for s, handler in ignored.items():
      signal.signal(s, handler)


# --- replacing an existing OUT folder (--force) ---------------------------------

def test_the_swap_exchanges_two_folders_in_one_step(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  a.mkdir()
  b.mkdir()
  (a / "x").write_text("a")
  files.exchange(str(a), str(b))
  assert os.listdir(a) == [] and (b / "x").read_text() == "a"
  assert files.can_exchange(str(a))
  assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # the probe's folders are gone


def test_a_failing_swap_keeps_the_old_out(model, monkeypatch, capsys):
  src, out, _ = model
  old = fx.contents(str(out))

  def failing(a, b):
    if os.path.basename(b) == "out":  # not the probe before the work
      raise OSError(errno.EIO, "simulated failure", a)
    return real(a, b)

  real = files.exchange
  monkeypatch.setattr(files, "exchange", failing)
  assert cli.main(["quantize", src, str(out), "-q", "--force"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "simulated failure" in err
  assert fx.contents(str(out)) == old
  assert _beside(out) == ["out"]


_KILLED_AT_THE_SWAP = r"""
import os, signal, sys
from fp8jax import cli
from fp8jax.checkpoint import files

real, when = files.exchange, sys.argv[1]

def exchange(a, b):
  if os.path.basename(b) != "out":  # the probe before the work
    return real(a, b)
  if when == "before":
    os.kill(os.getpid(), signal.SIGKILL)
  real(a, b)
  os.kill(os.getpid(), signal.SIGKILL)

files.exchange = exchange
cli.main(sys.argv[2:])
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_at_the_swap_leaves_a_complete_out(model, when):
  src, out, new = model
  old = fx.contents(str(out))
  r = subprocess.run([sys.executable, "-c", _KILLED_AT_THE_SWAP, when, "quantize", src,
                      str(out), "-q", "--force"], capture_output=True, text=True,
                     timeout=SUBPROCESS_TIMEOUT_S, check=False)
  assert r.returncode == -signal.SIGKILL, r.stderr
  assert fx.contents(str(out)) == (old if when == "before" else new)


def test_force_is_refused_before_any_work_where_folders_cannot_be_swapped(model, monkeypatch,
                                                                          capsys):
  src, out, _ = model
  monkeypatch.setattr(files, "_RENAMEAT2", None)
  monkeypatch.setattr(pipeline, "quantize_tensor", _no_work)
  fx.expect_bad(capsys, ["quantize", src, str(out), "--force"],
                "--force cannot replace the folder", out.parent)
  assert _beside(out) == ["out"]


def test_force_onto_a_mount_point_is_refused_before_any_work(model, monkeypatch, capsys):
  src, out, _ = model
  monkeypatch.setattr(output.os.path, "ismount", lambda p: os.path.abspath(p) == str(out))
  monkeypatch.setattr(pipeline, "quantize_tensor", _no_work)
  fx.expect_bad(capsys, ["quantize", src, str(out), "--force"], "is a mount point", out.parent)


def _no_work(*args, **kwargs):
  raise AssertionError("the conversion started")


# --- a model folder's other files ------------------------------------------------

def test_links_inside_the_folder_are_recreated_as_relative_links(tmp_path):
  src = tmp_path / "in"
  _model(src)
  (src / "sub").mkdir()
  (src / "sub" / "vocab.txt").write_text("a b c")
  os.symlink("sub/vocab.txt", src / "vocab.txt")
  os.symlink(os.path.abspath(src / "tokenizer.json"), src / "sub" / "tokenizer.json")
  os.symlink("..", src / "sub" / "top")  # back to the folder itself: kept as a link, not followed
  out = tmp_path / "out"
  assert cli.main(["quantize", str(src), str(out), "-q"]) == 0
  assert os.readlink(out / "vocab.txt") == os.path.join("sub", "vocab.txt")
  assert os.readlink(out / "sub" / "tokenizer.json") == os.path.join("..", "tokenizer.json")
  assert os.readlink(out / "sub" / "top") == ".."
  assert (out / "vocab.txt").read_text() == "a b c"  # OUT's own copy
  assert os.path.realpath(out / "vocab.txt") == os.path.realpath(out / "sub" / "vocab.txt")


def _secret(tmp_path):
  secret = tmp_path / "secret.txt"
  secret.write_text("password")
  return secret


def _fifo(path):
  os.mkfifo(path)


def _socket(path):
  s = socket.socket(socket.AF_UNIX)
  s.bind(str(path))
  s.close()


@pytest.mark.parametrize("name,make,message", [
    ("tokenizer.json", lambda p, t: os.symlink(_secret(t), p), "is a link out of the model folder"),
    ("data", lambda p, t: os.symlink(t, p), "is a link out of the model folder"),
    ("loop", lambda p, t: os.symlink("../..", p), "is a link out of the model folder"),
    ("gone.json", lambda p, t: os.symlink(t / "nothing", p), "is a link to nothing"),
    ("pipe", lambda p, t: _fifo(p), "is a named pipe"),
    ("sock", lambda p, t: _socket(p), "is a socket"),
], ids=["secret", "folder", "ancestor", "dangling", "fifo", "socket"])
def test_links_out_of_the_folder_and_special_files_are_refused_before_any_work(
    tmp_path, monkeypatch, capsys, name, make, message):
  src = tmp_path / "in"
  _model(src)
  os.remove(src / "tokenizer.json")
  (src / "sub").mkdir()
  make(src / "sub" / name, tmp_path)
  names = sorted(os.listdir(src / "sub"))
  outdir = tmp_path / "outdir"
  outdir.mkdir()
  monkeypatch.setattr(pipeline, "quantize_tensor", _no_work)
  err = fx.expect_bad(capsys, ["quantize", str(src), str(outdir / "q")], message, outdir)
  assert os.path.join("sub", name) in err
  assert os.listdir(outdir) == [] and sorted(os.listdir(src / "sub")) == names


# --- Ctrl-C and SIGTERM -------------------------------------------------------------

@pytest.fixture(scope="module")
def large(tmp_path_factory):
  """A checkpoint folder that takes a few tenths of a second to quantize, and its quantized
  form."""
  root = tmp_path_factory.mktemp("large")
  src = root / "in"
  src.mkdir()
  x = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
  for s in range(2):
    st.write_file(str(src / f"model-{s + 1:05d}-of-00002.safetensors"),
                  {f"layers.{s}.{i}.weight": x for i in range(24)})
  (src / "config.json").write_text('{"model_type": "llama"}')
  ref = root / "ref"
  assert cli.main(["quantize", str(src), str(ref), "-q"]) == 0
  return str(src), fx.contents(str(ref))


def _to_main_thread(sig: int) -> None:
  """Sends `sig` to this thread (the main one), so that its handler runs before the next
  line: sent to the process, another thread (JAX's) may take it and the handler run later."""
  signal.pthread_kill(threading.main_thread().ident, sig)


def _signal_run(src: str, out, sig: int, delay: float,
                after_stage: bool = True) -> subprocess.CompletedProcess:
  """Runs `fp8jax quantize` and sends `sig` `delay` seconds after its staging folder appears
  (mid-conversion), or after the start with `after_stage=False` (during start-up)."""
  argv = [sys.executable, "-m", "fp8jax", "quantize", src, str(out), "-q", "--force"]
  p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while after_stage and not any(n.startswith(".out.") for n in os.listdir(out.parent)):
      assert p.poll() is None and time.monotonic() < deadline, p.stderr
      time.sleep(0.002)
    time.sleep(delay)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=SUBPROCESS_TIMEOUT_S)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  return subprocess.CompletedProcess(argv, p.returncode, stdout, stderr)


def test_sigint_and_sigterm_at_random_moments_stop_cleanly(large, tmp_path):
  src, new = large
  rng = random.Random(20240613)
  out = tmp_path / "out"
  stopped = 0
  for i in range(8):
    sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
    if i % 4 >= 2:  # half the runs replace an older OUT
      os.makedirs(out, exist_ok=True)
      (out / "old.txt").write_text("old")
    before = fx.contents(str(out)) if out.exists() else None
    r = _signal_run(src, out, sig, rng.uniform(0.0, 0.15))
    after = fx.contents(str(out)) if out.exists() else None
    if r.returncode == 0:  # the signal came after OUT was complete
      assert after == new and r.stderr == ""
    else:
      stopped += 1
      word = "interrupted" if sig == signal.SIGINT else "terminated"
      assert (r.returncode, r.stderr) == (128 + sig, f"fp8jax: {word}; nothing written\n")
      assert after == before
    assert os.listdir(tmp_path) in ([], ["out"])  # no temporary left beside OUT
    if out.exists():
      shutil.rmtree(out)
  assert stopped >= 4


def test_an_interrupt_lost_in_a_gc_callback_still_stops_the_run(large, tmp_path, monkeypatch,
                                                                 capsys):
  # JAX runs a garbage-collection callback; a KeyboardInterrupt raised inside one is reported
  # as "unraisable" and lost. The signal is recorded too, and checked between tensors.
  src, _ = large
  real, calls = pipeline.quantize_tensor, []

  def tensor_then_lost_interrupt(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      def callback(phase, info):
        gc.callbacks.remove(callback)
        _to_main_thread(signal.SIGINT)  # the handler runs here, and its exception is lost
      gc.callbacks.append(callback)
      gc.collect()
      assert interrupts.received() == signal.SIGINT
    return real(*args, **kwargs)

  monkeypatch.setattr(pipeline, "quantize_tensor", tensor_then_lost_interrupt)
  with _handlers():
    status = cli.main(["quantize", src, str(tmp_path / "out"), "-q"])
  assert status == 130 and len(calls) == 2
  assert capsys.readouterr().err == "fp8jax: interrupted; nothing written\n"
  assert os.listdir(tmp_path) == []


def test_a_signal_while_a_temporary_is_created_is_honoured_and_cleaned(model, monkeypatch,
                                                                       capsys):
  src, out, _ = model
  old = fx.contents(str(out))

  class SignalOnFirstAdd(set):
    def add(self, name):
      super().add(name)
      if len(self) == 1:
        _to_main_thread(signal.SIGTERM)  # held: the name is recorded first

  monkeypatch.setattr(files, "_temporaries", SignalOnFirstAdd())
  with _handlers():
    assert cli.main(["quantize", src, str(out), "-q", "--force"]) == 143
  assert capsys.readouterr().err == "fp8jax: terminated; nothing written\n"
  assert fx.contents(str(out)) == old and _beside(out) == ["out"]


def test_an_interrupt_between_any_two_statements_leaves_no_temporary(tmp_path, monkeypatch,
                                                                     capsys):
  # Here, just after the writer's temporary file is made and before its clean-up is armed.
  src = tmp_path / "in.safetensors"
  fx.save(str(src), fx.example())

  class Interrupted(files.AtomicFile):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      raise KeyboardInterrupt

  monkeypatch.setattr(st, "AtomicFile", Interrupted)
  assert cli.main(["quantize", str(src), str(tmp_path / "q.safetensors"), "-q"]) == 130
  assert capsys.readouterr().err == "fp8jax: interrupted; nothing written\n"
  assert os.listdir(tmp_path) == ["in.safetensors"]


def test_a_signal_after_out_is_in_place_lets_the_run_finish(model, monkeypatch, capsys):
  src, out, new = model
  real = files.exchange

  def exchange_then_signal(a, b):
    real(a, b)
    if os.path.basename(b) == "out":
      _to_main_thread(signal.SIGINT)

  monkeypatch.setattr(files, "exchange", exchange_then_signal)
  second = out.parent / "second"
  with _handlers():
    assert cli.main(["quantize", src, str(out), "--force"]) == 0
    assert interrupts.received() == signal.SIGINT
    assert capsys.readouterr().out.startswith("quantized ")
    # The next output in the same process (fp8jax demo writes two) is stopped by it.
    assert cli.main(["quantize", src, str(second), "-q"]) == 130
  assert fx.contents(str(out)) == new and _beside(out) == ["out"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_exits_with_one_line(model, tmp_path, signum):
  # `import fp8jax` is cheap; the handlers are in place before JAX loads, so a
  # signal while the command is still importing stops it like any other.
  src = model[0]
  out = tmp_path / "early" / "out"
  os.makedirs(out.parent)
  for delay in (0.05, 0.2, 0.5):
    proc = _signal_run(src, out, signum, delay, after_stage=False)
    err = proc.stderr
    if proc.returncode == 0:
      continue  # finished before the signal: nothing to check at this delay
    assert proc.returncode == 128 + signum, err
    assert len(err.strip().splitlines()) == 1 and "nothing written" in err, err
    assert not out.exists() and _beside(out) == []
