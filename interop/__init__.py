"""The PyTorch bridge of fp8jax: zero-copy DLPack exchange and torch-facing conversions."""

from interop.convert import (
    TABLE_MAX_ELEMENTS,
    decode,
    encode,
    int32_to_bfloat16,
    round_to_fp8_represented_as_int8,
    undo_int8_fp8,
)
from interop.dlpack import as_torch_float8, from_torch_float8, to_jax, to_torch

__all__ = [
    "TABLE_MAX_ELEMENTS",
    "as_torch_float8",
    "decode",
    "encode",
    "from_torch_float8",
    "int32_to_bfloat16",
    "round_to_fp8_represented_as_int8",
    "to_jax",
    "to_torch",
    "undo_int8_fp8",
]
