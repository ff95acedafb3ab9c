"""Uniform quantisation, the ground DFS's bitwidth options stand on (docs/methods.md section 7).

Two halves:
- **fake quantisation** for training: float in, float out, the values on a b-bit grid, rounding
  passed straight through in the backward pass (`ste_round`), so a network learns under the
  error it will meet. Weights are symmetric per output channel (`fake_quant_symmetric`);
  activations after a ReLU are non-negative, so they use all 2^b levels on [0, max]
  (`fake_quant_unsigned`), with `max` a range the caller keeps (per bitwidth, in DFS).
- **integer execution** for inference: `quantize_symmetric` gives int8 values and their scale,
  and `int_conv2d` convolves int8 by int8 into exact int32 sums, by one of two lowerings:
  "xla" (XLA's integer convolution, `preferred_element_type=int32`) or "patches" (the 3x3 taps
  sliced out and concatenated along channels, then one int8 matmul). Which is faster depends on
  the shape and the machine; `python -m benchmarks.int8_conv` measures every conv shape of the
  CIFAR ResNets against float32, and an executor picks per shape from what was measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

INT_LOWERINGS = ("xla", "patches")


def ste_round(x: jax.Array) -> jax.Array:
    """round(x) going forward, the identity going back (straight-through estimator)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def _saturate(v: jax.Array, low, high) -> jax.Array:
    """clip(v, low, high) whose gradient is 1 on the closed range (jnp.clip halves it at the
    bounds, where the largest weight of a min-max range always sits) and 0 outside."""
    return jnp.where(v > high, high, jnp.where(v < low, low, v))


def _check_bits(bits: int, low: int = 2, high: int = 16) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits must be an integer in [{low}, {high}], got {bits!r}")


def symmetric_scale(w: jax.Array, bits: int, axis: Sequence[int] | None = None) -> jax.Array:
    """max |w| / (2^(bits-1) - 1) over `axis` (default: every axis but the last, i.e. per output
    channel of an HWIO kernel); a channel of zeros gets scale 1 (its values stay 0)."""
    _check_bits(bits)
    axis = tuple(range(w.ndim - 1)) if axis is None else tuple(axis)
    top = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
    return jnp.where(top > 0, top, 1.0) / (2 ** (bits - 1) - 1)


def fake_quant_symmetric(w: jax.Array, bits: int, scale: jax.Array | None = None) -> jax.Array:
    """`w` on the signed b-bit grid {-(2^(b-1)-1) .. 2^(b-1)-1} x scale; straight-through. The
    min-max scale is a constant to the gradient (as in DFS and most quantisation-aware training):
    the largest weight gets no extra gradient through the range it sets."""
    scale = jax.lax.stop_gradient(symmetric_scale(w, bits) if scale is None else scale)
    levels = 2 ** (bits - 1) - 1
    return _saturate(ste_round(w / scale), -levels, levels) * scale


def fake_quant_unsigned(x: jax.Array, bits, max_value: jax.Array) -> jax.Array:
    """Non-negative `x` (post-ReLU) on 2^b levels over [0, max_value]; values above max_value
    saturate (their gradient is zero there, as the clip says); straight-through inside.

    `bits` is a Python int, or an array broadcasting against `x` (a bitwidth per row, chosen at
    run time: DFS's training path); there, rows of 32 bits or more pass through unquantised."""
    if isinstance(bits, (int, np.integer)):
        _check_bits(int(bits))
        levels = 2 ** int(bits) - 1
    else:
        bits = jnp.asarray(bits, x.dtype)
        levels = jnp.exp2(jnp.minimum(bits, 16)) - 1
    scale = jax.lax.stop_gradient(jnp.maximum(max_value, 1e-8) / levels)
    quantised = _saturate(ste_round(x / scale), 0, levels) * scale
    if isinstance(bits, jax.Array):
        return jnp.where(bits >= 32, x, quantised)
    return quantised


