"""Flax modules that train in FP8 with fp8jax's recipes: `linen` and `nnx`.

Each subpackage keeps the recipe's scaling state where its framework keeps
variables, so a training loop written for Flax's own FP8 ops works as it is:

- `fp8jax.flax.linen`: `Fp8DotGeneral` for `nn.Dense(dot_general_cls=...)` and
  `nn.DenseGeneral`, `Fp8Einsum` and `Einsum`; state in the variable collection
  `OVERWRITE_WITH_GRADIENT`, the same as `flax.linen.fp8_ops`.
- `fp8jax.flax.nnx`: `Fp8DotGeneral` for `nnx.Linear(dot_general=...)` and
  `nnx.LinearGeneral`, `Fp8Einsum` for `nnx.Einsum(einsum_op=...)`; state in
  `Fp8State` variables.

Both need flax (`pip install flax`); `import fp8jax` never imports it.
"""

RNG = "fp8"
"""The rng stream stochastic rounding draws its keys from, in both frameworks."""
STATE_NAMES = {"lhs": "input", "rhs": "kernel", "grad": "output_grad"}
"""Each `Fp8DotState` field's variable prefix (`input_amax_history`, `input_scale`, ...),
named as `flax.linen.fp8_ops` names its own."""
