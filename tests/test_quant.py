"""Quantisation primitives (nn/quant.py): exact integer convolution by both lowerings, the b-bit
grids, straight-through gradients, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_jax.nn import quant


def _int8(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).integers(-127, 128, shape), jnp.int8)


@pytest.mark.parametrize("lowering", quant.INT_LOWERINGS)
@pytest.mark.parametrize("shape,stride", [((2, 8, 8, 16), 1), ((1, 8, 8, 16), 2), ((3, 4, 4, 32), 1)])
def test_integer_conv_is_exact(lowering, shape, stride):
    x, w = _int8(shape, 0), _int8((3, 3, shape[-1], 8), 1)
    got = quant.int_conv2d(x, w, (stride, stride), ((1, 1), (1, 1)), lowering)
    # the reference: float64 on the host, exact for these magnitudes (|sum| < 2^53)
    want = jax.lax.conv_general_dilated(np.asarray(x, np.float64), np.asarray(w, np.float64),
                                        (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want).astype(np.int64))


def test_fake_quant_grids_and_straight_through_gradients():
    w = jnp.asarray(np.random.default_rng(2).normal(size=(3, 3, 4, 5)), jnp.float32)
    q = quant.fake_quant_symmetric(w, 4)
    scale = quant.symmetric_scale(w, 4)
    steps = np.asarray(q / scale)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)  # on the grid
    assert np.abs(steps).max() <= 7 + 1e-4
    assert float(jnp.abs(q - w).max()) <= float(scale.max()) / 2 + 1e-6
    g = jax.grad(lambda w: quant.fake_quant_symmetric(w, 4).sum())(w)
    np.testing.assert_allclose(g, np.ones_like(g))  # rounding passes gradients straight through
    x = jnp.asarray([0.0, 0.3, 1.0, 2.0])
    qx = quant.fake_quant_unsigned(x, 2, jnp.asarray(1.0))  # 4 levels on [0, 1]
    np.testing.assert_allclose(qx, [0.0, 1 / 3, 1.0, 1.0], rtol=1e-6)
    gx = jax.grad(lambda x: quant.fake_quant_unsigned(x, 2, jnp.asarray(1.0)).sum())(x)
    np.testing.assert_allclose(gx, [1.0, 1.0, 1.0, 0.0])  # saturated above the range


def test_quantized_conv_error_shrinks_with_bits():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
    want = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    errors = []
    for bits in (4, 6, 8):
        xq, sx = quant.quantize_symmetric(x, bits, quant.symmetric_scale(x, bits, axis=(0, 1, 2, 3)))
        wq, sw = quant.quantize_symmetric(w, bits)
        got = quant.int_conv2d(xq, wq).astype(jnp.float32) * sx.reshape(()) * sw.reshape(-1)
        errors.append(float(jnp.abs(got - want).mean() / jnp.abs(want).mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors


def test_bad_bits_and_dtypes_are_named():
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\], got 9"):
        quant.quantize_symmetric(jnp.ones(3), 9)
    with pytest.raises(ValueError, match="bits must be an integer"):
        quant.fake_quant_symmetric(jnp.ones(3), True)
    with pytest.raises(TypeError, match="int_conv2d takes int8"):
        quant.int_conv2d(jnp.ones((1, 4, 4, 2)), _int8((3, 3, 2, 2), 0))
    with pytest.raises(ValueError, match="unknown integer conv lowering 'fast'"):
        quant.int_conv2d(_int8((1, 4, 4, 2), 0), _int8((3, 3, 2, 2), 1), lowering="fast")
