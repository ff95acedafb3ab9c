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
import jax.numpy as jnp
from flax import nnx

from adaptive_jax.models import quantized
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
ESTIMATORS = ("one_path", "two_path")  # Bitwidths' training estimators


@dataclasses.dataclass(frozen=True)
class Bitwidths(UnitOptions):
    """DFS's menu (docs/dfs.md): skip (0 bits), or run the block with weights and activations on
    a b-bit grid for each b in `widths` (increasing; 32 = the float block, no quantisation).

    A block is a `models.quantized.QuantizedBlock` (the backbone's block and its activation
    ranges, as `QuantizedResNet` walks them); a bare `BasicBlock` quantises each conv's input over
    its own max (pricing). `per_bitwidth_ranges=False` is the reference's one range per conv for
    every bitwidth. `kernels`: per conv shape ((in, out, stride), "xla" | "patches"), the integer
    kernel 8-bit options run with where it measured faster than float (`benchmarks.dfs_options`);
    every other option and shape computes in float on the dequantised grid values.

    In training, `blend` takes the straight-through one-hot decisions and runs each row's chosen
    option only (one residual per row, not one per option: the reference's ~6x), see
    `quantized.residual_per_row`; in inference it is the dense blend of the exact options.
    `estimator`: what the decisions' gradient sees. "one_path": the chosen residual for every
    run option (the gate learns run vs skip from the loss, which bitwidth from the budget
    alone); "two_path": also each row's residual one option below its choice (8 bits: one
    above; a skipped row: float and 8 bits), forward only, so the loss tells the gate too
    whether a lower bitwidth would do for this image (docs/dfs.md)."""

    widths: tuple[int, ...] = (8, 10, 12, 14, 16, 32)
    per_bitwidth_ranges: bool = True
    kernels: tuple[tuple[tuple[int, int, int], str], ...] = ()
    range_momentum: float = 0.9  # the weight of the batch's range in the running one (reference)
    estimator: str = "one_path"

    def __post_init__(self):
        widths = tuple(self.widths)
        if (not widths or any(isinstance(b, bool) or not isinstance(b, int) for b in widths)
                or any(not a < b for a, b in zip(widths, widths[1:]))
                or widths[0] < 2 or (widths[-1] > 16 and widths[-1] != 32)
                or any(16 < b < 32 for b in widths)):
            raise ValueError(f"bitwidths must be increasing integers in [2, 16], optionally ending "
                             f"with 32 (float), got {self.widths}")
        object.__setattr__(self, "widths", widths)
        for key, kernel in self.kernels:
            if kernel not in ("float", "xla", "patches"):
                raise ValueError(f"unknown kernel {kernel!r} for conv {key}; expected 'float', "
                                 "'xla' or 'patches'")
        if not 0.0 < self.range_momentum <= 1.0:
            raise ValueError(f"range_momentum must be in (0, 1], got {self.range_momentum}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; expected one of {ESTIMATORS}")

    @property
    def names(self) -> tuple[str, ...]:
        return ("skip",) + tuple("float" if b == 32 else f"{b} bit" for b in self.widths)

    def bits(self, option: int) -> tuple[int, int]:
        b = self.widths[option - 1] if option else 0
        return (b, b)

    def option_of(self, bits: int) -> int:
        """The option that runs at `bits` (0 = skip); a bitwidth off the menu is an error."""
        if bits == 0:
            return 0
        if bits not in self.widths:
            raise ValueError(f"{bits} bits is not on the menu: 0 (skip) or one of {self.widths}")
        return self.widths.index(bits) + 1

    def computation(self) -> tuple[float, ...]:
        """DFS's cost of each option relative to the float block, (b/32)^2 (its 'computation
        percentage' / 100 per decision)."""
        return tuple((self.bits(k)[0] / 32) ** 2 for k in range(self.num_options))

    def apply(self, block, x, option, shortcut):
        bits = self.widths[option - 1]
        qblock = quantized.as_quantized(block)
        if bits == 32:
            return nnx.relu(shortcut + qblock.block.residual(x))
        k = option if self.per_bitwidth_ranges else 1
        ranges = None if qblock.ranges is None else qblock.ranges[k]
        residual = quantized.residual_at_bits(qblock, x, bits, ranges, dict(self.kernels))
        return nnx.relu(shortcut + residual)

    def blend(self, block, x, weights):
        qblock = quantized.as_quantized(block)
        if not qblock.training:
            return super().blend(block, x, weights)
        if qblock.ranges is None:
            raise ValueError("training a Bitwidths menu needs the blocks' ranges: walk a "
                             "models.quantized.QuantizedResNet")
        choice = jax.lax.stop_gradient(weights.argmax(-1))
        row_bits = jnp.asarray((32,) + self.widths)[choice]  # a skipped row's residual is unused
        shortcut = qblock.block.shortcut(x)
        ran = quantized.residual_per_row(qblock, x, choice, row_bits, self.per_bitwidth_ranges,
                                         self.range_momentum)
        column = lambda w: w.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))  # noqa: E731
        run = weights[..., 1:].sum(-1)  # 1 or 0 forward; its slope reaches every run option
        if self.estimator == "one_path" or self.num_options < 3:
            return shortcut + column(run) * (nnx.relu(shortcut + ran) - shortcut)
        # the second path: one option below the choice (8 bits: one above; skip: 8 bits, while
        # the first path of a skipped row is its float residual). Forward, the one-hot gives it
        # weight 0: the output is the chosen option's; backward, its weight's gradient is the
        # loss's slope along this image's probe output, every other run option's along the first.
        probe = jnp.where(choice >= 2, choice - 1, jnp.where(choice == 1, 2, 1))
        probe_bits = jnp.asarray((32,) + self.widths)[probe]
        probed = quantized.residual_probe(qblock, x, probe, probe_bits, self.per_bitwidth_ranges)
        probe_weight = (weights * jax.nn.one_hot(probe, self.num_options, dtype=weights.dtype)
                        ).sum(-1)
        return (shortcut + column(run - probe_weight) * (nnx.relu(shortcut + ran) - shortcut)
                + column(probe_weight) * (nnx.relu(shortcut + probed) - shortcut))
