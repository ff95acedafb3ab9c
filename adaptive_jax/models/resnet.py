"""CIFAR ResNets of depth 6n+2 (He et al. 2016), built so each residual block can be skipped.

Layout (docs/methods.md section 1.1): a 3x3 stem conv (3 -> 16) + BN + ReLU, three stages of n basic
blocks with widths 16/32/64 (stride 2 at the first block of stages 2 and 3), global average pool
and a linear classifier. Images are NHWC.

Each stage keeps its first block (which may change resolution and width) apart and stores its
other n - 1 blocks, all of identical shape, *stacked* along a leading axis and applies them with
`lax.scan`. docs/design.md measured a scan over identical blocks compiling ~7x faster than a flat graph
of ResNet-110 and running 13-23 % faster; a stacked layout is also what lets later executors pick
blocks by index (`lax.cond` inside the scan, or a loop over active block indices).

Two shortcut kinds at a stage transition:
  * "projection": 1x1 conv (stride 2) + BN, as in SkipNet and OFAS;
  * "pad": 2x2 average pool, then zero channels appended after the input's, parameter-free: He et
    al.'s option A in BlockDrop's layout (its `DownsampleB` concatenates the zeros after).

The backbone protocol every executor relies on (docs/architecture.md): `stem(images)`, `layout`
(its decision units: the residual blocks, per stage), `walk(x, step, ...)` over every unit or
`walk_active(x, active, step)` over the active ones only, `classify(features)`, and `units()`
(one module per unit, for pricing). The walk is written here once, on `nn.stack`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax.nn import LOWERINGS, conv2d, conv_general_dilated_fn, stack
from adaptive_jax.plans import BlockLayout

SHORTCUT_KINDS = ("projection", "pad")
DEPTHS = (20, 32, 38, 44, 56, 74, 110)
STAGE_WIDTHS = (16, 32, 64)


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Static description of a CIFAR ResNet; hashable, so it can key compiled executables."""

    depth: int = 20
    num_classes: int = 10
    shortcut: str = "projection"
    widths: tuple[int, ...] = STAGE_WIDTHS
    in_channels: int = 3
    # Unroll each stage's scan in training (see Stage.__call__); False keeps the loop, to measure.
    unroll_training: bool = True
    # Gradient lowering of every conv (adaptive_jax.nn.conv): "auto" = the CPU forms on CPU,
    # XLA's own elsewhere; "xla" or "cpu" everywhere, to compare.
    conv_lowering: str = "auto"

    def __post_init__(self):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {self.depth}")
        if self.shortcut not in SHORTCUT_KINDS:
            raise ValueError(f"unknown shortcut kind {self.shortcut!r}; expected one of {SHORTCUT_KINDS}")
        if len(self.widths) != 3:
            raise ValueError(f"a CIFAR ResNet has 3 stage widths, got {self.widths}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if self.conv_lowering not in LOWERINGS:
            raise ValueError(f"unknown conv_lowering {self.conv_lowering!r}; expected one of {LOWERINGS}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def num_blocks(self) -> int:
        return 3 * self.blocks_per_stage


def _conv(cin: int, cout: int, size: int, stride: int, lowering: str, rngs: nnx.Rngs) -> nnx.Conv:
    pad = size // 2
    return nnx.Conv(cin, cout, (size, size), strides=stride, padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=nnx.initializers.he_normal(),
                    conv_general_dilated=conv_general_dilated_fn(lowering), rngs=rngs)


def _batch_norm(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # PyTorch's defaults (momentum 0.1 there is 0.9 here), so recipes transfer.
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)


def pad_shortcut(x: jax.Array, out_channels: int) -> jax.Array:
    """BlockDrop's parameter-free shortcut: 2x2 average pool, then zero channels after the input's
    (so channel i of the input stays channel i, as in BlockDrop's and He et al.'s option A)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out_channels - c)))


class Projection(nnx.Module):
    """1x1 strided conv + BN shortcut (SkipNet / OFAS)."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, lowering: str = "auto"):
        self.conv = _conv(cin, cout, 1, stride, lowering, rngs)
        self.bn = _batch_norm(cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str, *, rngs: nnx.Rngs,
                 lowering: str = "auto"):
        self.conv1 = _conv(cin, cout, 3, stride, lowering, rngs)
        self.bn1 = _batch_norm(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, lowering, rngs)
        self.bn2 = _batch_norm(cout, rngs)
        self.changes_shape = stride != 1 or cin != cout
        self.stride, self.lowering = stride, lowering
        self.out_channels = cout
        self.shortcut_kind = shortcut
        if self.changes_shape and shortcut == "projection":
            self.projection = Projection(cin, cout, stride, rngs=rngs, lowering=lowering)
        else:
            self.projection = None

    def shortcut(self, x: jax.Array) -> jax.Array:
        """What the block adds its residual to; also what a skipped block outputs."""
        if not self.changes_shape:
            return x
        if self.projection is not None:
            return self.projection(x)
        return pad_shortcut(x, self.out_channels)

    def residual(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(y))

    def residual_at(self, x: jax.Array, channels: int) -> jax.Array:
        """The residual on only the first `channels` of the block's inner width: conv1's first
        output channels, their BN, conv2 reading only them. Static slices, so the MACs shrink
        with `channels`. Inference only (running BN statistics): a narrower option of an option
        plan (`models.options`), not a trained slimmable net."""
        if channels == self.out_channels:
            return self.residual(x)
        if not 1 <= channels < self.out_channels:
            raise ValueError(f"a block of inner width {self.out_channels} cannot run on "
                             f"{channels} channels")
        if not self.bn1.use_running_average:
            raise ValueError("a narrowed block runs in inference only: call model.eval() first")
        pad = ((1, 1), (1, 1))
        y = conv2d(x, self.conv1.kernel[...][..., :channels], (self.stride,) * 2, pad, self.lowering)
        bn = self.bn1
        scale = bn.scale[...][:channels] * jax.lax.rsqrt(bn.var[...][:channels] + bn.epsilon)
        y = nnx.relu((y - bn.mean[...][:channels]) * scale + bn.bias[...][:channels])
        y = conv2d(y, self.conv2.kernel[...][:, :, :channels, :], (1, 1), pad, self.lowering)
        return self.bn2(y)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.shortcut(x) + self.residual(x))


class Stage(nnx.Module):
    """The first (possibly transition) block, then n - 1 identical blocks applied by `lax.scan`."""

    def __init__(self, cin: int, cout: int, num_blocks: int, stride: int, shortcut: str,
                 *, rngs: nnx.Rngs, unroll_training: bool = True, lowering: str = "auto"):
        self.first = BasicBlock(cin, cout, stride, shortcut, rngs=rngs, lowering=lowering)
        self.unroll_training = unroll_training
        self.num_rest = num_blocks - 1
        if self.num_rest:
            self.rest = stack.stack_modules(
                [BasicBlock(cout, cout, 1, shortcut, rngs=rngs, lowering=lowering)
                 for _ in range(self.num_rest)])
        else:
            self.rest = None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.first(x)
        if self.rest is None:
            return x
        # Training unrolls the scan: XLA:CPU runs the gradient of a scanned stage 3.2x slower
        # (12x with XLA's own conv weight gradients; `python -m benchmarks.stage_scan`).
        # Inference keeps the loop, which compiles faster and runs as fast.
        x, _ = stack.scan((self.rest,), _run_block, x, length=self.num_rest,
                          training=self.training, unroll=self.training and self.unroll_training)
        return x

    @property
    def training(self) -> bool:
        # Only training mode moves batch statistics; in inference the scan writes nothing back,
        # so the stage is also callable under a plain jax transform.
        return not self.first.bn1.use_running_average


def _run_block(modules: tuple, x: jax.Array, _) -> tuple[jax.Array, None]:
    return modules[0](x), None


def _run_or_drop(modules: tuple, x: jax.Array, unit) -> tuple[jax.Array, None]:
    keep, survival = unit
    return nnx.cond(keep, lambda block, h: nnx.relu(block.shortcut(h) + block.residual(h) / survival),
                    lambda block, h: block.shortcut(h), modules[0], x), None


def survival_probabilities(num_blocks: int, final_drop: float) -> np.ndarray:
    """Stochastic depth's linear decay (Huang et al. 2016): block l of L (1-based) survives a
    batch with probability 1 - (l / L) * final_drop, the last block with 1 - final_drop (their
    CIFAR setting: 0.5); the stem and classifier always run."""
    if not 0.0 <= final_drop < 1.0:
        raise ValueError(f"stochastic depth's final drop probability must be in [0, 1), got "
                         f"{final_drop} (0 turns it off; Huang et al. use 0.5)")
    return 1.0 - np.arange(1, num_blocks + 1) / num_blocks * final_drop


class CifarResNet(nnx.Module):
    """CIFAR ResNet 6n+2. `__call__(images)` takes float NHWC (B, 32, 32, 3), returns logits."""

    def __init__(self, spec: ResNetSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        w = spec.widths
        self.stem_conv = _conv(spec.in_channels, w[0], 3, 1, spec.conv_lowering, rngs)
        self.stem_bn = _batch_norm(w[0], rngs)
        n = spec.blocks_per_stage
        common = dict(rngs=rngs, unroll_training=spec.unroll_training, lowering=spec.conv_lowering)
        self.stages = nnx.List([
            Stage(w[0], w[0], n, 1, spec.shortcut, **common),
            Stage(w[0], w[1], n, 2, spec.shortcut, **common),
            Stage(w[1], w[2], n, 2, spec.shortcut, **common),
        ])
        self.head = nnx.Linear(w[2], spec.num_classes, rngs=rngs)

    def stem(self, images: jax.Array) -> jax.Array:
        return nnx.relu(self.stem_bn(self.stem_conv(images)))

    def classify(self, features: jax.Array) -> jax.Array:
        return self.head(features.mean(axis=(1, 2)))

    def __call__(self, images: jax.Array) -> jax.Array:
        check_images(images, self.spec.in_channels)
        x, _ = self.walk(self.stem(images), _run_block)
        return self.classify(x)

    def drop_blocks(self, images: jax.Array, keep: jax.Array, survival: jax.Array) -> jax.Array:
        """Training forward with whole blocks left out for the batch (stochastic depth,
        docs/zoo.md; a static sub-net's fine-tune, `FixedPlanNet`): block l runs for this whole
        batch if `keep[l]` ((L,) bools), its residual scaled by 1 / `survival[l]` (stochastic
        depth's survival probability, so that the plain network at inference, every block
        unscaled, sees the residual sums' expectation; 1 for a fixed plan). A dropped block
        outputs its shortcut and its convs do not run, forward or backward (`nnx.cond`), so it
        saves most of its time (with `keep` known only at run time its `cond` still writes the
        zeros standing for its residuals: docs/zoo.md) and leaves its BN statistics alone."""
        check_images(images, self.spec.in_channels)
        if not self.training:
            raise ValueError("drop_blocks is a training forward: call model.train() first (in "
                             "inference, give a plan to an executor, or run every block: "
                             "model(images))")
        x, _ = self.walk(self.stem(images), _run_or_drop, per_unit=(keep, survival))
        return self.classify(x)

    # -- the backbone protocol (docs/architecture.md) --

    @property
    def layout(self) -> BlockLayout:
        """The decision units (residual blocks) a plan for this network addresses."""
        return BlockLayout.of(self.spec)

    @property
    def training(self) -> bool:
        return not self.stem_bn.use_running_average

    def walk(self, x, step: stack.ScanStep, per_unit=None, companions=None):
        """Every residual block in network order, from the stem's output: returns (x, outs).
        `x` is the carry: the features, or any pytree holding them (a recurrent decider's state
        rides along).

        `step(modules, h, inputs) -> (h, out)`: `modules` is `(block,)`, or `(block, companion)`
        with `companions` (per stage, an object with `first` and stacked `rest` modules laid out
        like the stage's blocks, e.g. per-block gates); `inputs` is this block's slice of
        `per_unit` (a pytree whose leaves have a leading axis of one entry per block); the
        `out`s come back stacked the same way (or None). Stacked blocks run under one
        `lax.scan` (unrolled in training), batch statistics written back in training.
        """
        layout, training, outs = self.layout, self.training, []
        for index, (stage, cols) in enumerate(zip(self.stages, layout.stage_slices())):
            inputs = jax.tree.map(lambda leaf: leaf[cols], per_unit)
            extra = None if companions is None else companions[index]
            first = (stage.first,) if extra is None else (stage.first, extra.first)
            x, out = step(first, x, jax.tree.map(lambda leaf: leaf[0], inputs))
            outs.append(jax.tree.map(lambda leaf: leaf[None], out))
            if stage.rest is not None:
                rest = (stage.rest,) if extra is None else (stage.rest, extra.rest)
                x, ys = stack.scan(rest, step, x, jax.tree.map(lambda leaf: leaf[1:], inputs),
                                   length=stage.num_rest, training=training,
                                   unroll=training and stage.unroll_training)
                outs.append(ys)
        return x, jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *outs)

    def walk_active(self, x: jax.Array, active: jax.Array, step, per_unit=None) -> jax.Array:
        """Only the blocks `active` ((L,) bools shared by the batch) turns on; the others output
        their shortcut. `step(block, h, inputs) -> h`. A stage's first block is a `lax.cond`; the
        stacked blocks a loop over the active ones' indices only (`nn.stack.loop_over`), so a
        skipped block costs no time (docs/design.md). Inference only."""
        for stage, cols in zip(self.stages, self.layout.stage_slices()):
            bits = active[cols]
            inputs = jax.tree.map(lambda leaf: leaf[cols], per_unit)
            first, first_inputs = stage.first, jax.tree.map(lambda leaf: leaf[0], inputs)
            x = jax.lax.cond(bits[0], lambda h: step(first, h, first_inputs), first.shortcut, x)
            if stage.rest is not None:
                rest_bits = bits[1:]
                rest_inputs = jax.tree.map(lambda leaf: leaf[1:], inputs)
                order = jnp.argsort(~rest_bits, stable=True)  # the active blocks first, in order
                x = stack.loop_over(
                    stage.rest, order, rest_bits.sum(),
                    lambda block, h, i: step(block, h, jax.tree.map(lambda leaf: leaf[i], rest_inputs)),
                    x)
        return x

    def units(self) -> list[BasicBlock]:
        """One module per decision unit, in plan order (stacked blocks taken out of their stack;
        works on abstract models from `nnx.eval_shape` too)."""
        blocks = []
        for stage in self.stages:
            blocks.append(stage.first)
            blocks += [stack.module_at(stage.rest, i) for i in range(stage.num_rest)]
        return blocks


def check_images(images: jax.Array, channels: int = 3) -> None:
    """Clear errors for the usual mistakes: NCHW input, uint8 pixels, a missing batch axis."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != channels:
        hint = ("; this looks like NCHW, transpose to NHWC"
                if len(shape) == 4 and shape[1] == channels else "")
        raise ValueError(f"expected images of shape (batch, height, width, {channels}) (NHWC), "
                         f"got shape {shape}{hint}")
    if shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"image height and width must be multiples of 4 (two stride-2 stages), "
                         f"got {shape[1]}x{shape[2]}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"expected floating-point (normalised) images, got dtype {images.dtype}; "
            "use adaptive_jax.data.normalize() on uint8 pixels first")


def check_finite_images(images) -> None:
    """Raises if any pixel is NaN or inf, naming how many images are affected.

    Off the hot path by default: the compiled predict paths take `check_finite=True` to call it
    on every request (one reduction and a host sync; cost in benchmarks/RESULTS.md). Why bother:
    XLA:CPU drops NaN inside a fused relu + mean-pool, so a jit-compiled network can return
    confident logits for an all-NaN image, where an eager call returns NaN."""
    if isinstance(images, jax.Array):
        bad = np.asarray(~jnp.isfinite(images).reshape(images.shape[0], -1).all(axis=1))
    else:
        images = np.asarray(images)
        if not np.issubdtype(images.dtype, np.floating):
            return  # integer pixels are always finite
        bad = ~np.isfinite(images).reshape(images.shape[0], -1).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(bad)} images contain NaN or inf pixels (first: "
                         f"image {int(np.argmax(bad))}); check the decoding / normalisation that "
                         "produced them")


def resnet(depth: int = 20, num_classes: int = 10, shortcut: str = "projection",
           seed: int = 0) -> CifarResNet:
    """Convenience constructor: `resnet(110, shortcut="pad")`."""
    return CifarResNet(ResNetSpec(depth, num_classes, shortcut), rngs=nnx.Rngs(seed))
