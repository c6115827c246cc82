"""Trains a small byte-level language model in bf16 and in several FP8 recipes and compares them.

The corpus is text every Python installation has offline: the running
interpreter's own standard-library sources (`*.py` under
`sysconfig.get_paths()["stdlib"]`, without site-packages, dist-packages and
the test, tests, idlelib and lib2to3 folders), in order of relative path. A
file is held out when the CRC-32 of its relative path is 0 mod 20; the rest is
training text. Both parts are capped so that loading takes a moment.

The model is a decoder-only transformer over bytes (vocabulary 256) in Flax
linen: learned positions, pre-norm blocks (LayerNorm, causal self-attention,
GELU MLP 4x), bfloat16 compute, float32 parameters, AdamW with warmup and
cosine decay. The runs ("modes") differ only in the `dot_general_cls` of the
four Dense layers of each block (qkv, attention output, MLP up, MLP down):

- bf16: none, plain bfloat16 matmuls;
- flax: Flax's own FP8 ops, `flax.linen.fp8_ops.Fp8DirectDotGeneralOp` (its
  defaults: per-tensor delayed scaling, amax history 1024), the peer;
- delayed, current, rowwise, blockwise, mxfp8, nvfp4: fp8jax's recipes, through
  `fp8jax.flax.linen.Fp8DotGeneral(recipe=name)`.

The token embedding and the output head stay in bfloat16 in every run, as is
usual in FP8 training: they are a small share of the FLOPs and the most
sensitive to rounding. Recipe state (amax histories and scales) lives in the
variable collection "_overwrite_with_gradient": every step differentiates with
respect to it as well as the parameters and replaces it with its "gradient",
which is how these ops hand over the next state. Stochastic rounding draws
from the rng stream "fp8", given a fresh key every step.

Each mode trains from the same seeds (a seed fixes the initial weights, the
batch order and the rounding keys), so runs of the same seed are paired
across modes. It measures the held-out loss (nats per byte, in the run's own
arithmetic, on a fixed set of held-out windows) along the way and at the end,
and the median step time after compilation. `check` lists where an FP8 mode's
mean final loss is not within the bf16 seed spread or is worse than Flax's FP8
ops. Writes `train_lm.json` and (with matplotlib) `train_lm.png`.

Default size: 300 steps of 16 windows of 64 bytes (300k tokens), which
takes held-out loss from about 5.9 to about 2.2 nats per byte. On a 2-core
CPU a bf16 step takes about 120 ms, so bf16's 3 seeds take 2 minutes, and
the whole default run (8 modes x 3 seeds) about half an hour where every FP8
mode's step is within 3x of bf16's; emulated block-scaled products can be
much slower than that.

Usage:
  python examples/train_lm.py [--modes bf16,flax,delayed] [--seeds 3] [--steps 300]
      [--quick] [--out examples/results]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from typing import NamedTuple
import zlib

import flax
from flax import linen as nn
from flax.linen import fp8_ops
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STATE = fp8_ops.OVERWRITE_WITH_GRADIENT  # "_overwrite_with_gradient"
RECIPES = ("delayed", "current", "rowwise", "blockwise", "mxfp8", "nvfp4")
MODES = ("bf16", "flax", *RECIPES)
SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}
VOCAB = 256


class Config(NamedTuple):
  """Model size, training budget (steps x batch x seq tokens) and evaluation."""

  layers: int = 4
  width: int = 256
  heads: int = 4
  seq: int = 64
  batch: int = 16
  steps: int = 300
  lr: float = 2e-3
  warmup: float = 0.1  # share of the steps
  decay: float = 0.1
  eval_every: int = 50
  eval_windows: int = 64
  train_bytes: int = 4 << 20
  held_bytes: int = 256 << 10


DEFAULT = Config()
# Small enough for a test; long and wide enough for the seed spread and the
# FP8 gaps to be about the model, not the noise of a few steps.
QUICK = Config(layers=2, width=64, heads=2, seq=64, batch=16, steps=150, lr=3e-3,
               eval_every=25, eval_windows=32, train_bytes=1 << 20, held_bytes=64 << 10)


# --- corpus ---------------------------------------------------------------------------------


def corpus(train_bytes: int, held_bytes: int) -> dict:
  """The standard library's sources split by path hash: train and held-out bytes, capped.

  Only as many files are read as the caps need; the order (relative path) and
  the split (CRC-32 of the path) do not depend on the caps, so a larger cap
  extends the same text.
  """
  root = sysconfig.get_paths()["stdlib"]
  paths = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in SKIP]
    paths += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith(".py")]
  paths.sort(key=lambda p: p.replace(os.sep, "/"))
  parts = {"train": [], "held": []}
  caps = {"train": train_bytes, "held": held_bytes}
  sizes = {"train": 0, "held": 0}
  counts = {"train": 0, "held": 0}
  for p in paths:
    part = "held" if zlib.crc32(p.replace(os.sep, "/").encode()) % 20 == 0 else "train"
    if sizes[part] >= caps[part]:
      if all(sizes[k] >= caps[k] for k in caps):
        break
      continue
    with open(os.path.join(root, p), "rb") as f:
      data = f.read()[:caps[part] - sizes[part]]
    parts[part].append(data)
    sizes[part] += len(data)
    counts[part] += 1
  train = np.frombuffer(b"".join(parts["train"]), np.uint8)
  held = np.frombuffer(b"".join(parts["held"]), np.uint8)
  info = {"root": root, "python": platform.python_version(), "files": len(paths),
          "train_files": counts["train"], "held_files": counts["held"],
          "train_bytes": int(train.size), "held_bytes": int(held.size)}
  return {"train": train, "held": held, "info": info}


def windows(text: np.ndarray, offsets: np.ndarray, seq: int) -> np.ndarray:
  """Rows of `seq + 1` bytes from `offsets`: inputs are [:-1], targets [1:]."""
  return text[offsets[:, None] + np.arange(seq + 1)].astype(np.int32)


def batches(text: np.ndarray, seed: int, config: Config):
  """The run's training batches, drawn uniformly from `text`, in an order fixed by `seed`."""
  rng = np.random.default_rng([seed, 1])
  for _ in range(config.steps):
    yield windows(text, rng.integers(0, text.size - config.seq - 1, config.batch), config.seq)


