"""adaptive_jax.nn.conv: every lowering equals lax.conv in value and gradients, on every shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.nn import conv2d, conv_general_dilated_fn
from adaptive_jax.nn.conv import batch_conv_weight_grad
from adaptive_jax.train.steps import cross_entropy

# (height/width, in channels, out channels, kernel, stride): every conv of the CIFAR ResNets
# (stem, stage convs, stride-2 transitions, 1x1 projections), then odd sizes and channel counts.
MODEL_SHAPES = [(32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (32, 16, 32, 1, 2),
                (16, 32, 32, 3, 1), (16, 32, 64, 3, 2), (16, 32, 64, 1, 2), (8, 64, 64, 3, 1)]
ODD_SHAPES = [(7, 5, 6, 3, 2), (9, 4, 3, 3, 1), (6, 3, 5, 1, 1), (10, 2, 4, 5, 1), (11, 3, 4, 5, 3)]


def _normal(seed: int, shape) -> jax.Array:
    # numpy, not jax.random: threefry compiles anew for every shape (seconds each on XLA:CPU).
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _reference(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _value_and_grads(fn, x, w, dy):
    y, vjp = jax.vjp(fn, x, w)
    return (y, *vjp(dy))


@pytest.mark.parametrize("hw,cin,cout,k,stride", MODEL_SHAPES + ODD_SHAPES)
def test_conv2d_matches_lax_conv(hw, cin, cout, k, stride):
    x = _normal(0, (2, hw, hw, cin))
    w = _normal(1, (k, k, cin, cout)) / np.sqrt(k * k * cin)
    padding = ((k // 2, k // 2), (k // 2, k // 2))
    dy = _normal(2, _reference(x, w, stride, padding).shape)

    @jax.jit  # one compilation for the reference and both lowerings
    def all_lowerings(x, w, dy):
        want = _value_and_grads(lambda x, w: _reference(x, w, stride, padding), x, w, dy)
        got = {lowering: _value_and_grads(
            lambda x, w: conv2d(x, w, (stride, stride), padding, lowering), x, w, dy)
            for lowering in ("cpu", "auto")}
        return want, got

    want, got = all_lowerings(x, w, dy)
    for lowering, values in got.items():
        for name, g, r in zip(("output", "input grad", "weight grad"), values, want):
            assert g.shape == r.shape, (lowering, name)
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()),
                                       err_msg=f"{lowering}: {name}")


def test_asymmetric_and_string_padding():
    x, w = _normal(0, (2, 8, 8, 3)), _normal(1, (3, 3, 3, 4))
    for padding in (((0, 1), (1, 0)), "SAME", "VALID"):
        for stride in (1, 2):
            want = jax.grad(lambda x, w: (_reference(x, w, stride, padding) ** 2).sum(),
                            argnums=(0, 1))(x, w)
            got = jax.grad(lambda x, w: (conv2d(x, w, (stride, stride), padding,
                                                "cpu") ** 2).sum(), argnums=(0, 1))(x, w)
            for name, g, r in zip(("input grad", "weight grad"), got, want):
                np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4,
                                           err_msg=f"{name}, padding {padding}, stride {stride}")


def _compiled_ops(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def test_auto_picks_the_cpu_weight_gradient_on_cpu():
    x = jnp.ones((2, 8, 8, 4))

    def weight_grad(lowering, w, stride):
        return lambda x, w: jax.grad(
            lambda w: conv2d(x, w, (stride, stride), "SAME", lowering).sum())(w)

    assert jax.default_backend() == "cpu"
    # Stride 1: XLA's own form and the CPU form are both one convolution over the batch, but
    # only the CPU form first sends the input through a matmul (what XLA cannot fuse through).
    w = jnp.ones((3, 3, 4, 4))
    assert " dot(" not in _compiled_ops(weight_grad("xla", w, 1), x, w)
    assert " dot(" in _compiled_ops(weight_grad("auto", w, 1), x, w)
    # Strided: XLA's form is a convolution; the CPU form is matmuls over the taps, none left.
    for kernel in ((3, 3, 4, 8), (1, 1, 4, 8)):
        w = jnp.ones(kernel)
        assert _compiled_ops(weight_grad("xla", w, 2), x, w).count(" convolution(") >= 1
        assert _compiled_ops(weight_grad("auto", w, 2), x, w).count(" convolution(") == 0


def test_batch_conv_weight_grad_is_for_stride_one():
    with pytest.raises(ValueError, match=r"stride-1 convolutions, got \(2, 2\)"):
        batch_conv_weight_grad(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 2, 2, 3)), (3, 3, 2, 3),
                               (2, 2), ((1, 1), (1, 1)))


def test_other_convolutions_fall_through_to_lax():
    conv = conv_general_dilated_fn("auto")
    x, w = _normal(0, (2, 9, 9, 4)), _normal(1, (3, 3, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    for kwargs in ({"feature_group_count": 2},
                   {"rhs_dilation": (2, 2), "feature_group_count": 2}):
        want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, **kwargs)
        got = conv(x, w, (1, 1), "SAME", dimension_numbers=dn, **kwargs)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # lax's default layout (NCHW / OIHW) is not the NHWC op either: passed through unchanged.
    x_nchw = jnp.transpose(x, (0, 3, 1, 2))
    w_oihw = _normal(2, (4, 4, 3, 3))
    np.testing.assert_allclose(conv(x_nchw, w_oihw, (1, 1), "SAME"),
                               lax.conv_general_dilated(x_nchw, w_oihw, (1, 1), "SAME"), rtol=1e-6)


def test_bad_arguments_are_named():
    x, w = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    with pytest.raises(ValueError, match="unknown conv lowering 'fast'"):
        conv2d(x, w, lowering="fast")
    with pytest.raises(ValueError, match="unknown conv lowering"):
        conv_general_dilated_fn("fast")
    with pytest.raises(ValueError, match=r"NHWC input and HWIO kernel.*\(1, 8, 8, 3\).*\(3, 3, 4, 4\)"):
        conv2d(x, jnp.ones((3, 3, 4, 4)))
    with pytest.raises(ValueError, match="unknown conv_lowering"):
        ResNetSpec(20, conv_lowering="fast")


def test_resnet_gradients_do_not_depend_on_the_lowering():
    model = CifarResNet(ResNetSpec(8, conv_lowering="auto"), rngs=nnx.Rngs(0))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images, labels = _normal(3, (2, 16, 16, 3)), jnp.arange(2)

    def grads(lowering):
        # The lowering lives in the graph definition; the same weights go into both.
        graphdef = nnx.split(nnx.eval_shape(
            lambda: CifarResNet(ResNetSpec(8, conv_lowering=lowering), rngs=nnx.Rngs(0))))[0]

        def loss(params):
            # Fresh batch-stat leaves inside the trace, so training-mode BN may write to them.
            model = nnx.merge(graphdef, params, jax.tree.map(jnp.array, batch_stats))
            model.train()
            return cross_entropy(model(images), labels, 10).mean()

        return jax.jit(jax.grad(loss))(params)

    got, want = grads("auto"), grads("xla")
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.abs(r).max()) + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))
