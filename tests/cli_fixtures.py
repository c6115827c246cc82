"""Checkpoints for the command-line tests, written by the safetensors library itself.

The inputs are written with `safetensors.torch` and the outputs read back
with `safetensors` too, so the project's own reader and writer are checked
against an independent implementation on both sides.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import ml_dtypes
import numpy as np
import torch


def to_numpy(t) -> np.ndarray:
  """A torch tensor as NumPy (bfloat16 through ml_dtypes; float8 as uint8 codes)."""
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
    return t.view(torch.uint8).numpy()
  return t.numpy()


def from_numpy(a: np.ndarray):
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
  return torch.from_numpy(a.copy())


def example(seed: int = 0) -> dict[str, np.ndarray]:
  """A small transformer-like mix: weights of every float dtype and awkward shapes,
  embeddings, lm_head, norms, biases, an int tensor, a scalar, a 3-D tensor."""
  rng = np.random.default_rng(seed)

  def w(shape, dtype=ml_dtypes.bfloat16, scale=0.02):
    return (scale * rng.standard_t(4, size=shape)).astype(dtype)

  return {
      "model.embed_tokens.weight": w((96, 64)),
      "model.layers.0.input_layernorm.weight": w((64,), scale=1.0),
      "model.layers.0.self_attn.q_proj.weight": w((130, 64)),
      "model.layers.0.self_attn.q_proj.bias": w((130,)),
      "model.layers.0.mlp.up_proj.weight": w((200, 64), np.float16),
      "model.layers.0.mlp.down_proj.weight": w((64, 200), np.float32, scale=3.0),
      "model.layers.0.experts.w1": w((2, 40, 160)),
      "model.position_ids": np.arange(16, dtype=np.int64).reshape(1, 16),
      "model.temperature": np.array(0.7, np.float32),
      "model.norm.weight": w((64,), scale=1.0),
      "lm_head.weight": w((96, 64)),
  }


DEFAULT_QUANTIZED = {
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.experts.w1",
}


def save(path: str, tensors: dict[str, np.ndarray]) -> None:
  from safetensors.torch import save_file
  save_file({k: from_numpy(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})


def load(path: str) -> dict:
  """Every tensor of a file, by the safetensors library's torch frontend."""
  from safetensors.torch import load_file
  return load_file(path)


def save_sharded(folder: str, tensors: dict[str, np.ndarray], shards: int = 2,
                 config: dict | None = None) -> str:
  """Shards with an index (and a config.json when given); returns the index path."""
  names = list(tensors)
  per = -(-len(names) // shards)
  weight_map = {}
  for i in range(shards):
    file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
    save(os.path.join(folder, file), part)
    weight_map.update(dict.fromkeys(part, file))
  index = os.path.join(folder, "model.safetensors.index.json")
  with open(index, "w") as f:
    json.dump({"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
               "weight_map": weight_map}, f)
  if config is not None:
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(config, f)
  return index


def listing(folder: str) -> dict[str, str]:
  """Every file under `folder` with its SHA-256 and mtime: to show nothing changed."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      p = os.path.join(root, name)
      with open(p, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(p, folder)] = f"{digest} {os.stat(p).st_mtime_ns}"
  return out


def contents(folder: str) -> dict[str, str]:
  """Every entry under `folder` (files by SHA-256, links by target): the same model or not."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      p = os.path.join(root, name)
      if os.path.islink(p):
        out[os.path.relpath(p, folder)] = "-> " + os.readlink(p)
      elif os.path.isfile(p):
        with open(p, "rb") as f:
          out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def raw_file(path, header: dict | bytes, data: bytes = b"") -> None:
  """A safetensors file with exactly this header (JSON-encoded unless bytes) and data."""
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + data)


def expect_bad(capsys, argv, message: str, *folders) -> str:
  """`fp8jax ARGV` exits 2 with one line on stderr holding `message`; `folders` unchanged."""
  from fp8jax import cli
  before = [listing(str(f)) for f in folders]
  assert cli.main(argv) == 2
  captured = capsys.readouterr()
  err = captured.err
  assert err.count("\n") == 1 and err.startswith("fp8jax: error: "), err
  assert message in err, err
  assert captured.out == "", captured.out
  assert [listing(str(f)) for f in folders] == before
  return err