# --- model ----------------------------------------------------------------------------------


def dot_general_cls(mode: str):
  """The `dot_general_cls` of the blocks' Dense layers for `mode`."""
  if mode == "bf16":
    return None
  if mode == "flax":
    return fp8_ops.Fp8DirectDotGeneralOp
  if mode not in RECIPES:
    raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
  # Imported at use: the rest of the example runs without fp8jax's Flax module.
  linen = importlib.import_module("fp8jax.flax.linen")
  return functools.partial(linen.Fp8DotGeneral, recipe=mode)


class Block(nn.Module):
  """Pre-norm transformer block: causal self-attention, then a GELU MLP, each residual."""

  heads: int
  dot: object = None

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    dense = functools.partial(nn.Dense, dtype=jnp.bfloat16, dot_general_cls=self.dot)
    h = nn.LayerNorm(dtype=jnp.bfloat16)(x)
    qkv = dense(3 * d, name="qkv")(h).reshape(b, t, 3, self.heads, d // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(d // self.heads)
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -1e9)
    p = jax.nn.softmax(logits, axis=-1).astype(jnp.bfloat16)
    a = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, t, d)
    x = x + dense(d, name="out")(a)
    h = nn.LayerNorm(dtype=jnp.bfloat16)(x)
    h = nn.gelu(dense(4 * d, name="up")(h))
    return x + dense(d, name="down")(h)


class LM(nn.Module):
  """Byte-level decoder-only transformer; embedding and head in bf16 whatever `dot` is."""

  layers: int
  width: int
  heads: int
  seq: int
  dot: object = None

  @nn.compact
  def __call__(self, tokens):
    init = nn.initializers.normal(0.02)
    x = nn.Embed(VOCAB, self.width, embedding_init=init, dtype=jnp.bfloat16)(tokens)
    pos = self.param("pos", init, (self.seq, self.width))
    x = x + pos[:tokens.shape[1]].astype(jnp.bfloat16)
    for i in range(self.layers):
      x = Block(self.heads, self.dot, name=f"block{i}")(x)
    x = nn.LayerNorm(dtype=jnp.bfloat16)(x)
    return nn.Dense(VOCAB, dtype=jnp.bfloat16, name="head")(x).astype(jnp.float32)


def model(mode: str, config: Config) -> LM:
  """The LM of `config`'s size, its blocks' matmuls in `mode`'s arithmetic."""
  return LM(config.layers, config.width, config.heads, config.seq, dot_general_cls(mode))


