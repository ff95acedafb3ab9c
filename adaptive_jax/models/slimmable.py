"""A slimmable CIFAR ResNet (Yang & Fan's dynamic DNN, methods.md 4; Slimmable / US-Nets 2.4):
one set of weights; `model(images, width)` runs the sub-net that keeps the first ceil(w * C)
channels of every layer. `width` is one float (uniform) or one per stage (non-uniform), each from
the model's width menu, since every width has its own BN statistics (switchable BN).

The width is static (Python data): each width is its own compiled program with smaller convs, so
a narrow sub-net costs less time, not only fewer counted MACs. Blocks are a plain Python list
(not stacked and scanned like `CifarResNet`): the sub-nets are small, and training unrolls
anyway.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from adaptive_jax.models.resnet import STAGE_WIDTHS, check_images
from adaptive_jax.nn.slim import (SlimConv, SlimLinear, SwitchableBatchNorm, slim_channels,
                                  width_index)

UNIFORM_WIDTHS = (0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class SlimmableSpec:
    depth: int = 20
    num_classes: int = 10
    widths: tuple[float, ...] = UNIFORM_WIDTHS
    in_channels: int = 3
    conv_lowering: str = "auto"

    def __post_init__(self):
        if (self.depth - 2) % 6 or self.depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {self.depth}")
        if not self.widths or sorted(self.widths) != list(self.widths) or self.widths[-1] != 1.0:
            raise ValueError(f"widths must be increasing and end at 1.0, got {self.widths}")
        for w in self.widths:
            slim_channels(16, w)  # range check


def stage_widths(width, widths_menu) -> tuple[float, float, float]:
    """A uniform width or three per-stage widths, checked against the model's menu."""
    per_stage = (width,) * 3 if isinstance(width, (int, float)) else tuple(width)
    if len(per_stage) != 3:
        raise ValueError(f"a non-uniform width gives one width per stage (3), got {width}")
    for w in per_stage:
        width_index(widths_menu, w)
    return per_stage


class SlimBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, widths, *, lowering: str, rngs: nnx.Rngs):
        self.conv1 = SlimConv(cin, cout, 3, stride, lowering=lowering, rngs=rngs)
        self.bn1 = SwitchableBatchNorm(cout, widths, rngs=rngs)
        self.conv2 = SlimConv(cout, cout, 3, 1, lowering=lowering, rngs=rngs)
        self.bn2 = SwitchableBatchNorm(cout, widths, rngs=rngs)
        self.cout = cout
        if stride != 1 or cin != cout:
            self.projection = SlimConv(cin, cout, 1, stride, lowering=lowering, rngs=rngs)
            self.projection_bn = SwitchableBatchNorm(cout, widths, rngs=rngs)
        else:
            self.projection = None

    def __call__(self, x: jax.Array, width: float) -> jax.Array:
        c = slim_channels(self.cout, width)
        y = nnx.relu(self.bn1(self.conv1(x, c), width))
        y = self.bn2(self.conv2(y, c), width)
        shortcut = x if self.projection is None else self.projection_bn(self.projection(x, c), width)
        return nnx.relu(shortcut + y)


class SlimmableResNet(nnx.Module):
    def __init__(self, spec: SlimmableSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        w, n, lw = STAGE_WIDTHS, (spec.depth - 2) // 6, spec.conv_lowering
        self.stem_conv = SlimConv(spec.in_channels, w[0], 3, 1, lowering=lw, rngs=rngs)
        self.stem_bn = SwitchableBatchNorm(w[0], spec.widths, rngs=rngs)
        blocks = []
        for stage, (cin, cout) in enumerate(zip((w[0], w[0], w[1]), w)):
            for i in range(n):
                blocks.append(SlimBlock(cin if i == 0 else cout, cout, 2 if stage and i == 0 else 1,
                                        spec.widths, lowering=lw, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.blocks_per_stage = n
        self.head = SlimLinear(w[2], spec.num_classes, rngs=rngs)

    def __call__(self, images: jax.Array, width=1.0) -> jax.Array:
        check_images(images, self.spec.in_channels)
        per_stage = stage_widths(width, self.spec.widths)
        x = nnx.relu(self.stem_bn(self.stem_conv(images, slim_channels(STAGE_WIDTHS[0], per_stage[0])),
                                  per_stage[0]))
        for i, block in enumerate(self.blocks):
            x = block(x, per_stage[i // self.blocks_per_stage])
        return self.head(x.mean(axis=(1, 2)))