def quantize_unsigned_int8(x: jax.Array, max_value: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Non-negative `x` on 256 levels over [0, max_value], stored as int8 offset by -128 (so an
    int8 x int8 product can carry it), and the scale: x ~ (values + 128) * scale."""
    scale = jnp.maximum(max_value, 1e-8) / 255
    levels = jnp.clip(jnp.round(x / scale), 0, 255)
    return (levels - 128).astype(jnp.int8), scale


def unsigned_int8_conv2d(x: jax.Array, max_value: jax.Array, w: jax.Array,
                         strides: Sequence[int], padding: Sequence[tuple[int, int]],
                         lowering: str = "xla") -> jax.Array:
    """conv(fake_quant_unsigned(x, 8, max_value), fake_quant_symmetric(w, 8)) computed in
    integers: x as offset int8 (`quantize_unsigned_int8`), padded with the offset zero (-128),
    the kernel int8 per output channel; the int32 sums corrected for the offset (128 x the sum of
    each output channel's kernel, the same at every position because the padding is offset too)
    and scaled back to float. Equal to the float path up to float32 rounding of its sums."""
    return prepared_int8_conv2d(x, max_value, *int8_kernel(w), strides, padding, lowering)


def int8_kernel(w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What `prepared_int8_conv2d` needs of an HWIO float kernel, computable once per model:
    (int8 values, scale per output channel, offset per output channel = 128 x the channel's sum
    of int8 values, the correction for inputs stored offset by -128)."""
    wq, w_scale = quantize_symmetric(w, 8)
    return wq, w_scale.reshape(-1), 128 * wq.astype(jnp.int32).sum(axis=(0, 1, 2))


def prepared_int8_conv2d(x: jax.Array, max_value: jax.Array, wq: jax.Array, w_scale: jax.Array,
                         offset: jax.Array, strides: Sequence[int],
                         padding: Sequence[tuple[int, int]], lowering: str = "xla") -> jax.Array:
    """`unsigned_int8_conv2d` with the kernel already quantised (`int8_kernel`)."""
    xq, x_scale = quantize_unsigned_int8(x, max_value)
    xq = jnp.pad(xq, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)), constant_values=-128)
    sums = int_conv2d(xq, wq, strides, ((0, 0), (0, 0)), lowering)
    return (sums + offset).astype(jnp.float32) * (x_scale * w_scale)


def quantize_symmetric(x: jax.Array, bits: int = 8,
                       scale: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(int8 values, scale) with x ~ values * scale; bits <= 8 so the values fit int8."""
    _check_bits(bits, high=8)
    scale = symmetric_scale(x, bits) if scale is None else scale
    levels = 2 ** (bits - 1) - 1
    return jnp.clip(jnp.round(x / scale), -levels, levels).astype(jnp.int8), scale


def _patches_3x3(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, int],
                 padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """(B, H', W', kh * kw * C): every tap's input, concatenated in HWI order (the kernel's)."""
    (kh, kw), (sh, sw) = kernel, strides
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    taps = [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1)


def int_conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
               padding: Sequence[tuple[int, int]] = ((1, 1), (1, 1)),
               lowering: str = "xla") -> jax.Array:
    """NHWC int8 x HWIO int8 -> exact int32 sums (no rounding: int8 products summed in int32)."""
    if lowering not in INT_LOWERINGS:
        raise ValueError(f"unknown integer conv lowering {lowering!r}; expected one of {INT_LOWERINGS}")
    if x.dtype != jnp.int8 or w.dtype != jnp.int8:
        raise TypeError(f"int_conv2d takes int8 inputs and kernels (quantize_symmetric), got "
                        f"{x.dtype} and {w.dtype}")
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if lowering == "xla":
        return jax.lax.conv_general_dilated(x, w, strides, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            preferred_element_type=jnp.int32)
    patches = _patches_3x3(x, w.shape[:2], strides, padding)
    return jax.lax.dot_general(patches, w.reshape(-1, w.shape[-1]), (((3,), (0,)), ((), ())),
                               preferred_element_type=jnp.int32)
