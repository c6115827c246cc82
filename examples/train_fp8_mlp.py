"""Trains one MLP in bf16 and in FP8 on a synthetic regression task and compares the losses.

The task is a teacher-student regression: a fixed random teacher network
maps Gaussian inputs to 8 targets (plus a little noise), and a 3-layer
student MLP learns it with Adam. Both runs start from the same weights and
see the same batches; they differ only in their matmuls:

- bf16: operands rounded to bfloat16, `lax.dot_general` accumulating in float32;
- FP8: `fp8jax.fp8_dot_general` on the same bfloat16 operands: e4m3fn
  inputs and weights, e5m2 output gradients, per-tensor delayed scaling
  (amax history 16), one `Fp8DotState` per layer, updated through the
  gradient.

It prints the held-out loss of both runs along the way and the final gap, and
writes `train_fp8_mlp.json` and (with matplotlib) `train_fp8_mlp.png` to the
output folder. Runs in well under a minute on a 2-core CPU.

Usage:
  python examples/train_fp8_mlp.py [--steps 2000] [--seed 0] [--out examples/results]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fp8jax

IN, HIDDEN, OUT = 32, 256, 8
TEACHER_HIDDEN = 64
BATCH = 128
EVAL = 2048
LR = 2e-3
NOISE = 0.05
MATMUL = (((1,), (0,)), ((), ()))
MODES = ("bf16", "fp8")


class Config(NamedTuple):
  steps: int = 2000
  eval_every: int = 100


class Adam(NamedTuple):
  step: jax.Array
  m: Any
  v: Any


DEFAULT = Config()


def _adam_init(params) -> Adam:
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  return Adam(jnp.zeros((), jnp.int32), zeros, zeros)


def _adam_update(params, grads, opt: Adam, lr=LR, b1=0.9, b2=0.999, eps=1e-8):
  step = opt.step + 1
  m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, opt.m, grads)
  v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, opt.v, grads)
  t = step.astype(jnp.float32)
  scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
  params = jax.tree_util.tree_map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + eps),
                                  params, m, v)
  return params, Adam(step, m, v)


def _teacher(key):
  k1, k2 = jax.random.split(key)
  return (jax.random.normal(k1, (IN, TEACHER_HIDDEN)) / np.sqrt(IN),
          jax.random.normal(k2, (TEACHER_HIDDEN, OUT)) / np.sqrt(TEACHER_HIDDEN))


def _targets(teacher, x, key):
  w1, w2 = teacher
  y = jnp.tanh(x @ w1) @ w2 * 2.0
  return y + NOISE * jax.random.normal(key, y.shape)


def init_params(key):
  sizes = [(IN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, OUT)]
  keys = jax.random.split(key, len(sizes))
  return [{"w": jax.random.normal(k, s) * np.sqrt(2.0 / s[0]), "b": jnp.zeros((s[1],))}
          for k, s in zip(keys, sizes, strict=False)]


def _dot(mode: str, x, w, state):
  x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  if mode == "bf16":
    return lax.dot_general(x, w, MATMUL, preferred_element_type=jnp.float32)
  if mode == "fp8_current":  # evaluation only: FP8 forward without a state
    return fp8jax.fp8_dot_general(x, w, MATMUL, preferred_element_type=jnp.float32,
                                  recipe="current")
  return fp8jax.fp8_dot_general(x, w, MATMUL, preferred_element_type=jnp.float32, state=state)


def apply(mode: str, params, states, x):
  """The MLP: Dense-GELU-Dense-GELU-Dense, each matmul in the run's arithmetic."""
  for i, (layer, state) in enumerate(zip(params, states, strict=False)):
    x = _dot(mode, x, layer["w"], state) + layer["b"]
    if i < len(params) - 1:
      x = jax.nn.gelu(x)
  return x


def _loss(mode, params, states, x, y):
  return jnp.mean((apply(mode, params, states, x) - y) ** 2)


