"""A slimmable CIFAR ResNet (Yang & Fan's dynamic DNN, docs/methods.md 4; Slimmable / US-Nets 2.4):
one set of weights; `model(images, width)` runs the sub-net that keeps the first ceil(w * C)
channels of every layer. `width` is one float (uniform) or one per stage (non-uniform), each from
the model's width menu, since every width has its own BN statistics (switchable BN).

The width is static (Python data): each width is its own compiled program with smaller convs, so
a narrow sub-net costs less time, not only fewer counted MACs. Blocks are a plain Python list
(not stacked and scanned like `CifarResNet`): the sub-nets are small, and training unrolls
anyway.

Serving and ordering: `extract_subnet(model, width)` turns a sub-net (`WidthSubnet`) into a plain
static `CifarResNet` on its own sliced weights (what `execution.SubnetExecutor` compiles), and
`sort_channels_by_importance` reorders a full-width net's channels so its prefixes keep the
important ones (OFA's first step).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax.config import check_count
from adaptive_jax.models.resnet import STAGE_WIDTHS, CifarResNet, ResNetSpec, check_images
from adaptive_jax.nn.slim import (SlimConv, SlimLinear, SwitchableBatchNorm, as_width,
                                  is_scalar_width, slim_channels, width_index)
from adaptive_jax.plans import StaticPlan

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
        if isinstance(self.widths, (str, bytes)) or not hasattr(self.widths, "__iter__"):
            raise TypeError(f"widths is a sequence of numbers in (0, 1] ending at 1.0, such as "
                            f"(0.25, 0.5, 1.0); got {self.widths!r}")
        widths = tuple(as_width(w) for w in self.widths)  # numpy scalars welcome, True is not
        if not widths or any(a >= b for a, b in zip(widths, widths[1:])) or widths[-1] != 1.0:
            raise ValueError(f"widths must be strictly increasing (no repeats) and end at 1.0, "
                             f"got {self.widths}")
        object.__setattr__(self, "widths", widths)


def stage_widths(width, widths_menu) -> tuple[float, float, float]:
    """A uniform width or three per-stage widths, checked against the model's menu."""
    per_stage = per_stage_widths(width)
    for w in per_stage:
        width_index(widths_menu, w)
    return per_stage


def per_stage_widths(width) -> tuple[float, float, float]:
    """One width (uniform) or three (one per stage) as three Python floats; anything else is an
    error saying which forms are accepted."""
    if is_scalar_width(width):
        return (as_width(width),) * 3
    if isinstance(width, WidthSubnet):
        return width.stage_widths
    if isinstance(width, (str, bytes, bool, np.bool_)) or not hasattr(width, "__len__"):
        as_width(width)  # raises, naming what a width is
    if len(width) != 3:
        raise ValueError(f"a non-uniform width gives one width per stage (3), got {width}")
    return tuple(as_width(w) for w in width)


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


# --- Sub-nets as static networks ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WidthSubnet(StaticPlan):
    """One sub-net of a slimmable ResNet: a width per stage. A static plan (`plans.StaticPlan`):
    frozen and hashable, so it keys compiled executables (`adaptive_jax.execution.SubnetExecutor`) and latency tables."""

    stage_widths: tuple[float, float, float]

    @classmethod
    def of(cls, width) -> "WidthSubnet":
        """`WidthSubnet.of(0.5)` (uniform) or `WidthSubnet.of((0.25, 0.5, 1.0))`."""
        if isinstance(width, WidthSubnet):
            return width
        return cls(per_stage_widths(width))

    @property
    def name(self) -> str:
        """"w0.5" for a uniform width (the experiment's table names), "w0.25-0.5-1" otherwise."""
        if len(set(self.stage_widths)) == 1:
            return f"w{self.stage_widths[0]:g}"
        return "w" + "-".join(f"{w:g}" for w in self.stage_widths)

    def channels(self) -> tuple[int, int, int]:
        return tuple(slim_channels(c, w) for c, w in zip(STAGE_WIDTHS, self.stage_widths))


def check_channel_multiple(channel_multiple) -> None:
    check_count("channel_multiple", channel_multiple, meaning="1: no rounding")


