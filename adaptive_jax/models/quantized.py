"""A CIFAR ResNet whose residual blocks run at a bitwidth chosen at run time (DFS, docs/dfs.md).

`QuantizedResNet(backbone, ranges, options)` follows the backbone protocol (`stem`, `layout`,
`walk`, `walk_active`, `classify`, `units`), so every executor and `block_by_block` run it as
they run the plain backbone; the only difference is what a step gets as its block: a
`QuantizedBlock`, the backbone's block together with its activation ranges, which the
`options.Bitwidths` menu reads to run the block at b bits.

Activation ranges (the max of each conv's non-negative input) are kept per block and per option
(`ranges`: (units, options, 2), conv1's input then conv2's): the reference code keeps one range
per conv shared by every bitwidth, which lets the 8-bit option's range be set by rows that ran
at 16. In training the ranges are the batch's mean of per-row maxima over the rows that chose
each option (the reference's statistic, per option here) and move the running values by an
EMA; in inference the running values are constants.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive_jax.models.resnet import BasicBlock, CifarResNet
from adaptive_jax.nn import conv2d, quant

PAD = ((1, 1), (1, 1))


class QuantizedBlock:
    """A residual block and its activation ranges (options, 2); what a `Bitwidths` menu runs.

    `ranges` None: no ranges kept (pricing, or a bare block): each conv's input range is its own
    max over the tensor. In training, the menu leaves the block's new running ranges in
    `updated_ranges` for the walk to write back."""

    def __init__(self, block: BasicBlock, ranges: jax.Array | None, training: bool = False):
        self.block, self.ranges, self.training = block, ranges, training
        self.updated_ranges = ranges

    def shortcut(self, x: jax.Array) -> jax.Array:
        return self.block.shortcut(x)

    def __getattr__(self, name):  # the block's own attributes (convs, BNs, shapes)
        return getattr(self.block, name)


def as_quantized(block) -> QuantizedBlock:
    return block if isinstance(block, QuantizedBlock) else QuantizedBlock(block, None)


def conv_key(conv: nnx.Conv) -> tuple[int, int, int]:
    """(in channels, out channels, stride): what a measured kernel choice is keyed by."""
    kernel = conv.kernel[...]
    return (int(kernel.shape[-2]), int(kernel.shape[-1]), _strides(conv)[0])


def _strides(conv: nnx.Conv) -> tuple[int, int]:
    s = conv.strides
    return (s, s) if isinstance(s, int) else tuple(int(v) for v in s)


def quantized_conv(conv: nnx.Conv, x: jax.Array, bits: int, max_value: jax.Array,
                   kernel: str = "float") -> jax.Array:
    """`conv` on `x` with weights (per output channel) and input (over [0, max_value]) on b-bit
    grids. `kernel`: "float" computes on the dequantised values (any b); "xla" / "patches" run
    b = 8 in int8 x int8 -> int32 (`quant.unsigned_int8_conv2d`), the same values up to float
    rounding. Which is faster is measured per conv shape (`python -m benchmarks.dfs_options`)."""
    w, strides = conv.kernel[...], _strides(conv)
    if kernel != "float":
        if bits != 8:
            raise ValueError(f"the integer kernels run 8-bit options only, not {bits} bits")
        return quant.unsigned_int8_conv2d(x, max_value, w, strides, PAD, kernel)
    xq = quant.fake_quant_unsigned(x, bits, max_value)
    return conv2d(xq, quant.fake_quant_symmetric(w, bits), strides, PAD, "auto")


def residual_at_bits(qblock: QuantizedBlock, x: jax.Array, bits: int, ranges: jax.Array | None,
                     kernels: dict | None = None) -> jax.Array:
    """The block's residual with both convs' weights and inputs at `bits` (inference: running BN
    statistics; `ranges` (2,) the running ranges, or None for each tensor's own max)."""
    block, kernels = qblock.block, (kernels or {}) if bits == 8 else {}

    def input_range(h, i):  # a range never set (an untrained model) is the tensor's own max
        top = jnp.max(h)
        return top if ranges is None else jnp.where(ranges[i] > 0, ranges[i], top)

    r1 = input_range(x, 0)
    y = quantized_conv(block.conv1, x, bits, r1, kernels.get(conv_key(block.conv1), "float"))
    y = nnx.relu(block.bn1(y))
    r2 = input_range(y, 1)
    y = quantized_conv(block.conv2, y, bits, r2, kernels.get(conv_key(block.conv2), "float"))
    return block.bn2(y)


def _option_means(values: jax.Array, onehot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per option: the mean of `values` (B,) over the rows that chose it, and their count."""
    counts = onehot.sum(0)
    return (onehot * values[:, None]).sum(0) / jnp.maximum(counts, 1), counts


def _row_max(x: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(x.reshape(x.shape[0], -1).max(-1))


def residual_per_row(qblock: QuantizedBlock, x: jax.Array, choice: jax.Array,
                     row_bits: jax.Array, per_bitwidth: bool, momentum: float) -> jax.Array:
    """Training: the residual of every row at its own bitwidth (`row_bits` (B,), 32 = float).

    Activations are quantised per row at the row's bitwidth and the batch range of its option;
    the weights stay float (per-row weights would need one convolution per row or per option:
    docs/dfs.md). Updates `qblock.updated_ranges`."""
    block = qblock.block
    num_options = qblock.ranges.shape[0]
    onehot = jax.nn.one_hot(choice, num_options, dtype=x.dtype)
    if not per_bitwidth:  # the reference's one range for every option
        onehot = jnp.ones_like(onehot)
    bits = row_bits.astype(x.dtype)[:, None, None, None]
    new_ranges = []

    def quantise_input(h, which):
        row_max = _row_max(h)
        batch, counts = _option_means(row_max, onehot)
        running = qblock.ranges[:, which]
        moved = jnp.where(running > 0, (1 - momentum) * running + momentum * batch, batch)
        # an option no row chose yet starts from every row's range, so none is left uncalibrated
        unset = jnp.where(running > 0, running, row_max.mean())
        new_ranges.append(jnp.where(counts > 0, moved, unset))
        row_range = (onehot * batch).sum(-1) / jnp.maximum(onehot.sum(-1), 1)
        return quant.fake_quant_unsigned(h, bits, row_range[:, None, None, None])

    y = nnx.relu(block.bn1(block.conv1(quantise_input(x, 0))))
    y = block.bn2(block.conv2(quantise_input(y, 1)))
    qblock.updated_ranges = jax.lax.stop_gradient(jnp.stack(new_ranges, -1))
    return y


class QuantizedResNet:
    """`backbone` walked with each block bound to its ranges (a view: the modules stay the
    backbone's and the ranges variable the owner's; plain Python, made per call)."""

    def __init__(self, backbone: CifarResNet, ranges: nnx.Variable):
        self.backbone, self.ranges_variable = backbone, ranges
        self.spec = backbone.spec

    # the protocol, delegated
    def stem(self, images):
        return self.backbone.stem(images)

    def classify(self, features):
        return self.backbone.classify(features)

    @property
    def layout(self):
        return self.backbone.layout

    @property
    def training(self) -> bool:
        return self.backbone.training

    def units(self) -> list[QuantizedBlock]:
        ranges = self.ranges_variable[...]
        return [QuantizedBlock(b, ranges[i]) for i, b in enumerate(self.backbone.units())]

    def walk(self, x, step, per_unit=None, companions=None):
        training = self.training

        def bound_step(modules, h, inputs):
            ranges, inputs = inputs
            qblock = QuantizedBlock(modules[0], ranges, training)
            h, out = step((qblock,) + tuple(modules[1:]), h, inputs)
            return h, (out, qblock.updated_ranges)

        x, (outs, ranges) = self.backbone.walk(x, bound_step, (self.ranges_variable[...], per_unit),
                                               companions)
        if training:
            self.ranges_variable[...] = ranges
        return x, outs

    def walk_active(self, x, active, step, per_unit=None):
        def bound_step(block, h, inputs):
            ranges, inputs = inputs
            return step(QuantizedBlock(block, ranges), h, inputs)

        return self.backbone.walk_active(x, active, bound_step, (self.ranges_variable[...], per_unit))
