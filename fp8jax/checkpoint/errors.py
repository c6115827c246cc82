"""The one error the checkpoint code raises for bad input or arguments."""

from __future__ import annotations


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or written as asked; the message says why.

  Attributes:
    param: the argument at fault, by its parameter name ("rounding", "force",
      ...), or None when the input itself is at fault. The message then
      begins with that name, so that a front end can put its own spelling in
      its place: the command line prints `--rounding must be ...` where the
      library says `rounding must be ...`.

  Example:
    >>> e = CheckpointError("rounding must be nearest or stochastic (got 'up')", param="rounding")
    >>> e.param, str(e)
    ('rounding', "rounding must be nearest or stochastic (got 'up')")
  """

  def __init__(self, message: str, param: str | None = None):
    super().__init__(message)
    self.param = param
