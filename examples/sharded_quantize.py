"""Quantizes a sharded weight on an 8-device mesh; the same program runs on 1 device.

Usage:
  python examples/sharded_quantize.py          # 8 host devices
  python examples/sharded_quantize.py 1        # 1 device: same bits
"""

from __future__ import annotations

import os
import sys

DEVICES = int(sys.argv[1]) if len(sys.argv) > 1 else 8
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={DEVICES}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import (  # noqa: E402
  NamedSharding,
  PartitionSpec as P,
)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fp8jax  # noqa: E402


def main() -> None:
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("model",))
  w = jax.random.normal(jax.random.key(0), (1024, 4096), jnp.bfloat16)
  w = jax.device_put(w, NamedSharding(mesh, P(None, "model")))  # split the columns

  quantize = jax.jit(lambda w: fp8jax.quantize(w, "e4m3fn", scaling="block",
                                               block_size=(128, 128)))
  q = quantize(w)
  print(f"{n} device(s): bits {q.bits.shape} sharded {q.bits.sharding.spec}, "
        f"scale {q.scale.shape} sharded {q.scale.sharding.spec}")
  print("checksum of the codes:", int(np.asarray(q.bits, np.uint64).sum()))
  w_hat = jax.jit(fp8jax.dequantize)(q)
  err = jnp.abs(w_hat.astype(jnp.float32) - w.astype(jnp.float32)).max()
  print("largest error:", float(err))


if __name__ == "__main__":
  main()
