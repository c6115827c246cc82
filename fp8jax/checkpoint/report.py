"""What a checkpoint conversion did: a line per tensor and a summary line."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TensorReport:
  """What happened to one tensor.

  Attributes:
    name: the tensor's name.
    dtype: its dtype tag in the input.
    shape: its shape.
    action: "quantized ...", "dequantized ..." or "kept (why)".
    bytes_in: its bytes in the input.
    bytes_out: its bytes in the output (codes plus scale when quantized).
    sqnr_db: the SQNR of the round trip, for quantized tensors, else None.

  Example:
    >>> TensorReport("w", "BF16", (256, 512), "quantized e4m3fn tensor", 262144, 131076,
    ...              31.5).line()
    'w  BF16 [256, 512]  quantized e4m3fn tensor  256.0 KiB -> 128.0 KiB  SQNR  31.50 dB'
  """

  name: str
  dtype: str
  shape: tuple[int, ...]
  action: str
  bytes_in: int
  bytes_out: int
  sqnr_db: float | None = None

  def line(self) -> str:
    sqnr = "" if self.sqnr_db is None else f"  SQNR {self.sqnr_db:6.2f} dB"
    shape = "[" + ", ".join(map(str, self.shape)) + "]"
    return (f"{printable(self.name)}  {self.dtype} {shape}  {self.action}  "
            f"{human_bytes(self.bytes_in)} -> {human_bytes(self.bytes_out)}{sqnr}")


@dataclasses.dataclass(frozen=True)
class Summary:
  """The whole run: per-tensor reports, file sizes and time; `note`, what to tell about the
  output (the command line prints it on stderr)."""

  tensors: tuple[TensorReport, ...]
  bytes_before: int
  bytes_after: int
  seconds: float
  verb: str
  note: str | None = None

  @property
  def changed(self) -> list[TensorReport]:
    return [t for t in self.tensors if not t.action.startswith("kept")]

  @property
  def worst_sqnr_db(self) -> float | None:
    values = [t.sqnr_db for t in self.tensors if t.sqnr_db is not None]
    return min(values) if values else None

  def line(self) -> str:
    n, k = len(self.changed), len(self.tensors) - len(self.changed)
    worst = self.worst_sqnr_db
    worst_s = "" if worst is None else f", worst SQNR {worst:.2f} dB"
    ratio = self.bytes_after / self.bytes_before if self.bytes_before else 1.0
    return (f"{self.verb} {n} tensors, kept {k}; {human_bytes(self.bytes_before)} -> "
            f"{human_bytes(self.bytes_after)} ({ratio:.1%} of the input){worst_s}; "
            f"{self.seconds:.1f} s")


def human_bytes(n: float) -> str:
  """A byte count for people: `512 B`, `3.5 KiB`, ..., up to GiB.

  Example:
    >>> human_bytes(512), human_bytes(6.6 * 2**20)
    ('512 B', '6.6 MiB')
  """
  for unit in ("B", "KiB", "MiB"):
    if abs(n) < 1024:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} GiB"


def printable(text: str) -> str:
  """`text` with its control and other unprintable characters escaped as Python escapes them.

  Tensor names and paths come from the files: printed raw, a newline would
  forge a line of the report and an escape sequence would drive the
  terminal. Printable text, any script, is unchanged.

  Example:
    >>> printable("layer.0.weight"), printable("w\\x1b[2J\\n"), printable("poids.é")
    ('layer.0.weight', 'w\\\\x1b[2J\\\\n', 'poids.é')
  """
  if text.isprintable():
    return text
  return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
