"""JSON as the checkpoint files carry it, read strictly: every failure is one clear error.

Headers, indexes, `config.json` and the `fp8jax` metadata are all read by
`loads`, which refuses, naming the file, what Python's `json` would let
through or crash on: NaN and Infinity (not JSON; other readers reject
them), nesting too deep for Python's parser, integers of more than 4,300
digits, and strings with lone surrogates (`"\\ud800"`: not Unicode text, so
no UTF-8 writer can write them back).
"""

from __future__ import annotations

import json
from typing import Any

from fp8jax.checkpoint.errors import CheckpointError


def _no_constant(name: str) -> Any:
  raise ValueError(f"{name} is not JSON")


def loads(raw: bytes | str, where: str) -> Any:
  """Parses strict JSON text (UTF-8 when bytes).

  Args:
    raw: the text.
    where: what it is, for the error message ("PATH", "PATH: corrupt header").

  Raises:
    CheckpointError: `where: invalid JSON (why)`.

  Example:
    >>> loads(b'{"a": [1, 2.5]}', "x.json")
    {'a': [1, 2.5]}
    >>> loads("[NaN]", "x.json")
    Traceback (most recent call last):
      ...
    fp8jax.checkpoint.errors.CheckpointError: x.json: invalid JSON (NaN is not JSON)
  """
  try:
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    value = json.loads(text, parse_constant=_no_constant)
  except RecursionError:
    raise CheckpointError(f"{where}: invalid JSON (nested too deeply)") from None
  except ValueError as e:  # also UnicodeDecodeError, and integers over the digit limit
    why = "an integer with too many digits" if "integer string" in str(e) else str(e)
    raise CheckpointError(f"{where}: invalid JSON ({why})") from None
  if "\\u" in text:  # only an escape can make a lone surrogate
    try:
      json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
      bad = e.object[e.start:e.end].encode("utf-8", "backslashreplace").decode("ascii")
      raise CheckpointError(f"{where}: invalid JSON (a lone surrogate {bad} is not Unicode "
                            "text)") from None
  return value
