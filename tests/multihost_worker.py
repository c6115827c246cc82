"""One of two JAX processes (4 host devices each, one global 8-device mesh).

Usage: multihost_worker.py PORT PROCESS_ID OUT_DIR. Process 0 writes the
gathered bits and scales of each layout to OUT_DIR/<layout>.npz.
"""

from __future__ import annotations

import os
import sys

import numpy as np

LAYOUTS = {
    "tensor": dict(scaling="tensor"),
    "block128": dict(scaling="block", block_size=128),
    "tile64x128": dict(scaling="block", block_size=(64, 128)),
}


def data() -> np.ndarray:
  import ml_dtypes
  rng = np.random.default_rng(1)
  return (rng.standard_normal((512, 1024)) * 30).astype(ml_dtypes.bfloat16)


def main() -> None:
  port, pid, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  import jax
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception as e:
    print(f"CPU collectives are not available: {e}")
    sys.exit(3)
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                             initialization_timeout=120)
  from jax.experimental import multihost_utils
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  import fp8jax

  assert jax.device_count() == 8 and jax.local_device_count() == 4
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  full = data()
  sharding = NamedSharding(mesh, P("a", "b"))
  x = jax.make_array_from_callback(full.shape, sharding, lambda idx: jnp.asarray(full[idx]))
  for name, kwargs in LAYOUTS.items():
    q = jax.jit(lambda a, kwargs=kwargs: fp8jax.quantize(a, "e4m3fn", **kwargs))(x)
    bits = multihost_utils.process_allgather(q.bits, tiled=True)
    scale = multihost_utils.process_allgather(q.scale, tiled=True)
    if pid == 0:
      tmp = os.path.join(out_dir, f".{name}.npz")
      np.savez(tmp, bits=np.asarray(bits), scale=np.asarray(scale))
      os.replace(tmp, os.path.join(out_dir, f"{name}.npz"))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
