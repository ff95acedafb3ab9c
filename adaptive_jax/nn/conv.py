"""2-D convolution whose gradients are lowered per backend: fast on XLA:CPU, also inside `lax.cond`.

The op is plain `lax.conv_general_dilated` (NHWC input, HWIO kernel) going forward. On CPU both
gradients are written differently (`lowering="cpu"`, which `"auto"` picks there); every other
backend keeps XLA's own.

The weight gradient contracts the input with dY over the batch and the output positions:

    dW[i, j] = sum_{b,h,w} x_pad[b, s*h + i, s*w + j, :]^T dY[b, h, w, :]

XLA writes it as a second convolution, the input transposed to (C, H, W, B) images of B channels
and dY to a (H, W, B, O) kernel. On XLA:CPU the transpose is where the time went: XLA fuses the
input's producer (batch norm and ReLU in a ResNet) into it and recomputes it reading its operands
in transposed order, 35 ms per 32x32x16 conv at batch 128 on a Zen 4 core, 24 % of a ResNet-20
step (`python -m benchmarks.step_profile --conv_lowering=xla`). The CPU form keeps XLA's
convolution and writes the transposed input through a matmul with the identity instead
(`_materialised_channels_first`): XLA cannot fuse through a matmul, so the producer runs once in
its own order and the matmul writes the (C, H, W, B) layout. Strided and 1x1 convs (the stage
transitions, whose operands are 4x smaller) are faster as one matmul per kernel tap on a strided
slice of the input, in NHWC (`tap_matmul_weight_grad`). Alone, with no producer to fuse, XLA's
form and this one run even at stride 1 (11.0 / 10.1 / 8.4 ms against 11.1 / 12.2 / 8.7 at
32x32x16 / 16x16x32 / 8x8x64, batch 128, a Zen 4 core, 2026-12-06; `python -m
benchmarks.train_throughput`, part 2), and the tap matmuls win at stride 2 (7.7 / 0.8 ms against
9.2 / 5.1 for the 3x3 / 1x1 at 32x32x16). In a training step the matmul is what counts: a
ResNet-20 step takes 0.82x the time of XLA's own gradients, and 0.82x that of the tap matmuls at
every stride that this module used before (docs/design.md, "Choices already measured").

The input gradient is a convolution of dY with the kernel flipped in space and its in / out
channels swapped, dY dilated by the stride (`lhs_dilation`): the same maths as XLA's transpose
rule, which instead emits a convolution with the kernel's channels in (out, in) order and a
reversal. XLA:CPU runs its form as fast at the top level, but inside a `lax.cond` branch (a block
that stochastic depth or a static plan may drop, `CifarResNet.drop_blocks`) 17-19x slower at
32x32x16 and batch 128 (744-875 vs 45-46 ms; 11-12x for the stride-2 3x3), while the plain form
runs at about the same speed in and out of the branch (one core, two runs;
`python -m benchmarks.stochastic_depth_cost`, part 2, times both forms, part 1 the whole step).

`lax.platform_dependent` keeps XLA's own gradients on every other backend (GPU and TPU have fast
convolution gradients), so the accelerator path is untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

LOWERINGS = ("auto", "xla", "cpu")
_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def xla_weight_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                    strides: tuple[int, int], padding: Padding) -> jax.Array:
    """XLA's own weight gradient (the transpose rule of `lax.conv_general_dilated`)."""
    w = jnp.zeros(kernel_shape, x.dtype)
    return jax.vjp(lambda w: _conv(x, w, strides, padding), w)[1](dy)[0]


def _matmul_over_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """(..., M) x (..., N) -> (M, N), contracting every leading axis: a^T b without a transpose."""
    return lax.dot_general(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]),
                           (((0,), (0,)), ((), ())))