def optimizer(config: Config):
  """AdamW, linear warmup then cosine decay to 10%; no decay on biases, norms and positions."""
  warmup = max(1, round(config.warmup * config.steps))
  lr = optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, max(config.steps, warmup + 1),
                                          config.lr * 0.1)
  mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim == 2, params)
  return optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=config.decay, mask=mask)


# --- training -------------------------------------------------------------------------------


def _loss(net, params, state, rest, batch, key):
  variables = {"params": params, **rest, **({STATE: state} if state else {})}
  logits = net.apply(variables, batch[:, :-1], rngs={"fp8": key})
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


class Run(NamedTuple):
  """The compiled functions of one mode, shared by its seeds (same shapes: one compilation)."""

  init: object
  step: object
  evaluate: object


def compile_mode(mode: str, config: Config) -> Run:
  """Jitted init, train step and held-out loss for `mode` (compiled at first call)."""
  net, opt = model(mode, config), optimizer(config)

  @jax.jit
  def init(key):
    k1, k2 = jax.random.split(key)
    variables = net.init({"params": k1, "fp8": k2}, jnp.zeros((1, config.seq), jnp.int32))
    variables = dict(variables)
    params, state = variables.pop("params"), variables.pop(STATE, {})
    return params, state, variables, opt.init(params)

  @jax.jit
  def step(params, state, rest, opt_state, batch, key):
    # Differentiating w.r.t. the recipe state gives its next value, not a derivative.
    loss, (grads, state) = jax.value_and_grad(
        functools.partial(_loss, net), argnums=(0, 1))(params, state, rest, batch, key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  @jax.jit
  def evaluate(params, state, rest, held, key):
    return _loss(net, params, state, rest, held, key)

  return Run(init, step, evaluate)


def train(run: Run, text: np.ndarray, held: np.ndarray, seed: int, config: Config) -> dict:
  """One seed of one mode: held-out curve, final loss and the time of every step."""
  key = jax.random.key(seed)
  params, state, rest, opt_state = run.init(jax.random.fold_in(key, 0))
  eval_key = jax.random.fold_in(key, 2)
  curve, times, steps, eval_times = [], [], [], []

  def evaluate(t):
    start = time.perf_counter()
    steps.append(t)
    curve.append(float(run.evaluate(params, state, rest, held, eval_key)))
    eval_times.append(time.perf_counter() - start)

  evaluate(0)
  for t, batch in enumerate(batches(text, seed, config), 1):
    start = time.perf_counter()
    params, state, opt_state, loss = run.step(
        params, state, rest, opt_state, batch, jax.random.fold_in(jax.random.fold_in(key, 1), t))
    loss.block_until_ready()
    times.append(time.perf_counter() - start)
    if t % config.eval_every == 0 or t == config.steps:
      evaluate(t)
  return {"steps": steps, "curve": curve, "final": curve[-1], "times": times,
          "eval_times": eval_times}


def steady(times: list) -> float:
  """Median step time after compilation (the first steps compile or warm up)."""
  return float(np.median(times[min(5, len(times) - 1):]))


def _stats(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def check(result: dict) -> list[str]:
  """Where an FP8 mode misses the bar (none: it passes), also printed.

  Every FP8 mode's mean final loss is within 2 sd of bf16's (sample sd of the
  bf16 seeds' finals), or within 1% of bf16's mean where that is wider; every
  fp8jax recipe's mean final is no worse than the Flax peer's mean plus 2 sd
  of the Flax seeds (or 1% of its mean where that is wider).
  """
  finals = result["final"]
  failures = []
  if "bf16" in finals:
    m, s = _stats(finals["bf16"])
    band = max(2 * s, 0.01 * m)
    for mode in finals:
      if mode != "bf16" and abs(_stats(finals[mode])[0] - m) > band:
        failures.append(f"{mode}: mean final {_stats(finals[mode])[0]:.4f} is not within "
                        f"{band:.4f} of bf16's {m:.4f}")
  if "flax" in finals:
    m, s = _stats(finals["flax"])
    bar = m + max(2 * s, 0.01 * m)
    for mode in finals:
      if mode in RECIPES and _stats(finals[mode])[0] > bar:
        failures.append(f"{mode}: mean final {_stats(finals[mode])[0]:.4f} is worse than "
                        f"Flax fp8_ops' {m:.4f} (bar {bar:.4f})")
  for f in failures:
    print("CHECK FAILED:", f)
  if not failures:
    print("check: passed")
  return failures


def _plot(result: dict, path: str) -> bool:
  try:
    import matplotlib
  except ImportError:
    print("matplotlib is not installed: no plot written (pip install -e '.[plot]' or "
          "pip install matplotlib)")
    return False
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, gap) = plt.subplots(1, 2, figsize=(11, 4.5))
  base = np.mean(result["curves"]["bf16"], axis=0) if "bf16" in result["curves"] else None
  for mode, curves in result["curves"].items():
    mean = np.mean(curves, axis=0)
    ax.plot(result["steps"], mean, label=mode, marker="o", markersize=2)
    if base is not None:
      gap.plot(result["steps"][1:], (mean - base)[1:], label=mode, marker="o", markersize=2)
  ax.set_xlabel("step")
  ax.set_ylabel("held-out loss (nats/byte)")
  ax.set_title(f"byte LM on the Python {result['corpus']['python']} stdlib: "
               f"mean of {len(result['seeds'])} seeds", fontsize=9)
  ax.legend(ncol=2, fontsize=8)
  gap.axhline(0.0, color="black", linewidth=0.5)
  gap.set_xlabel("step")
  gap.set_ylabel("mean loss − bf16's (nats/byte)")
  gap.set_title("gap to bf16 (paired seeds)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="a tiny configuration, for tests")
  for name in ("steps", "batch", "seq", "layers", "width"):
    parser.add_argument(f"--{name}", type=int)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  config = QUICK if args.quick else DEFAULT
  sizes = {k: getattr(args, k) for k in ("steps", "batch", "seq", "layers", "width")}
  config = config._replace(**{k: v for k, v in sizes.items() if v is not None})
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  for m in modes:
    dot_general_cls(m)  # fail before training on an unknown or unavailable mode
  seeds = list(range(args.seeds))

  data = corpus(config.train_bytes, config.held_bytes)
  held = data["held"]
  offsets = np.linspace(0, held.size - config.seq - 1, config.eval_windows).astype(np.int64)
  held = windows(held, offsets, config.seq)
  print(f"corpus: Python {data['info']['python']} stdlib, {data['info']['train_bytes']:,} "
        f"train bytes, {data['info']['held_bytes']:,} held-out bytes; {config}")

  result = {"config": config._asdict(), "modes": modes, "seeds": seeds, "corpus": data["info"],
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "versions": {"python": platform.python_version(), "jax": jax.__version__,
                         "flax": flax.__version__, "optax": optax.__version__},
            "curves": {}, "final": {}, "step_ms": {}, "first_step_s": {}, "first_eval_s": {},
            "seconds": {}}
  for mode in modes:
    start = time.perf_counter()
    run = compile_mode(mode, config)
    runs = [train(run, data["train"], held, s, config) for s in seeds]
    result["seconds"][mode] = time.perf_counter() - start
    result["steps"] = runs[0]["steps"]
    result["curves"][mode] = [r["curve"] for r in runs]
    result["final"][mode] = [r["final"] for r in runs]
    result["step_ms"][mode] = [1e3 * steady(r["times"]) for r in runs]
    # Per seed: only the first seed's first step and evaluation compile.
    result["first_step_s"][mode] = [r["times"][0] for r in runs]
    result["first_eval_s"][mode] = [r["eval_times"][0] for r in runs]
    m, s = _stats(result["final"][mode])
    print(f"{mode:>9}: final {m:.4f} ± {s:.4f}, step {np.median(result['step_ms'][mode]):.1f} ms,"
          f" {result['seconds'][mode]:.0f} s")

  base = np.median(result["step_ms"]["bf16"]) if "bf16" in modes else None
  result["step_ratio"] = {m: base and float(np.median(result["step_ms"][m]) / base)
                          for m in modes}
  print(f"\n{'mode':>9} {'final loss (nats/byte)':>24} {'step ms':>8} {'x bf16':>7}")
  for m in modes:
    mean, sd = _stats(result["final"][m])
    ratio = result["step_ratio"][m]
    print(f"{m:>9} {mean:>15.4f} ± {sd:.4f} {np.median(result['step_ms'][m]):>8.1f} "
          f"{'-' if ratio is None else f'{ratio:.2f}':>7}")
  result["check"] = check(result)

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "train_lm.json"), "w") as f:
    json.dump(result, f, indent=1)
  png = os.path.join(args.out, "train_lm.png")
  if _plot(result, png):
    print("plot:", png)
  return result


if __name__ == "__main__":
  main()
