"""Ctrl-C and SIGTERM: a conversion stops cleanly, never half-way through putting OUT in place.

The command line calls `install()` first thing: from then on SIGINT and
SIGTERM record the signal and raise `Interrupted` on the main thread. Python
can lose that exception: raised inside a garbage-collection callback (JAX
has one) or a `__del__`, it is reported as "unraisable" and the program
goes on. So the signal is recorded as well, and the writers call `check()`
between tensors and before every rename: a signal is honoured even when its
exception was lost (and the lost exception is not reported).

`held()` keeps the exception out of a few statements that must not be cut
in two (creating a temporary and recording its name, a rename and its
bookkeeping); the signal is then honoured by the next `check()`.
`committing(final=True)` wraps the rename that puts OUT itself in place:
a signal received before it stops the run, and from then on signals are
only recorded, since OUT is complete: the run finishes (exit 0) rather than
report "nothing written" about an OUT that was written. `starting()` ends
that when another output begins (`fp8jax demo` writes two).

Without `install()` (the library used from Python) nothing here changes
how Ctrl-C behaves: Python raises KeyboardInterrupt as usual, and the
writers clean up after it in their `finally` blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """Raised for SIGINT or SIGTERM once `install()` is in force.

  Attributes:
    signum: the signal.
    exit_status: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
  """

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.exit_status = 128 + signum


_received: int | None = None  # the first signal caught
_holding = 0  # > 0 inside held(): signals are recorded, not raised
_committed = False  # OUT is in place: signals are recorded, not raised


def _handler(signum: int, frame) -> None:
  global _received
  if _received is not None:
    return  # a second signal: the clean-up of the first one is under way
  _received = signum
  if not _holding and not _committed:
    raise Interrupted(signum)


def _quiet(hook):
  """`sys.unraisablehook` that drops lost `Interrupted` exceptions (`check()` raises them again)."""
  def unraisable(info) -> None:
    if not isinstance(info.exc_value, Interrupted):
      hook(info)
  return unraisable


_previous: dict = {}  # what install() replaced: signal handlers and the unraisable hook


def install() -> None:
  """Makes SIGINT and SIGTERM raise `Interrupted` (and be recorded) from now on.

  A signal the process was started with ignored (`nohup`, a background
  job) stays ignored. `uninstall()` puts the previous handlers back.
  """
  global _received, _holding, _committed
  uninstall()
  _received, _holding, _committed = None, 0, False
  for s in SIGNALS:
    if signal.getsignal(s) is not signal.SIG_IGN:
      _previous[s] = signal.signal(s, _handler)
  _previous["unraisablehook"] = sys.unraisablehook
  sys.unraisablehook = _quiet(sys.unraisablehook)


def uninstall() -> None:
  """Undoes `install()` (for tests and embedders); forgets any signal received."""
  global _received, _committed
  hook = _previous.pop("unraisablehook", None)
  if hook is not None:
    sys.unraisablehook = hook
  for s, handler in list(_previous.items()):
    signal.signal(s, handler)
  _previous.clear()
  _received, _committed = None, False


def ignore() -> None:
  """Ignores SIGINT and SIGTERM from now on: the process is about to exit with its status.

  Python's shutdown puts the default handlers back (all but ignored ones),
  under which a late signal would kill the process, its work done, with a
  signal's status. (Blocking them would not do: XLA's threads take them.)
  """
  for s in SIGNALS:
    signal.signal(s, signal.SIG_IGN)


def installed() -> bool:
  """Whether `install()` is in force."""
  return "unraisablehook" in _previous


def received() -> int | None:
  """The signal caught since `install()`, or None."""
  return _received


def check() -> None:
  """Raises `Interrupted` if a signal came (even one whose exception was lost), until OUT is in place."""
  if _received is not None and not _committed:
    raise Interrupted(_received)


@contextlib.contextmanager
def held() -> Iterator[None]:
  """A block that a signal does not cut in two: it is recorded, and honoured by the next `check()`."""
  global _holding
  _holding += 1
  try:
    yield
  finally:
    _holding -= 1


def starting() -> None:
  """A new output is about to be written: signals raise again.

  One that came after the previous output went in place (and was only
  recorded then) stops this one at its first `check()`.
  """
  global _committed
  _committed = False


@contextlib.contextmanager
def committing(final: bool) -> Iterator[None]:
  """Wraps a rename into place: `check()` first, no signal inside.

  Args:
    final: the rename puts OUT itself in place; after it, signals are only
      recorded (the run is complete) until `starting()`.
  """
  global _committed
  with held():
    check()
    yield
    if final:
      _committed = True