@functools.partial(jax.jit, static_argnames=("mode", "config"))
def train(seed: jax.Array, *, mode: str, config: Config = DEFAULT
          ) -> tuple[jax.Array, jax.Array]:
  """Trains from `seed` (initial weights and batches); returns the held-out loss curve and more.

  The teacher and the held-out set are the same for every seed. The curve
  has one entry before training and one after each `eval_every` steps. The
  second result is the final weights' held-out loss evaluated with bf16
  matmuls and with FP8 ones (current scaling), whichever way they were
  trained: it separates what FP8 training did to the weights from what the
  FP8 forward pass adds at evaluation.
  """
  data = jax.random.key(1234)
  teacher = _teacher(jax.random.fold_in(data, 0))
  x_eval = jax.random.normal(jax.random.fold_in(data, 1), (EVAL, IN))
  y_eval = _targets(teacher, x_eval, jax.random.fold_in(data, 2))
  key = jax.random.key(seed)
  params = init_params(jax.random.fold_in(key, 0))
  states = [fp8jax.fp8_dot_state() for _ in params]
  evaluate = functools.partial(_loss, mode, x=x_eval, y=y_eval)

  def step(carry, t):
    params, states, opt = carry
    k = jax.random.fold_in(jax.random.fold_in(key, 1), t)
    x = jax.random.normal(k, (BATCH, IN))
    y = _targets(teacher, x, jax.random.fold_in(k, 1))
    grads, states = jax.grad(_loss, argnums=(1, 2))(mode, params, states, x, y)
    params, opt = _adam_update(params, grads, opt)
    return (params, states, opt), None

  def chunk(carry, c):
    ts = c * config.eval_every + jnp.arange(config.eval_every)
    carry, _ = lax.scan(step, carry, ts)
    return carry, evaluate(carry[0], carry[1])

  carry = (params, states, _adam_init(params))
  chunks = config.steps // config.eval_every
  (final, final_states, _), curve = lax.scan(chunk, carry, jnp.arange(chunks))
  cross = jnp.stack([_loss(m, final, final_states, x_eval, y_eval)
                     for m in ("bf16", "fp8_current")])
  return jnp.concatenate([evaluate(params, states)[None], curve]), cross


def run(seeds, mode: str, config: Config = DEFAULT, *, cross: bool = False):
  """Loss curves, one row per seed (the seeds train side by side, vmapped).

  With `cross`, also each seed's final weights evaluated with bf16 and with
  FP8 matmuls (`train`'s second result), one row per seed.
  """
  curves, evals = jax.jit(jax.vmap(functools.partial(train, mode=mode, config=config)))(
      jnp.asarray(seeds, jnp.uint32))
  return (np.asarray(curves), np.asarray(evals)) if cross else np.asarray(curves)


def _plot(steps, curves: dict, path: str) -> bool:
  try:
    import matplotlib
  except ImportError:
    print("matplotlib is not installed: no plot written (pip install -e '.[plot]' or "
          "pip install matplotlib)")
    return False
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for mode, curve in curves.items():
    ax.plot(steps, curve, label=mode, marker="o", markersize=3)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("held-out MSE")
  ax.set_title("MLP regression: bf16 vs FP8 (e4m3fn fwd, e5m2 grads)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--eval-every", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  config = Config(args.steps, args.eval_every)
  curves, seconds, cross = {}, {}, {}
  for mode in MODES:
    start = time.perf_counter()
    c, e = run([args.seed], mode, config, cross=True)
    curves[mode], cross[mode] = c[0], {"bf16 forward": float(e[0, 0]),
                                       "fp8 forward": float(e[0, 1])}
    seconds[mode] = time.perf_counter() - start
  steps = np.arange(len(curves["bf16"])) * config.eval_every
  print(f"{'step':>6} {'bf16':>10} {'fp8':>10}")
  for i, s in enumerate(steps):
    print(f"{s:>6} {curves['bf16'][i]:>10.5f} {curves['fp8'][i]:>10.5f}")
  final = {m: float(c[-1]) for m, c in curves.items()}
  gap = final["fp8"] - final["bf16"]
  print(f"final held-out loss: bf16 {final['bf16']:.5f}, fp8 {final['fp8']:.5f}, "
        f"gap {gap:+.5f} ({gap / final['bf16']:+.1%})")
  print("final weights evaluated both ways (FP8 forward: current scaling):")
  for mode, e in cross.items():
    print(f"  trained {mode:>4}: bf16 forward {e['bf16 forward']:.5f}, "
          f"fp8 forward {e['fp8 forward']:.5f}")
  print(f"time (compile + train): bf16 {seconds['bf16']:.1f} s, fp8 {seconds['fp8']:.1f} s")
  result = {"steps": steps.tolist(), "seed": args.seed, "curves": {
      m: c.tolist() for m, c in curves.items()}, "final": final, "gap": gap, "cross": cross,
      "seconds": seconds, "backend": jax.default_backend()}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "train_fp8_mlp.json"), "w") as f:
    json.dump(result, f, indent=1)
  png = os.path.join(args.out, "train_fp8_mlp.png")
  if _plot(steps, curves, png):
    print("plot:", png)
  return result


if __name__ == "__main__":
  main()
