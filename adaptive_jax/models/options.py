"""What a decision unit computes under each option of an option plan (docs/architecture.md).

A menu (`UnitOptions`) names its options and says how a residual block runs each one. Option 0
is always the skip: the block outputs its shortcut. Executors (`adaptive_jax.execution`) take a
menu and an option plan; they never look inside a block themselves:

- `apply(block, x, option, shortcut)`: the block's output under `option` (a static Python int
  >= 1), given its shortcut output on the same rows, so an executor that runs a block on some
  rows computes a transition block's projection once.
- `bits(option)`: the (weight, activation) bitwidths the option computes at, for BitOPs
  (`cost`); 32 x 32 for a float option.

`RUN_OR_SKIP` is the menu of a block plan. `InnerWidths` is the toy that shows the seam: a block
run at a fraction of its inner width (`BasicBlock.residual_at`), real smaller convolutions.
DFS's bitwidths and ACS's channel groups are further menus of the same shape.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from adaptive_jax.models.resnet import BasicBlock


class UnitOptions:
    """A menu: `names` (option 0 = "skip"), `apply`, `bits`. Frozen dataclasses, so hashable."""

    names: tuple[str, ...]

    @property
    def num_options(self) -> int:
        return len(self.names)

    def apply(self, block: BasicBlock, x: jax.Array, option: int, shortcut: jax.Array) -> jax.Array:
        raise NotImplementedError

    def bits(self, option: int) -> tuple[int, int]:
        return (32, 32)

    def blend(self, block: BasicBlock, x: jax.Array, weights: jax.Array) -> jax.Array:
        """shortcut + sum over options k >= 1 of weights[..., k] * (option k's output - shortcut):
        every option runs on every row, mixed by per-row weights (one-hot, or soft in [0, 1]).
        Dense and differentiable: the masked executor's path and per-block gates' training path
        (with two options: shortcut + gate * (block output - shortcut))."""
        shortcut = block.shortcut(x)
        out = shortcut
        for k in range(1, self.num_options):
            w = weights[..., k].astype(x.dtype)
            w = w.reshape(w.shape + (1,) * (x.ndim - w.ndim))
            out = out + w * (self.apply(block, x, k, shortcut) - shortcut)
        return out


@dataclasses.dataclass(frozen=True)
class RunOrSkip(UnitOptions):
    """The block plan's menu: skip (the shortcut) or run the whole block."""

    names: tuple[str, ...] = ("skip", "run")

    def apply(self, block, x, option, shortcut):
        return nnx.relu(shortcut + block.residual(x))


@dataclasses.dataclass(frozen=True)
class InnerWidths(UnitOptions):
    """Skip, or run the block on a fraction of its inner channels (conv1's outputs, conv2's
    inputs), for each fraction in `fractions` (increasing, the last 1.0: the full block)."""

    fractions: tuple[float, ...] = (0.5, 1.0)

    def __post_init__(self):
        fractions = tuple(float(f) for f in self.fractions)
        if not fractions or fractions[-1] != 1.0 or any(
                not a < b for a, b in zip((0.0,) + fractions, fractions)):
            raise ValueError(f"inner-width fractions must increase within (0, 1] and end at 1.0, "
                             f"got {self.fractions}")
        object.__setattr__(self, "fractions", fractions)

    @property
    def names(self) -> tuple[str, ...]:
        return ("skip",) + tuple(f"width {f:g}" for f in self.fractions)

    def channels(self, block: BasicBlock, option: int) -> int:
        return max(1, math.ceil(self.fractions[option - 1] * block.out_channels - 1e-9))

    def apply(self, block, x, option, shortcut):
        return nnx.relu(shortcut + block.residual_at(x, self.channels(block, option)))


RUN_OR_SKIP = RunOrSkip()
