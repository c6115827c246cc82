"""Which tensors of a checkpoint get quantized: the default rule, `--include`, `--exclude`.

Default: floating-point tensors with at least 2 dimensions, except those the
serving stacks keep in high precision (llm-compressor's documented
`ignore` lists and vLLM's loaders):

| kept | matched by (components of the dotted name, in any case) |
| --- | --- |
| embeddings | a name containing `embed` |
| the output projection | `lm_head` |
| MoE routers | a module named `gate` (not `gate_proj`, `gate_up_proj`), `router` or `shared_expert_gate`: Mixtral's `block_sparse_moe.gate`, Qwen's and DeepSeek's `mlp.gate`, Llama 4's and gpt-oss's `router` |
| vision and audio towers | `visual`, `vision_tower`, `vision_model`, `multi_modal_projector`, `audio_tower` |
| norms | a component ending in `norm` (`q_norm`, `LayerNorm`) |

Norms and biases are 1-D and stay as they are whatever their names.
Quantized routers change which experts a token goes to, and vLLM's MoE
loaders expect them unquantized. `--include GLOB` adds matching
floating-point tensors with at least 2 dimensions (an embedding, a router,
say); `--exclude GLOB` removes matches, and exclude wins. Globs are
`fnmatch` patterns on the full tensor name (`*` also matches dots).
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
_SKIPPED_NAMES = ("embed", "lm_head")  # anywhere in the name
_ROUTERS = frozenset({"gate", "router", "shared_expert_gate"})  # whole components
_TOWERS = frozenset({"visual", "vision_tower", "vision_model", "multi_modal_projector",
                     "audio_tower"})


def kept_module(name: str) -> str | None:
  """Why the default rule keeps the tensor `name` in high precision, None if it does not.

  Example:
    >>> kept_module("model.layers.0.block_sparse_moe.gate.weight")
    'router'
    >>> kept_module("model.layers.0.mlp.gate_proj.weight") is None
    True
  """
  lowered = name.lower()
  for word in _SKIPPED_NAMES:
    if word in lowered:
      return word
  parts = lowered.split(".")
  if parts[-1] in ("weight", "bias"):
    parts = parts[:-1]
  if any(p in _ROUTERS for p in parts):
    return "router"
  if any(p in _TOWERS for p in parts):
    return "vision or audio tower"
  if any(p.endswith("norm") for p in parts):
    return "norm"
  return None


@dataclasses.dataclass(frozen=True)
class Selection:
  """The tensors to quantize.

  Attributes:
    include: globs whose matches are added to the default selection.
    exclude: globs whose matches are removed; exclude wins over include.

  Example:
    >>> Selection(include=("*embed*",)).reason(TensorInfo("embed.weight", "BF16", (8, 4), 0, 64))
    'quantized (--include)'
    >>> Selection().reason(TensorInfo("mlp.gate.weight", "BF16", (8, 4), 0, 64))
    'kept (router)'
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
    why = kept_module(t.name)
    return "quantized" if why is None else f"kept ({why})"

  def selects(self, t: TensorInfo) -> bool:
    return self.reason(t).startswith("quantized")

  def check_globs(self, names: Iterable[str]) -> None:
    """Raises `CheckpointError` (`param` "include" or "exclude") for a glob that matches no name."""
    names = list(names)
    for param, globs in (("include", self.include), ("exclude", self.exclude)):
      for g in globs:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
          raise CheckpointError(f"{param} {g!r} matches no tensor in the checkpoint", param=param)
