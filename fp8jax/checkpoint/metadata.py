"""What a quantized safetensors file records about itself, under the metadata key `fp8jax`.

The value is a JSON string (safetensors metadata maps strings to strings):

    {"version": 1, "format": "e4m3fn", "scaling": "tensor",
     "bits_dtype": "F8_E4M3", "scale_dtype": "F32",
     "tensors": {codes tensor: {"dtype": original dtype tag, "scale": scale tensor name,
                                "name": the weight's name}}}

Each file lists the quantized weights it holds, and each scale is stored in
the same file as its weight. The `fp8jax` layout stores a weight `X.weight`'s
codes as `X.weight_fp8jax_codes` (a name no loader takes for a weight), and
`name` gives the weight's own name back; files without `name` hold the codes
under the weight's name. `bits_dtype` and `scale_dtype` follow from
format and scaling; they are written for other readers and not read back.
Files written before the per-axis scaling was spelled "axis" record
"channel", which reads as "axis".
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import json

from fp8jax.checkpoint import strict_json
from fp8jax.checkpoint.errors import CheckpointError
from fp8jax.checkpoint.safetensors_io import FLOAT_TAGS, Header
from fp8jax.checkpoint.stored import WeightLayout

KEY = "fp8jax"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
  """One quantized weight's entry.

  Attributes:
    dtype: the weight's dtype tag before quantization ("BF16", "F16", "F32").
    scale: the name of its scale tensor.
    name: the weight's name, when its codes are stored under another one
      (`X.weight` for `X.weight_fp8jax_codes`); None: the codes' name.
  """

  dtype: str
  scale: str
  name: str | None = None


@dataclasses.dataclass(frozen=True)
class QuantMetadata:
  """The `fp8jax` metadata of one file (or, merged, of a sharded checkpoint).

  Attributes:
    layout: how every quantized weight is stored.
    tensors: each quantized weight's codes tensor and entry, in file order.

  Example:
    >>> meta = QuantMetadata(WeightLayout.parse("e4m3fn", "axis"),
    ...                      {"w": QuantizedTensor("BF16", "w_scale")})
    >>> meta.dump()
    '{"bits_dtype": "F8_E4M3", "format": "e4m3fn", "scale_dtype": "F32", "scaling": "axis", \
"tensors": {"w": {"dtype": "BF16", "scale": "w_scale"}}, "version": 1}'
    >>> QuantMetadata.parse("model.safetensors", meta.dump()) == meta
    True
  """

  layout: WeightLayout
  tensors: dict[str, QuantizedTensor]

  @property
  def scales(self) -> dict[str, str]:
    """Each scale tensor's name and the name of its weight."""
    return {t.scale: name for name, t in self.tensors.items()}

  def dump(self) -> str:
    """The JSON string stored under `KEY` (keys sorted, so the bytes are stable; UTF-8 text as is)."""
    info = {"version": VERSION, "format": self.layout.fmt.name, "scaling": self.layout.scaling,
            "bits_dtype": self.layout.bits_dtype, "scale_dtype": self.layout.scale_dtype,
            "tensors": {name: {"dtype": t.dtype, "scale": t.scale}
                        | ({} if t.name is None else {"name": t.name})
                        for name, t in self.tensors.items()}}
    return json.dumps(info, sort_keys=True, ensure_ascii=False)

  @classmethod
  def parse(cls, path: str, raw: str) -> QuantMetadata:
    """Reads the JSON string stored under `KEY` in the file `path`.

    Raises:
      CheckpointError: a version other than `VERSION`, corrupt JSON, or
        scales that are not distinct tensors of their own (a weight that is
        its own scale or another weight's, two weights with one scale).
    """
    where = f"{path}: corrupt {KEY} metadata"
    info = strict_json.loads(raw, where)
    if not isinstance(info, dict):
      raise CheckpointError(f"{where} (not a JSON object)")
    version = info.get("version")
    if version != VERSION:
      raise CheckpointError(f"{path}: {KEY} metadata version {version!r} is not {VERSION}; use "
                            "the fp8jax that wrote it")
    try:
      layout = WeightLayout.parse(info["format"], info["scaling"])
      tensors = {}
      for name, entry in info["tensors"].items():
        if (entry["dtype"] not in FLOAT_TAGS or not isinstance(entry["scale"], str)
            or not isinstance(entry.get("name", ""), str)):
          raise ValueError(entry)
        tensors[name] = QuantizedTensor(entry["dtype"], entry["scale"], entry.get("name"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise CheckpointError(f"{where} ({e})") from None
    _check_scales(where, tensors)
    return cls(layout, tensors)

  @classmethod
  def of(cls, header: Header) -> QuantMetadata | None:
    """The metadata of one file, or None when fp8jax did not quantize it."""
    raw = header.metadata.get(KEY)
    return None if raw is None else cls.parse(header.path, raw)

  @classmethod
  def merged(cls, headers: Iterable[Header]) -> QuantMetadata | None:
    """The metadata of a checkpoint's files together, or None when none has any.

    Raises:
      CheckpointError: files quantized with different layouts, or corrupt metadata.
    """
    merged: QuantMetadata | None = None
    for h in headers:
      meta = cls.of(h)
      if meta is None:
        continue
      if merged is None:
        merged = cls(meta.layout, {})
      elif meta.layout != merged.layout:
        raise CheckpointError(f"{h.path} holds {meta.layout.describe()} weights, other shards "
                              f"{merged.layout.describe()}")
      merged.tensors.update(meta.tensors)
    return merged

  def check(self, header: Header) -> None:
    """Checks that the file holds each listed weight and scale, stored as `layout` says.

    Raises:
      CheckpointError: a listed weight or scale is missing, or has another dtype or shape.
    """
    by_name = {t.name: t for t in header.tensors}
    for name, entry in self.tensors.items():
      weight, scale = by_name.get(name), by_name.get(entry.scale)
      if weight is None or scale is None:
        raise CheckpointError(f"{header.path}: the metadata lists {name!r} with scale "
                              f"{entry.scale!r}, but the file lacks one of them")
      if (weight.dtype != self.layout.bits_dtype or scale.dtype != self.layout.scale_dtype
          or scale.shape != self.layout.scale_shape(weight.shape)):
        raise CheckpointError(f"{header.path}: {name!r} is {weight.dtype} with a {scale.dtype} "
                              f"{list(scale.shape)} scale, not the {self.layout.describe()} "
                              "layout")


def _check_scales(where: str, tensors: dict[str, QuantizedTensor]) -> None:
  """Each scale is a tensor of its own: not its weight, not a quantized weight, not shared."""
  owners: dict[str, str] = {}
  for name, entry in tensors.items():
    if entry.scale == name:
      raise CheckpointError(f"{where}: {name!r} is listed as its own scale")
    if entry.scale in tensors:
      raise CheckpointError(f"{where}: the scale of {name!r} is {entry.scale!r}, itself a "
                            "quantized weight")
    if entry.scale in owners:
      raise CheckpointError(f"{where}: {owners[entry.scale]!r} and {name!r} share the scale "
                            f"{entry.scale!r}")
    owners[entry.scale] = name
