"""2-D convolution whose gradients are lowered per backend: fast on XLA:CPU, also inside `lax.cond`.

The op is plain `lax.conv_general_dilated` (NHWC input, HWIO kernel) going forward. On CPU both
gradients are written differently (the weight gradient as matmuls, the input gradient as a
plain convolution); every other backend keeps XLA's own.

Why: XLA lowers a conv's weight gradient to a second convolution that contracts over the batch,
with the input transposed to (C, H, W, B) and the output gradient used as a (H, W) sized kernel.
On XLA:CPU that convolution and the two transposes feeding it (into which XLA fuses the batch-norm
backward, read in transposed order) took 56 % of a ResNet-20 training step
(`python -m benchmarks.train_throughput`; the per-op profile of the issue 3 note, which
`python -m benchmarks.step_profile --conv_lowering=xla` now gives). Here the weight
gradient is instead a sum of matmuls over the taps of the kernel, on operands in their natural
NHWC layout:

    dW[i, j] = sum_{b,h,w} x_pad[b, s*h + i, s*w + j, :]^T dY[b, h, w, :]

For stride 1 the kernel columns are folded into the matmul: dY is written once, shifted by each
column offset j, side by side as (B, H, W_pad, kw * O), and each kernel row i is then one matmul of
that with the row-shifted input, `kh` matmuls of width kw * O in all. Strided convs (the stage
transitions, whose operands are 4x smaller) use one matmul per tap on a strided slice.
Measured on ResNet-20, batch 128, one core: the whole training step goes from 2.47 s to 1.77 s.
That was an AMD EPYC of an earlier session; on a Zen 4 core with AVX-512, where XLA:CPU runs its own
weight-gradient convolution on YNNPACK, the two lowerings ran even (docs/design.md, "Choices
already measured"; `python -m benchmarks.step_profile` shows where a step's time goes).

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

LOWERINGS = ("auto", "xla", "shifted_matmul")
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


def shifted_matmul_weight_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int],
                               strides: tuple[int, int], padding: Padding) -> jax.Array:
    """The weight gradient as matmuls over kernel taps, operands in NHWC (see module doc)."""
    kh, kw, cin, cout = kernel_shape
    batch, out_h, out_w, _ = dy.shape
    x_pad = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    if strides != (1, 1) or kw == 1:
        sh, sw = strides
        taps = []
        for i in range(kh):
            for j in range(kw):
                window = lax.slice(x_pad, (0, i, j, 0),
                                   (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
                                   (1, sh, sw, 1))
                taps.append(_matmul_over_rows(window, dy))
        return jnp.stack(taps).reshape(kh, kw, cin, cout)
    # Stride 1: dY placed at column offset j of a row as wide as the padded input, so that row
    # position w of the input meets dY[w - j]; the kw offsets side by side in one operand.
    pad_w = x_pad.shape[2]
    dy_cols = jnp.concatenate(
        [jnp.pad(dy, ((0, 0), (0, 0), (j, pad_w - out_w - j), (0, 0))) for j in range(kw)], axis=-1)
    rows = [_matmul_over_rows(lax.slice_in_dim(x_pad, i, i + out_h, axis=1), dy_cols)
            for i in range(kh)]  # each (cin, kw * cout)
    return jnp.stack(rows).reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3)


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
    if lowering == "shifted_matmul":
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
    dw = _lowered(lowering, xla_weight_grad, shifted_matmul_weight_grad, x, dy, w.shape, strides,
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
