"""Which tensors of a checkpoint get quantized: the default rule, `--include`, `--exclude`.

Default: floating-point tensors with at least 2 dimensions, except
embeddings (names containing `embed`, in any case) and `lm_head`. Norms
and biases are 1-D and stay as they are. `--include GLOB` adds matching
floating-point tensors with at least 2 dimensions (an embedding, say);
`--exclude GLOB` removes matches, and exclude wins. Globs are `fnmatch`
patterns on the full tensor name (`*` also matches dots).
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import fnmatch

from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.safetensors_io import FLOAT_TAGS, TensorInfo

# F64 is selected too, though fp8jax does not quantize it: a float64 weight is
# then refused with a clear error rather than silently left as it is.
_SELECTED_TAGS = (*FLOAT_TAGS, "F64")
_SKIPPED_NAMES = ("embed", "lm_head")


@dataclasses.dataclass(frozen=True)
class Selection:
  """The tensors to quantize.

  Attributes:
    include: globs whose matches are added to the default selection.
    exclude: globs whose matches are removed; exclude wins over include.

  Example:
    >>> Selection(include=("*embed*",)).reason(TensorInfo("embed.weight", "BF16", (8, 4), 0, 64))
    'quantized (--include)'
  """

  include: tuple[str, ...] = ()
  exclude: tuple[str, ...] = ()

  def reason(self, t: TensorInfo) -> str:
    """Why `t` is or is not quantized; starts with "quantized" when it is."""
    if any(fnmatch.fnmatchcase(t.name, g) for g in self.exclude):
      return "kept (--exclude)"
    if t.dtype not in _SELECTED_TAGS:
      return f"kept ({t.dtype})"
    if len(t.shape) < 2:
      return f"kept ({len(t.shape)}-D)"
    if any(fnmatch.fnmatchcase(t.name, g) for g in self.include):
      return "quantized (--include)"
    lowered = t.name.lower()
    for word in _SKIPPED_NAMES:
      if word in lowered:
        return f"kept ({word})"
    return "quantized"

  def selects(self, t: TensorInfo) -> bool:
    return self.reason(t).startswith("quantized")

  def check_globs(self, names: Iterable[str]) -> None:
    """Raises `CheckpointError` (`param` "include" or "exclude") for a glob that matches no name."""
    names = list(names)
    for param, globs in (("include", self.include), ("exclude", self.exclude)):
      for g in globs:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
          raise CheckpointError(f"{param} {g!r} matches no tensor in the checkpoint", param=param)