def tap_matmul_weight_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                           strides: tuple[int, int], padding: Padding) -> jax.Array:
    """The weight gradient as one matmul per kernel tap on a strided slice of the input, operands
    in NHWC (see module doc): the CPU form for strided and 1x1 convolutions."""
    kh, kw, cin, cout = kernel_shape
    batch, out_h, out_w, _ = dy.shape
    sh, sw = strides
    x_pad = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(x_pad, (0, i, j, 0),
                               (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
                               (1, sh, sw, 1))
            taps.append(_matmul_over_rows(window, dy))
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


def _materialised_channels_first(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (C, H, W, B), by a matmul with the identity that XLA cannot fuse through.

    A plain transpose here would let XLA fuse whatever produced `x` (batch norm and ReLU in a
    ResNet) into it, recomputing it while reading its operands in transposed order: 35 ms per
    32x32x16 conv at batch 128 on a Zen 4 core. Here the batch moves next to the channels first
    (whole 64-byte rows of 16 channels read at a time), then the matmul writes the transposed
    layout: 7 ms for both at that size (`benchmarks.step_profile`).
    """
    b, h, w, c = x.shape
    rows = x.transpose(1, 2, 0, 3).reshape(h * w * b, c)
    eye = jnp.eye(c, dtype=x.dtype)
    return lax.dot_general(eye, rows, (((1,), (1,)), ((), ()))).reshape(c, h, w, b)


def batch_conv_weight_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                           strides: tuple[int, int], padding: Padding) -> jax.Array:
    """The weight gradient of a stride-1 conv as one convolution contracting over the batch (see
    module doc): the input as (C, H, W, B) images of B channels, dY as a (H, W, B, O) kernel."""
    if tuple(strides) != (1, 1):
        raise ValueError(f"batch_conv_weight_grad is for stride-1 convolutions, got {strides}")
    del kernel_shape  # the signature of every weight gradient here; x, dY and padding fix it
    images = _materialised_channels_first(x)
    kernel = dy.transpose(1, 2, 0, 3)
    out = lax.conv_general_dilated(images, kernel, (1, 1), padding, dimension_numbers=_NHWC)
    return out.transpose(1, 2, 0, 3)  # (cin, kh, kw, cout) -> HWIO


def cpu_weight_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                    strides: tuple[int, int], padding: Padding) -> jax.Array:
    """The CPU weight gradient: one convolution over the batch for stride-1 kernels wider than
    1x1, one matmul per tap otherwise (each the faster there; module doc)."""
    if tuple(strides) == (1, 1) and tuple(kernel_shape[:2]) != (1, 1):
        return batch_conv_weight_grad(x, dy, kernel_shape, strides, padding)
    return tap_matmul_weight_grad(x, dy, kernel_shape, strides, padding)


def xla_input_grad(dy: jax.Array, w: jax.Array, input_shape: Sequence[int],
                   strides: tuple[int, int], padding: Padding) -> jax.Array:
    """XLA's own input gradient (the transpose rule of `lax.conv_general_dilated`)."""
    x = jnp.zeros(input_shape, dy.dtype)
    return jax.vjp(lambda x: _conv(x, w, strides, padding), x)[1](dy)[0]


def flipped_kernel_input_grad(dy: jax.Array, w: jax.Array, input_shape: Sequence[int],
                              strides: tuple[int, int], padding: Padding) -> jax.Array:
    """The input gradient as a plain NHWC x HWIO convolution: dY, dilated by the stride, with the
    kernel flipped in space and its in / out channels swapped (see module doc). Falls back to
    XLA's form for a padding wider than the kernel (never in a CIFAR ResNet)."""
    kh, kw = w.shape[:2]
    pads = []
    for size, k, s, (lo, hi) in zip(input_shape[1:3], (kh, kw), strides, padding):
        if lo > k - 1 or hi > k - 1:
            return xla_input_grad(dy, w, input_shape, strides, padding)
        rest = (size + lo + hi - k) % s  # input rows the forward conv's last window never reached
        pads.append((k - 1 - lo, k - 1 - hi + rest))
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    return lax.conv_general_dilated(dy, flipped, (1, 1), tuple(pads), lhs_dilation=strides,
                                    dimension_numbers=_NHWC)


def _lowered(lowering: str, xla: Callable, cpu: Callable, a, b, *static):
    """`xla(a, b, *static)` or the CPU form `cpu(a, b, *static)` as `lowering` picks ("auto":
    chosen when the computation is lowered for a platform, not when it is traced)."""
    if lowering == "xla":
        return xla(a, b, *static)
    if lowering == "cpu":
        return cpu(a, b, *static)
    return lax.platform_dependent(a, b, cpu=lambda a, b: cpu(a, b, *static),
                                  default=lambda a, b: xla(a, b, *static))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, w, strides, padding, lowering):
    return _conv(x, w, strides, padding)


def _conv2d_fwd(x, w, strides, padding, lowering):
    return _conv(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, lowering, residuals, dy):
    x, w = residuals
    dx = _lowered(lowering, xla_input_grad, flipped_kernel_input_grad, dy, w, x.shape, strides,
                  padding)
    dw = _lowered(lowering, xla_weight_grad, cpu_weight_grad, x, dy, w.shape, strides,
                  padding)
    return dx, dw.astype(w.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
           padding: str | Sequence[tuple[int, int]] = "SAME", lowering: str = "auto") -> jax.Array:
    """NHWC x HWIO convolution; `lowering` picks the weight gradient ("auto": by backend)."""
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown conv lowering {lowering!r}; expected one of {LOWERINGS}")
    if x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d expects NHWC input and HWIO kernel with matching channels, "
                         f"got input {x.shape} and kernel {w.shape}")
    strides = tuple(int(s) for s in strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv2d(x, w, strides, padding, lowering)


@functools.cache  # one function per lowering: equal model specs give equal graph definitions
def conv_general_dilated_fn(lowering: str = "auto"):
    """A drop-in for `lax.conv_general_dilated` as `nnx.Conv(conv_general_dilated=...)` calls it.

    Plain 2-D NHWC convolutions go through `conv2d`; anything else (dilation, groups, other
    layouts) goes to `lax.conv_general_dilated` unchanged, so wrapping a Conv never changes maths.
    """
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown conv lowering {lowering!r}; expected one of {LOWERINGS}")

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             **kwargs):
        plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers, lhs.ndim)
                 and _is_ones(lhs_dilation) and _is_ones(rhs_dilation) and feature_group_count == 1
                 and kwargs.get("precision") is None
                 and kwargs.get("preferred_element_type") is None)
        if not plain:
            return lax.conv_general_dilated(
                lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count, **kwargs)
        return conv2d(lhs, rhs, window_strides, padding, lowering)

    return conv_general_dilated


def _is_ones(dilation) -> bool:
    return dilation is None or all(d == 1 for d in dilation)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
    if dimension_numbers is None:
        return False  # lax's default is NCHW / OIHW
    dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    return dn == lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, _NHWC)
