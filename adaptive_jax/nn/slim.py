"""Slimmable layers (Yu et al.; docs/methods.md 2.4, 4): one set of weights, run on the first
ceil(w * C) channels for a static width w, so every narrower sub-net is a prefix of the full one.

- `SlimConv`: the kernel sliced to the input's channels and the requested output channels; the
  slice is static (the width is Python data), so a narrower sub-net compiles to smaller convs and
  really costs less (counted from the jaxpr by `cost`).
- `SwitchableBatchNorm`: a private BN per width (a shared BN mixes statistics of different
  sub-nets: Slimmable Networks' switchable BN).
- `SlimLinear`: the classifier reading the first channels of its input.
- `recalibrate_batch_norm`: re-estimates a width's BN statistics from training batches after
  training (US-Nets' BN calibration), as exact means over the batches, not a moving average.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax.nn.conv import conv2d


def is_scalar_width(value) -> bool:
    """A Python or numpy real number (or 0-d numpy array), not a bool: one width, not three."""
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number)


def as_width(value) -> float:
    """`value` as a width: a real number in (0, 1] (numpy scalars welcome) as a Python float.

    Widths are static (they choose the shapes that compile), so a bool, a string or a traced jax
    value is an error that says what was expected."""
    if not is_scalar_width(value):
        hint = (" (pass the number itself, e.g. 0.5)" if isinstance(value, str) else
                " (a width is static Python data; it cannot be traced)" if isinstance(value, jax.Array)
                else "")
        raise TypeError(f"a width is a number in (0, 1] such as 0.5, got {type(value).__name__} "
                        f"{value!r}{hint}")
    width = float(value)
    if not 0.0 < width <= 1.0:
        raise ValueError(f"a width must be in (0, 1], got {width}")
    return width


def slim_channels(channels: int, width: float) -> int:
    """ceil(width * channels), at least 1: how many channels a layer keeps at `width`."""
    return max(1, math.ceil(as_width(width) * channels - 1e-9))


def width_index(widths: Sequence[float], width: float) -> int:
    width = as_width(width)
    for i, w in enumerate(widths):
        if abs(w - width) < 1e-9:
            return i
    raise ValueError(f"unknown width {width}; this model has widths {tuple(widths)}")


class SlimConv(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, size: int, stride: int = 1, *,
                 lowering: str = "auto", rngs: nnx.Rngs):
        init = nnx.initializers.he_normal()
        self.kernel = nnx.Param(init(rngs.params(), (size, size, in_channels, out_channels)))
        self.stride, self.pad, self.lowering = stride, size // 2, lowering

    def __call__(self, x: jax.Array, out_channels: int) -> jax.Array:
        full = self.kernel[...]
        if x.shape[-1] > full.shape[2] or out_channels > full.shape[3]:
            raise ValueError(f"SlimConv holds {full.shape[2]} -> {full.shape[3]} channels, "
                             f"asked for {x.shape[-1]} -> {out_channels}")
        w = full[:, :, :x.shape[-1], :out_channels]
        return conv2d(x, w, (self.stride, self.stride), ((self.pad, self.pad),) * 2, self.lowering)


class SwitchableBatchNorm(nnx.Module):
    def __init__(self, channels: int, widths: Sequence[float], *, rngs: nnx.Rngs):
        self.widths = tuple(widths)
        # PyTorch's defaults, as in the static ResNets
        self.norms = nnx.List([nnx.BatchNorm(slim_channels(channels, w), momentum=0.9,
                                             epsilon=1e-5, rngs=rngs) for w in self.widths])

    def __call__(self, x: jax.Array, width: float) -> jax.Array:
        norm = self.norms[width_index(self.widths, width)]
        if x.shape[-1] != norm.num_features:
            raise ValueError(f"width {width}: BN expects {norm.num_features} channels, "
                             f"got {x.shape[-1]}")
        return norm(x)


class SlimLinear(nnx.Module):
    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(),
                                                                (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...][:x.shape[-1]] + self.bias[...]


def recalibrate_batch_norm(model: nnx.Module, forward: Callable[[nnx.Module, jax.Array], jax.Array],
                           batches: Iterable[jax.Array]) -> int:
    """Re-estimates the running statistics that `forward(model, images)` uses, from `batches`.

    Every BatchNorm the forward pass touches ends as the exact mean over the batches of their
    batch statistics (momentum i / (i + 1) for batch i); untouched BNs (other widths) keep theirs.
    Returns the number of batches used. The model is left in eval mode.
    """
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    saved = [n.momentum for n in norms]
    model.train()
    count = 0
    try:
        for i, images in enumerate(batches):
            for n in norms:
                n.momentum = i / (i + 1)
            forward(model, images)
            count += 1
    finally:
        for n, m in zip(norms, saved):
            n.momentum = m
        model.eval()
    if count == 0:
        raise ValueError("recalibrate_batch_norm needs at least one batch")
    return count
