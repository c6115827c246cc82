"""Section c: sharded inputs on the device(s) under test give the unsharded CPU bits.

A one-axis `Mesh` over the devices of the backend under test (one GPU on the target
machine), the input placed with a `NamedSharding` split along rows, and quantize per
tensor, per axis and in 1x128 blocks (plus a plain encode and a `shard_map` per-tensor
quantize with `axis_name`) under `jax.jit`. The codes and scales must equal the
unsharded result on the CPU backend.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from benchmarks.gpu.common import Budget, Context, bits, run_check, summarize
import fp8jax

CASES = {
    "encode e4m3fn": lambda w: fp8jax.encode(w, "e4m3fn"),
    "quantize tensor": lambda w: fp8jax.quantize(w, "e4m3fn", scaling="tensor"),
    "quantize axis": lambda w: fp8jax.quantize(w, "e4m3fn", scaling="axis"),
    "quantize axis0": lambda w: fp8jax.quantize(w, "e5m2", scaling="axis", axis=0),
    "quantize block 1x128": lambda w: fp8jax.quantize(w, "e4m3fn", scaling="block",
                                                      block_size=128),
}


def mesh_of(ctx: Context) -> Mesh:
  """A one-axis mesh over every device of the backend under test."""
  devices = [d for d in jax.devices(ctx.device.platform)]
  return Mesh(np.array(devices), ("x",))


def compare_leaves(got: Any, want: Any) -> tuple[bool, int]:
  """Bit equality of two pytrees' leaves, and how many elements were compared."""
  g, w = jax.tree.leaves(got), jax.tree.leaves(want)
  same = len(g) == len(w) and all(
      np.asarray(a).shape == np.asarray(b).shape and np.array_equal(bits(a), bits(b))
      for a, b in zip(g, w, strict=True))
  return same, int(sum(np.size(a) for a in g))


def sharded_case(name: str, ctx: Context, w: np.ndarray) -> dict[str, Any]:
  """One case: jit on the sharded input vs jit on the unsharded CPU input."""
  mesh = mesh_of(ctx)
  sharding = NamedSharding(mesh, P("x", None))
  fn = jax.jit(CASES[name])
  got = fn(jax.device_put(w, sharding))
  want = fn(jax.device_put(w, ctx.cpu))
  same, n = compare_leaves(got, want)
  codes = jax.tree.leaves(got)[0]
  return {"ok": same, "compared": n, "mesh_devices": mesh.devices.size,
          "codes_sharding": str(codes.sharding), "codes_keep_input_sharding":
          codes.sharding.is_equivalent_to(sharding, codes.ndim)}


def shard_map_case(ctx: Context, w: np.ndarray) -> dict[str, Any]:
  """Per-tensor quantize inside shard_map with axis_name: one amax over the mesh."""
  mesh = mesh_of(ctx)
  per_shard = jax.shard_map(lambda s: fp8jax.quantize(s, "e4m3fn", axis_name="x").bits,
                            mesh=mesh, in_specs=P("x"), out_specs=P("x"))
  got = jax.jit(per_shard)(jax.device_put(w, NamedSharding(mesh, P("x", None))))
  want = jax.jit(lambda v: fp8jax.quantize(v, "e4m3fn").bits)(jax.device_put(w, ctx.cpu))
  same, n = compare_leaves(got, want)
  return {"ok": same, "compared": n}


def run(ctx: Context) -> dict[str, Any]:
  """Section c."""
  budget = Budget(30, ctx)
  rng = np.random.default_rng(3)
  w = (rng.standard_normal((512, 384)) * np.exp2(rng.integers(-6, 7, (1, 384)))).astype(
      jnp.bfloat16)
  checks = [run_check(f"sharded {name} = unsharded CPU", lambda n=name: sharded_case(n, ctx, w),
                      budget) for name in CASES]
  checks.append(run_check("shard_map quantize tensor (axis_name) = unsharded CPU",
                          lambda: shard_map_case(ctx, w), budget))
  result = summarize(checks)
  result["devices"] = [str(d) for d in jax.devices(ctx.device.platform)]
  return result
