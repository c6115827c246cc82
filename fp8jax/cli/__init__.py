"""The fp8jax command: `commands` (arguments, exit status, errors), `progress`, `demo`.

`console` installs the signal handlers before anything heavy is imported, so
that Ctrl-C or SIGTERM during start-up (importing JAX takes a while) also
exits with one line and 130 / 143.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import signal
import sys

from fp8jax.checkpoint import interrupts  # the standard library only


def console() -> None:
  """The `fp8jax` console script."""
  interrupts.install()
  # A signal during the imports is only recorded: raised inside an extension
  # module's initialization, it would become that module's ImportError.
  with interrupts.held():
    from fp8jax.cli import commands
  signum = interrupts.received()
  if signum is not None:
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    print(f"fp8jax: {what}; nothing written", file=sys.stderr, flush=True)
    os._exit(128 + signum)
  commands.console()


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command with `argv` (default: sys.argv[1:]); returns the exit status."""
  from fp8jax.cli import commands
  return commands.main(argv)


__all__ = ["console", "main"]