def subnet_spec(spec: SlimmableSpec, subnet: WidthSubnet, channel_multiple: int = 1) -> ResNetSpec:
    """The static ResNet a sub-net is: same depth, the sub-net's channels (rounded up to
    `channel_multiple`), projection shortcuts."""
    stage_widths(subnet.stage_widths, spec.widths)  # every width must be on the menu
    check_channel_multiple(channel_multiple)
    channels = tuple(-(-c // channel_multiple) * channel_multiple for c in subnet.channels())
    return ResNetSpec(spec.depth, spec.num_classes, "projection", channels,
                      spec.in_channels, conv_lowering=spec.conv_lowering)


def extract_subnet(model: SlimmableResNet, width, channel_multiple: int = 1) -> CifarResNet:
    """The sub-net at `width` as a plain `CifarResNet` holding only its own weights: every kernel
    sliced to its channel prefix, every BN the width's private one.

    Its output equals `model(images, width)` in eval mode, but a compiled call reads small,
    contiguous weights instead of slicing the full ones on every call, and it runs under every
    executor of `adaptive_jax.execution` (block plans on a width sub-net: depth x width).

    `channel_multiple` > 1 rounds every layer's channels up with zero channels that stay zero
    (zero kernels in and out, BN scale and bias 0): the same function, in conv shapes the
    backend runs faster. On XLA:CPU a 32x32 conv with 4 or 12 channels is slower than with 8 or
    16 (`python -m experiments.dynamic_dnn.latency_table`; issue 5 note), so the
    `SubnetExecutor` pads to multiples of 8 there.
    """
    subnet = WidthSubnet.of(width)
    spec = model.spec
    static_spec = subnet_spec(spec, subnet, channel_multiple)
    c = subnet.channels()
    index = [width_index(spec.widths, w) for w in subnet.stage_widths]
    full = jax.tree.map(np.asarray, nnx.state(model).to_pure_dict())
    n = (spec.depth - 2) // 6

    def padded(channels: int) -> int:
        return -(-channels // channel_multiple) * channel_multiple

    def kernel(k: np.ndarray, cin: int, cout: int, pad_in: bool = True) -> np.ndarray:
        k = k[..., :cin, :cout]
        extra_in = padded(cin) - cin if pad_in else 0
        return np.pad(k, [(0, 0)] * (k.ndim - 2) + [(0, extra_in), (0, padded(cout) - cout)])

    def bn(norms: dict, index: int) -> dict:
        params = norms["norms"][index]
        extra = padded(params["scale"].shape[0]) - params["scale"].shape[0]
        # a padded channel: scale 0 and bias 0 give 0 whatever its statistics; var 1 keeps them finite
        return {k: np.pad(v, (0, extra), constant_values=1.0 if k == "var" else 0.0)
                for k, v in params.items()}

    def block(i: int, stage: int, cin: int) -> dict:
        b, cout, k = full["blocks"][i], c[stage], index[stage]
        out = {"conv1": {"kernel": kernel(b["conv1"]["kernel"], cin, cout)},
               "bn1": bn(b["bn1"], k),
               "conv2": {"kernel": kernel(b["conv2"]["kernel"], cout, cout)},
               "bn2": bn(b["bn2"], k)}
        if "projection" in b:
            out["projection"] = {"conv": {"kernel": kernel(b["projection"]["kernel"], cin, cout)},
                                 "bn": bn(b["projection_bn"], k)}
        return out

    stages = {}
    for stage in range(3):
        cin = c[stage - 1] if stage else c[0]
        first = block(stage * n, stage, cin)
        rest = [block(stage * n + j, stage, c[stage]) for j in range(1, n)]
        stages[stage] = {"first": first}
        if rest:
            stages[stage]["rest"] = jax.tree.map(lambda *xs: np.stack(xs), *rest)
    head = full["head"]["kernel"][:c[2]]
    pure = {"stem_conv": {"kernel": kernel(full["stem_conv"]["kernel"], spec.in_channels, c[0],
                                           pad_in=False)},
            "stem_bn": bn(full["stem_bn"], index[0]),
            "stages": stages,
            "head": {"kernel": np.pad(head, ((0, padded(c[2]) - c[2]), (0, 0))),
                     "bias": full["head"]["bias"]}}
    abstract = nnx.eval_shape(lambda: CifarResNet(static_spec, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, pure))
    subnet_model = nnx.merge(graphdef, state)
    subnet_model.eval()
    return subnet_model


# --- Channel order --------------------------------------------------------------------------


def _narrow_from_full(bn: dict) -> None:
    """Every narrower width's BN (a pure dict of a SwitchableBatchNorm) := the full width's prefix."""
    norms = bn["norms"]
    full = max(norms)
    for i in range(full):
        size = norms[i]["scale"].shape[0]
        norms[i] = {k: np.array(v[:size]) for k, v in norms[full].items()}


def inherit_batch_norm_from_full_width(model: SlimmableResNet) -> None:
    """Sets, in place, every narrower width's BN (statistics and affine) to the full width's on
    its channel prefix: the start of a net trained at full width only, before recalibration."""
    state = nnx.state(model)
    p = jax.tree.map(np.asarray, state.to_pure_dict())

    def visit(node):
        if isinstance(node, dict):
            if "norms" in node:
                _narrow_from_full(node)
            else:
                for child in node.values():
                    visit(child)

    visit(p)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, p))
    nnx.update(model, state)


def _l1_inputs(kernel: jax.Array) -> jax.Array:
    """L1 norm of a kernel per input channel (axis -2 of an HWIO kernel or IO matrix)."""
    return jnp.abs(kernel).sum(axis=tuple(a for a in range(kernel.ndim) if a != kernel.ndim - 2))


def sort_channels_by_importance(model: SlimmableResNet) -> dict[str, np.ndarray]:
    """Reorders every layer's channels, in place, by importance (OFA's rule: the L1 norm of the
    weights that consume a channel), so the most important channels come first and every
    narrow sub-net (a prefix) keeps them. The full-width function is unchanged.

    Channels on a stage's residual stream are one group (the stem or the stage's projection,
    every block's second conv and every shortcut add them up), ranked by the summed L1 norm of
    all their consumers: the stage's first convs, the next stage's first conv and projection,
    or the classifier. A block's inner channels are ranked by its second conv.

    Use it on a net trained at full width only, as OFA does before it trains narrower widths:
    afterwards every narrower width's BN starts from the full width's BN on its prefix, so
    recalibrate (`recalibrate_batch_norm`) or fine-tune them. Returns the permutation of each
    channel group ("stage0", "block3.inner", ...), original channel index per new position.
    """
    spec = model.spec
    n = (spec.depth - 2) // 6
    state = nnx.state(model)
    p = jax.tree.map(np.asarray, state.to_pure_dict())
    blocks = p["blocks"]
    full = len(spec.widths) - 1
    orders: dict[str, np.ndarray] = {}

    def permute_bn(bn: dict, order: np.ndarray) -> None:
        # the full width's BN follows its channels; narrower ones restart from its prefix
        bn["norms"][full] = {k: v[order] for k, v in bn["norms"][full].items()}
        _narrow_from_full(bn)

    for stage in range(3):
        members = range(stage * n, (stage + 1) * n)
        # blocks whose first conv reads this stream (a stage's first block reads the previous one)
        readers = [i for i in members if i != stage * n or stage == 0]
        # the residual stream: consumers' L1 per input channel
        importance = sum(_l1_inputs(blocks[i]["conv1"]["kernel"]) for i in readers)
        if stage < 2:
            nxt = blocks[(stage + 1) * n]
            importance = importance + _l1_inputs(nxt["conv1"]["kernel"]) + _l1_inputs(nxt["projection"]["kernel"])
        else:
            importance = importance + _l1_inputs(p["head"]["kernel"])
        order = np.argsort(-np.asarray(importance), kind="stable")
        orders[f"stage{stage}"] = order
        # producers of the stream: stem (stage 0) or this stage's projection; every block's conv2
        if stage == 0:
            p["stem_conv"]["kernel"] = p["stem_conv"]["kernel"][..., order]
            permute_bn(p["stem_bn"], order)
        else:
            first = blocks[stage * n]
            first["projection"]["kernel"] = first["projection"]["kernel"][..., order]
            permute_bn(first["projection_bn"], order)
        for i in members:
            blocks[i]["conv2"]["kernel"] = blocks[i]["conv2"]["kernel"][..., order]
            permute_bn(blocks[i]["bn2"], order)
        for i in readers:
            blocks[i]["conv1"]["kernel"] = blocks[i]["conv1"]["kernel"][:, :, order]
        if stage < 2:
            nxt = blocks[(stage + 1) * n]
            nxt["conv1"]["kernel"] = nxt["conv1"]["kernel"][:, :, order]
            nxt["projection"]["kernel"] = nxt["projection"]["kernel"][:, :, order]
        else:
            p["head"]["kernel"] = p["head"]["kernel"][order]
    for i, b in blocks.items():
        order = np.argsort(-np.asarray(_l1_inputs(b["conv2"]["kernel"])), kind="stable")
        orders[f"block{i}.inner"] = order
        b["conv1"]["kernel"] = b["conv1"]["kernel"][..., order]
        permute_bn(b["bn1"], order)
        b["conv2"]["kernel"] = b["conv2"]["kernel"][:, :, order]
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, p))
    nnx.update(model, state)
    return orders
