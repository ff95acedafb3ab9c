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

Inference can also take the weights already quantised (`prepare_weights`: every conv's kernel on
each option's grid, and as int8 for the 8-bit integer kernels, computed once): an option then
costs its activations' quantisation and its convolutions, not a pass over each kernel per call,
which is what kept the 10-16-bit options slower than float at batch 1 (docs/dfs.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax.models.resnet import BasicBlock, CifarResNet
from adaptive_jax.nn import conv2d, quant

PAD = ((1, 1), (1, 1))


class QuantizedBlock:
    """A residual block and its activation ranges (options, 2); what a `Bitwidths` menu runs.

    `ranges` None: no ranges kept (pricing, or a bare block): each conv's input range is its own
    max over the tensor. In training, the menu leaves the block's new running ranges in
    `updated_ranges` for the walk to write back. `weights`: the model's `PreparedWeights` and
    `index` this block's unit number in it (inference), or None: quantise the kernels per call."""

    def __init__(self, block: BasicBlock, ranges: jax.Array | None, training: bool = False,
                 index=None, weights: "PreparedWeights | None" = None):
        self.block, self.ranges, self.training = block, ranges, training
        self.index, self.weights = index, weights
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
                   kernel: str = "float", prepared: dict | None = None) -> jax.Array:
    """`conv` on `x` with weights (per output channel) and input (over [0, max_value]) on b-bit
    grids. `kernel`: "float" computes on the dequantised values (any b); "xla" / "patches" run
    b = 8 in int8 x int8 -> int32 (`quant.unsigned_int8_conv2d`), the same values up to float
    rounding. Which is faster is measured per conv shape (`python -m benchmarks.dfs_options`).
    `prepared`: this conv's kernel already quantised (`PreparedWeights.conv`), the same values."""
    strides = _strides(conv)
    if kernel != "float":
        if bits != 8:
            raise ValueError(f"the integer kernels run 8-bit options only, not {bits} bits")
        if prepared is None:
            return quant.unsigned_int8_conv2d(x, max_value, conv.kernel[...], strides, PAD, kernel)
        return quant.prepared_int8_conv2d(x, max_value, prepared["int8"], prepared["scale"],
                                          prepared["offset"], strides, PAD, kernel)
    w = (quant.fake_quant_symmetric(conv.kernel[...], bits) if prepared is None
         else prepared["grid"])
    return conv2d(quant.fake_quant_unsigned(x, bits, max_value), w, strides, PAD, "auto")


def residual_at_bits(qblock: QuantizedBlock, x: jax.Array, bits: int, ranges: jax.Array | None,
                     kernels: dict | None = None) -> jax.Array:
    """The block's residual with both convs' weights and inputs at `bits` (inference: running BN
    statistics; `ranges` (2,) the running ranges, or None for each tensor's own max)."""
    block, kernels = qblock.block, (kernels or {}) if bits == 8 else {}
    weights = qblock.weights

    def input_range(h, i):
        if weights is not None:  # prepared: the ranges were checked to be set
            return ranges[i]
        top = jnp.max(h)  # a range never set (an untrained model) is the tensor's own max
        return top if ranges is None else jnp.where(ranges[i] > 0, ranges[i], top)

    def conv(module, h, i):
        prepared = (None if weights is None
                    else weights.conv(bits, conv_key(module), qblock.index, i))
        return quantized_conv(module, h, bits, input_range(h, i),
                              kernels.get(conv_key(module), "float"), prepared)

    y = nnx.relu(block.bn1(conv(block.conv1, x, 0)))
    return block.bn2(conv(block.conv2, y, 1))


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


def residual_probe(qblock: QuantizedBlock, x: jax.Array, option: jax.Array,
                   row_bits: jax.Array, per_bitwidth: bool) -> jax.Array:
    """Training, the two-path estimator's second path: the residual of every row at another
    option (`option` (B,), `row_bits` (B,), 32 = float), with each option's running range (a
    range not set yet: the row's own max) and BN on this batch's statistics, as the training
    forward normalises; nothing is updated (no ranges, no running BN statistics) and no gradient
    flows through it (`Bitwidths(estimator="two_path")`)."""
    block = qblock.block
    x = jax.lax.stop_gradient(x)
    bits = row_bits.astype(x.dtype)[:, None, None, None]

    def quantise_input(h, which):
        running = qblock.ranges[option if per_bitwidth else jnp.ones_like(option), which]
        row_range = jnp.where(running > 0, running, _row_max(h))
        return quant.fake_quant_unsigned(h, bits, row_range[:, None, None, None])

    def batch_norm(norm, y):  # the training forward's normalisation, without its side effects
        mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
        return (y - mean) * jax.lax.rsqrt(var + norm.epsilon) * norm.scale[...] + norm.bias[...]

    y = nnx.relu(batch_norm(block.bn1, block.conv1(quantise_input(x, 0))))
    return jax.lax.stop_gradient(batch_norm(block.bn2, block.conv2(quantise_input(y, 1))))


@jax.tree_util.register_pytree_node_class
class PreparedWeights:
    """Every quantised option's conv kernels, computed once for inference (`prepare_weights`).

    `stacks[bits][(in, out, stride)]`: the kernels of every conv of that shape, stacked: "grid"
    (float32 values on the b-bit grid) and, at 8 bits, "int8" / "scale" / "offset"
    (`quant.int8_kernel`). `rows[i][unit]`: the row of the unit's conv i (0: conv1, 1: conv2) in
    its shape's stack (static). A pytree: jit takes it as an argument, like the parameters."""

    def __init__(self, stacks: dict, rows: tuple[tuple[int, ...], tuple[int, ...]]):
        self.stacks, self.rows = stacks, rows

    def tree_flatten(self):
        return (self.stacks,), self.rows

    @classmethod
    def tree_unflatten(cls, rows, children):
        return cls(children[0], rows)

    def conv(self, bits: int, key: tuple[int, int, int], unit, which: int) -> dict:
        """The prepared kernel of conv `which` (shape `key`) of unit `unit` (an int or a traced
        index: a walk's scan) at `bits`."""
        if bits not in self.stacks:
            raise ValueError(f"no prepared weights at {bits} bits (prepared: {sorted(self.stacks)})")
        row = jnp.asarray(self.rows[which], jnp.int32)[unit]
        return jax.tree.map(lambda stacked: stacked[row], self.stacks[bits][key])


def prepare_weights(backbone: CifarResNet, ranges: jax.Array, widths: tuple[int, ...],
                    per_bitwidth_ranges: bool = True) -> PreparedWeights:
    """The kernels of every conv at every bitwidth of `widths` below 32, quantised once.

    `ranges` (units, options, 2) must be calibrated (every range a quantised option reads is
    set): prepared inference reads them as they are, without the per-call unset-range fallback."""
    quantised = [k for k, bits in enumerate(widths, start=1) if bits != 32]
    used = np.asarray(jax.device_get(ranges))[:, quantised if per_bitwidth_ranges else [1]]
    if quantised and not (used > 0).all():
        raise ValueError("prepared weights need calibrated activation ranges and some are unset "
                         "(zero): run one training-mode forward (or train.dfs.calibrate_ranges) "
                         "first")
    members: dict[tuple, list] = {}
    rows = ([], [])
    for block in backbone.units():
        for which, conv in enumerate((block.conv1, block.conv2)):
            group = members.setdefault(conv_key(conv), [])
            rows[which].append(len(group))
            group.append(conv.kernel[...])
    stacks = _quantise_stacks({key: jnp.stack(kernels) for key, kernels in members.items()},
                              tuple(b for b in widths if b != 32))
    return PreparedWeights(stacks, (tuple(rows[0]), tuple(rows[1])))


def prepare_kernel(w: jax.Array, bits: int) -> dict:
    """One HWIO kernel as inference runs it at `bits` (what `quantized_conv` takes as
    `prepared`): "grid", its values on the b-bit grid, and at 8 bits "int8" / "scale" / "offset"
    for the integer kernels (`quant.int8_kernel`)."""
    entry = {"grid": quant.fake_quant_symmetric(w, bits)}
    if bits == 8:
        entry.update(zip(("int8", "scale", "offset"), quant.int8_kernel(w)))
    return entry


@jax.jit(static_argnums=1)
def _quantise_stacks(kernels: dict, widths: tuple[int, ...]) -> dict:
    """{bits: {shape: prepared}} for stacked kernels {shape: (n, kh, kw, in, out)}: one compiled
    call (op by op, this is ~100 small compilations)."""
    return {bits: {key: jax.vmap(lambda k, b=bits: prepare_kernel(k, b))(w)
                   for key, w in kernels.items()} for bits in widths}


class QuantizedResNet:
    """`backbone` walked with each block bound to its ranges (a view: the modules stay the
    backbone's and the ranges variable the owner's; plain Python, made per call). `weights`:
    `PreparedWeights` for inference (the same outputs, less work per call), or None."""

    def __init__(self, backbone: CifarResNet, ranges: nnx.Variable,
                 weights: PreparedWeights | None = None):
        self.backbone, self.ranges_variable, self.weights = backbone, ranges, weights
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
        return [QuantizedBlock(b, ranges[i], index=i, weights=self.weights)
                for i, b in enumerate(self.backbone.units())]

    def _per_unit(self, per_unit):
        """What every walk's step gets besides the caller's inputs: the block's ranges and
        unit number (where the prepared weights are looked up)."""
        if self.weights is not None and self.training:
            raise ValueError("prepared weights are for inference (they are fixed copies of the "
                             "kernels): walk the quantised net without them in training")
        ranges = self.ranges_variable[...]
        return (ranges, jnp.arange(ranges.shape[0]), per_unit)

    def walk(self, x, step, per_unit=None, companions=None):
        training = self.training

        def bound_step(modules, h, inputs):
            ranges, index, inputs = inputs
            qblock = QuantizedBlock(modules[0], ranges, training, index, self.weights)
            h, out = step((qblock,) + tuple(modules[1:]), h, inputs)
            return h, (out, qblock.updated_ranges)

        x, (outs, ranges) = self.backbone.walk(x, bound_step, self._per_unit(per_unit), companions)
        if training:
            self.ranges_variable[...] = ranges
        return x, outs

    def walk_active(self, x, active, step, per_unit=None):
        def bound_step(block, h, inputs):
            ranges, index, inputs = inputs
            return step(QuantizedBlock(block, ranges, index=index, weights=self.weights), h, inputs)

        return self.backbone.walk_active(x, active, bound_step, self._per_unit(per_unit))
