"""FP8 training recipes as values: how each GEMM of a layer quantizes its operands.

A dense layer's training step runs three GEMMs. With the input `x` laid out
`[rows, k]`, the weight `w` as `[n, k]` and the output gradient `g` as
`[rows, n]`:

| GEMM | product | contraction | operands |
| --- | --- | --- | --- |
| forward | `y = x wᵀ` | k | input, weight |
| dgrad (input gradient) | `dx = g w` | n | grad, weight |
| wgrad (weight gradient) | `dw = gᵀ x` | rows | grad, input |

A recipe gives each role (input, weight, grad) one `Cast`, whose `QuantSpec`
is written for the operand laid out with the GEMM's contraction last:
`Axis(-1)` is one scale per row of the contraction, `Block((128,))` one per
128 contracted values, `Block((128, 128))` a tile, `MX()` and `NVFP4(...)`
blocks along the contraction. So a role is quantized once per GEMM it takes
part in, along that GEMM's contraction, as DeepSeek-V3, torchao and
TransformerEngine do. A per-tensor cast gives the same codes in every GEMM.

The presets (`RECIPES`, by name):

| name | input | weight | grad | as in |
| --- | --- | --- | --- | --- |
| delayed | e4m3fn, tensor, delayed | e4m3fn, tensor, delayed | e5m2, tensor, delayed | Flax fp8_ops, TransformerEngine DelayedScaling |
| current | e4m3fn, tensor | e4m3fn, tensor | e5m2, tensor | TransformerEngine Float8CurrentScaling, torchao tensorwise |
| rowwise | e4m3fn, row, pow2 | e4m3fn, row, pow2 | e4m3fn, row, pow2 | torchao rowwise |
| blockwise | e4m3fn, 1x128 | e4m3fn, 128x128 | e4m3fn, 1x128 | DeepSeek-V3 |
| mxfp8 | e4m3fn, MX rceil | e4m3fn, MX rceil | e4m3fn, MX rceil | TransformerEngine MXFP8BlockScaling |
| nvfp4 | e2m1fn, 1x16 | e2m1fn, 16x16 | e2m1fn, 1x16, stochastic | TransformerEngine NVFP4BlockScaling (with its random Hadamard transform of the wgrad inputs) |
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from fp8jax.core.formats import FormatLike
from fp8jax.quant.delayed import DelayedScaling, DelayedState
from fp8jax.quant.spec import MX, NVFP4, Axis, Block, QuantSpec, Tensor

GEMMS = ("forward", "dgrad", "wgrad")
ROLES = ("input", "weight", "grad")
_BLOCK_SCALED = (Block.kind, MX.kind, NVFP4.kind)


class Fp8DotState(NamedTuple):
  """Delayed-scaling state of one `fp8_dot_general` call site (a pytree).

  A role the recipe does not scale with delayed scaling holds None.

  Attributes:
    lhs: state of the left operand's scale (the input of a Dense layer).
    rhs: state of the right operand's scale (the weight).
    grad: state of the output gradient's scale.
  """

  lhs: DelayedState | None
  rhs: DelayedState | None
  grad: DelayedState | None


@dataclasses.dataclass(frozen=True)
class Cast:
  """How one role's operand is quantized, laid out with the GEMM's contraction last.

  Attributes:
    spec: a `QuantSpec` whose granularity is `Tensor()`, `Axis(-1)`,
      `Block((b,))`, `Block((b, c))`, `MX(axis=-1, ...)` or `NVFP4(..., axis=-1)`;
      or an element format, for one current scale per tensor.
    delayed: a `DelayedScaling` rule for per-tensor scales taken from earlier
      steps' amaxes (the state `fp8_dot_state` makes); None scales each
      tensor from its own values ("current scaling").

  Example:
    >>> Cast(QuantSpec("e4m3fn", Block((128,)))).spec.scale_shape((2, 4, 256))
    (2, 4, 2)
  """

  spec: QuantSpec | FormatLike = "e4m3fn"
  delayed: DelayedScaling | None = None

  def __post_init__(self):
    spec = self.spec if isinstance(self.spec, QuantSpec) else QuantSpec(self.spec)
    object.__setattr__(self, "spec", spec)
    g = spec.granularity
    along_last = {
        Tensor.kind: True,
        Axis.kind: getattr(g, "axis", None) == -1,
        Block.kind: getattr(g, "axes", None) in (None, (-1,), (-2, -1)),
        MX.kind: getattr(g, "axis", None) == -1,
        NVFP4.kind: getattr(g, "axis", None) == -1 and not getattr(g, "stacked", False),
    }.get(spec.kind, False)
    if not along_last:
      raise ValueError("a Cast's spec is laid out with the contraction last: Tensor(), Axis(-1), "
                       "Block(sizes), MX(axis=-1) or NVFP4(rule, axis=-1), not stacked "
                       f"(got {spec.granularity})")
    if spec.pack:
      raise ValueError("a Cast's operands go straight into the GEMM; pack does not apply")
    if self.delayed is not None:
      if not isinstance(self.delayed, DelayedScaling):
        raise TypeError(f"delayed must be a DelayedScaling or None "
                        f"(got {type(self.delayed).__name__})")
      if spec.kind != Tensor.kind or spec.pow2 or spec.margin:
        raise ValueError("delayed scaling is per tensor with the DelayedScaling's margin: the "
                         f"spec must be QuantSpec(format, Tensor()) (got {spec})")

  def check(self, role: str) -> None:
    """Raises if this cast's format cannot hold `role`'s values as scaled."""
    f = self.spec.format
    if f.bits < 8 and self.spec.kind not in _BLOCK_SCALED:
      raise ValueError(f"{role}: {f.name} has {f.bits} bits and needs block scaling (block, "
                       f"mx or nvfp4), not one scale per {self.spec.kind}")


@dataclasses.dataclass(frozen=True)
class Fp8Recipe:
  """What `fp8_dot_general` does: one `Cast` per role and the choices per GEMM.

  The left operand of `fp8_dot_general` is the input and the right one the
  weight, as in a Dense layer (`x @ kernel`).

  Attributes:
    input: the cast of the layer's input (forward and wgrad).
    weight: the cast of the weight (forward and dgrad).
    grad: the cast of the output gradient (dgrad and wgrad).
    high_precision: GEMMs computed on the unquantized operands (in their
      dtype, float32 accumulation), a subset of "forward", "dgrad", "wgrad"
      (torchao's rowwise_with_gw_hp keeps "wgrad" there).
    hadamard: multiply the wgrad GEMM's two operands along its contraction
      by the same random 16x16 Hadamard matrix before quantizing
      (TransformerEngine's NVFP4 recipe): an orthogonal transform, so the
      exact product is unchanged, which spreads outliers over their block.
    hadamard_seed: seed of the transform's random signs (fixed per recipe).
    name: the preset's name, or "custom".

  Example:
    >>> RECIPES["blockwise"].weight.spec.granularity
    Block(sizes=(128, 128), axes=None)
    >>> Fp8Recipe().needs_state
    True
  """

  input: Cast = Cast("e4m3fn", DelayedScaling())
  weight: Cast = Cast("e4m3fn", DelayedScaling())
  grad: Cast = Cast("e5m2", DelayedScaling())
  high_precision: tuple[str, ...] = ()
  hadamard: bool = False
  hadamard_seed: int = 0
  name: str = "custom"

  def __post_init__(self):
    for role in ROLES:
      cast = getattr(self, role)
      if not isinstance(cast, Cast):
        raise TypeError(f"{role} must be a Cast (got {type(cast).__name__})")
      cast.check(role)
    hp = (self.high_precision,) if isinstance(self.high_precision, str) else self.high_precision
    hp = tuple(hp)
    unknown = [g for g in hp if g not in GEMMS]
    if unknown:
      raise ValueError(f"high_precision names GEMMs among {', '.join(GEMMS)} (got {unknown})")
    object.__setattr__(self, "high_precision", tuple(g for g in GEMMS if g in hp))
    object.__setattr__(self, "hadamard", bool(self.hadamard))
    object.__setattr__(self, "hadamard_seed", int(self.hadamard_seed))

  @classmethod
  def delayed_per_tensor(cls, scaling: DelayedScaling | None = None,
                         forward: FormatLike = "e4m3fn", backward: FormatLike = "e5m2",
                         overflow: str = "saturate") -> Fp8Recipe:
    """Delayed per-tensor scaling: `forward` for input and weight, `backward` for the gradient.

    Args:
      scaling: the `DelayedScaling` rule (history, margin, amax_from) of all
        three; default `DelayedScaling()`.
      forward: format of the input and weight (a signed 8-bit format).
      backward: format of the output gradient.
      overflow: what values beyond a delayed scale's range become.

    Returns:
      The recipe; with the defaults, `RECIPES["delayed"]`.
    """
    scaling = DelayedScaling() if scaling is None else scaling

    def cast(fmt, role):
      spec = QuantSpec(fmt, overflow=overflow)
      if spec.format.bits != 8:
        raise ValueError(f"{role} must be a signed 8-bit format (got {spec.format.name!r})")
      return Cast(spec, scaling)

    name = "delayed" if (scaling, forward, backward, overflow) == (
        DelayedScaling(), "e4m3fn", "e5m2", "saturate") else "custom"
    return cls(cast(forward, "forward"), cast(forward, "forward"), cast(backward, "backward"),
               name=name)

  @property
  def casts(self) -> dict[str, Cast]:
    """The role → `Cast` table."""
    return {role: getattr(self, role) for role in ROLES}

  @property
  def needs_state(self) -> bool:
    """Whether some role is scaled with delayed scaling (and so needs a state)."""
    return any(c.delayed is not None for c in self.casts.values())

  @property
  def needs_key(self) -> bool:
    """Whether some role is rounded stochastically (and so needs a key)."""
    return any(c.spec.rounding == "stochastic" for c in self.casts.values())

  def init(self, scale: float = 1.0) -> Fp8DotState | None:
    """A fresh state for one call site: None if no role is delayed; see `fp8_dot_state`."""
    if not self.needs_state:
      return None
    return Fp8DotState(*(None if c.delayed is None else c.delayed.init(scale)
                         for c in (self.input, self.weight, self.grad)))


def _preset(name: str, input: Cast, weight: Cast, grad: Cast, **kw) -> Fp8Recipe:
  return Fp8Recipe(input, weight, grad, name=name, **kw)


def _all(spec: QuantSpec) -> tuple[Cast, Cast, Cast]:
  return Cast(spec), Cast(spec), Cast(spec)


RECIPES: dict[str, Fp8Recipe] = {
    "delayed": Fp8Recipe.delayed_per_tensor(),
    "current": _preset("current", Cast("e4m3fn"), Cast("e4m3fn"), Cast("e5m2")),
    "rowwise": _preset("rowwise", *_all(QuantSpec("e4m3fn", Axis(-1), pow2=True))),
    "blockwise": _preset("blockwise", Cast(QuantSpec("e4m3fn", Block((128,)))),
                         Cast(QuantSpec("e4m3fn", Block((128, 128)))),
                         Cast(QuantSpec("e4m3fn", Block((128,))))),
    "mxfp8": _preset("mxfp8", *_all(QuantSpec("e4m3fn", MX(rule="rceil")))),
    "nvfp4": _preset("nvfp4", Cast(QuantSpec("e2m1fn", NVFP4("te"))),
                     Cast(QuantSpec("e2m1fn", NVFP4("te", block=(16, 16)))),
                     Cast(QuantSpec("e2m1fn", NVFP4("te"), rounding="stochastic")),
                     hadamard=True),
}
"""The named recipes (see the module docstring's table)."""


def get_recipe(recipe: Any) -> Fp8Recipe:
  """An `Fp8Recipe`, or the preset of that name.

  Example:
    >>> get_recipe("mxfp8").input.spec.granularity
    MX(axis=-1, rule='rceil')
  """
  if isinstance(recipe, Fp8Recipe):
    return recipe
  if isinstance(recipe, str):
    if recipe not in RECIPES:
      raise ValueError(f"unknown recipe {recipe!r}; the named recipes are "
                       f"{', '.join(RECIPES)}")
    return RECIPES[recipe]
  raise TypeError(f"recipe must be an Fp8Recipe or one of {', '.join(RECIPES)} "
                  f"(got {type(recipe).__name__})")
