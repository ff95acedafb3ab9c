"""CIFAR ResNets: structure, both shortcut kinds, input checks, scan equals a plain loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax.models import CifarResNet, ResNetSpec, resnet
from adaptive_jax.models.resnet import pad_shortcut


@pytest.mark.parametrize("depth,blocks", [(20, 9), (32, 15), (38, 18), (56, 27), (110, 54)])
def test_block_counts(depth, blocks):
    assert ResNetSpec(depth).num_blocks == blocks


@pytest.mark.parametrize("shortcut", ["projection", "pad"])
def test_forward_shape_and_params(shortcut):
    model = resnet(20, shortcut=shortcut)
    logits = model(jnp.zeros((2, 32, 32, 3)))
    assert logits.shape == (2, 10)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # Hand count: ResNet-20 with the parameter-free shortcut has 269,722 parameters (He et al.'s
    # option A, "0.27M"); the two 1x1 projections add 16*32 + 32*64 weights and 2 BNs (2*(32+64)).
    assert params == 269_722 + (shortcut == "projection") * (16 * 32 + 32 * 64 + 2 * (32 + 64))


def test_stacked_stage_equals_applying_blocks_one_by_one():
    model = resnet(20)
    model.eval()
    stage = model.stages[1]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 16))
    expected = stage.first(x)
    graphdef, state = nnx.split(stage.rest)
    for i in range(stage.num_rest):
        block = nnx.merge(graphdef, jax.tree.map(lambda v: v[i], state))
        expected = block(expected)
    np.testing.assert_allclose(stage(x), expected, rtol=1e-5, atol=1e-5)


def test_pad_shortcut_pools_and_appends_zero_channels():
    """BlockDrop's layout (He et al.'s option A): input channel i stays channel i, zeros after."""
    x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
    y = pad_shortcut(x, 6)
    assert y.shape == (2, 2, 2, 6)
    np.testing.assert_allclose(y[..., :2], x.reshape(2, 2, 2, 2, 2, 2).mean(axis=(2, 4)))
    assert float(jnp.abs(y[..., 2:]).sum()) == 0


def test_training_mode_updates_batch_stats_of_every_block():
    model = resnet(20)
    before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))  # a copy, not the Variables
    model.train()
    model(jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3)))
    after = nnx.state(model, nnx.BatchStat)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after))
    assert changed and all(changed)


@pytest.mark.parametrize("bad,match", [
    (jnp.zeros((2, 3, 32, 32)), "NCHW"),
    (jnp.zeros((32, 32, 3)), "shape"),
    (jnp.zeros((2, 30, 30, 3)), "multiples of 4"),
    (jnp.zeros((2, 32, 32, 3), jnp.uint8), "floating-point"),
])
def test_bad_images_are_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resnet(8)(bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=21), "6n\\+2"), (dict(shortcut="conv"), "unknown shortcut"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetSpec(**kwargs)


def test_single_channel_model():
    model = CifarResNet(ResNetSpec(8, in_channels=1), rngs=nnx.Rngs(0))
    assert model(jnp.zeros((1, 28, 28, 1))).shape == (1, 10)


def test_unrolled_training_equals_scanned_training():
    images = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))

    def grads(unroll):
        model = CifarResNet(ResNetSpec(14, unroll_training=unroll), rngs=nnx.Rngs(0))
        graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

        def loss(params):
            m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats))
            m.train()
            return (m(images) ** 2).sum()

        return jax.grad(loss)(params)

    for a, b in zip(jax.tree.leaves(grads(True)), jax.tree.leaves(grads(False))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_stochastic_depth_drops_whole_blocks_that_then_do_not_run():
    # ResNet-14: blocks 1 and 4 dropped (4 is stage 3's first: its projection shortcut still runs).
    keep = jnp.array([True, False, True, True, False, True])
    survival = jnp.array([1.0, 0.9, 0.8, 0.5, 0.5, 0.25])
    images = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 32, 3))
    model = resnet(14)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    before = jax.tree.map(np.array, stats)

    def loss(params):
        m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats))
        m.train()
        return (m.drop_blocks(images, keep, survival) ** 2).sum(), (m, nnx.state(m, nnx.BatchStat))

    grads, (m, after) = jax.grad(loss, has_aux=True)(params)
    # the reference, written out block by block in training mode
    ref = nnx.merge(graphdef, params, jax.tree.map(np.array, before))
    ref.train()
    x = ref.stem(images)
    for block, k, p in zip(ref.units(), keep, survival):
        x = nnx.relu(block.shortcut(x) + block.residual(x) / p) if k else block.shortcut(x)
    np.testing.assert_allclose(np.asarray(loss(params)[0]), np.asarray((ref.classify(x) ** 2).sum()),
                               rtol=1e-5)
    conv_grads = [np.abs(np.asarray(g)).sum() for g in
                  (grads["stages"][0]["first"]["conv1"]["kernel"][...],
                   grads["stages"][0]["rest"]["conv1"]["kernel"][...][0],
                   grads["stages"][2]["first"]["conv2"]["kernel"][...],
                   grads["stages"][2]["rest"]["conv1"]["kernel"][...][0])]
    assert conv_grads[0] > 0 and conv_grads[3] > 0  # kept
    assert conv_grads[1] == 0 and conv_grads[2] == 0  # dropped: no gradient at all
    moved = lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b)))
    assert not moved(after["stages"][0]["rest"]["bn1"]["mean"][...], before["stages"][0]["rest"]["bn1"]["mean"][...])
    assert not moved(after["stages"][2]["first"]["bn2"]["var"][...], before["stages"][2]["first"]["bn2"]["var"][...])
    assert moved(after["stages"][2]["first"]["projection"]["bn"]["mean"][...],
                 before["stages"][2]["first"]["projection"]["bn"]["mean"][...])  # the shortcut ran
    assert moved(after["stages"][1]["rest"]["bn1"]["mean"][...], before["stages"][1]["rest"]["bn1"]["mean"][...])


def test_stochastic_depth_keeping_every_block_unscaled_is_the_plain_forward():
    images = jax.random.normal(jax.random.PRNGKey(4), (2, 32, 32, 3))
    model = resnet(14)
    graphdef, state = nnx.split(model)
    a, b = nnx.merge(graphdef, state), nnx.merge(graphdef, jax.tree.map(np.array, state))
    a.train(), b.train()
    np.testing.assert_allclose(a.drop_blocks(images, jnp.ones(6, bool), jnp.ones(6)), b(images),
                               rtol=1e-5, atol=1e-6)


def test_stochastic_depth_survival_decays_linearly_and_checks_its_range():
    from adaptive_jax.models.resnet import survival_probabilities
    np.testing.assert_allclose(survival_probabilities(4, 0.5), [0.875, 0.75, 0.625, 0.5])
    np.testing.assert_allclose(survival_probabilities(3, 0.0), [1, 1, 1])
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="final drop probability"):
            survival_probabilities(3, bad)
    model = resnet(8)
    model.eval()
    with pytest.raises(ValueError, match="model.train"):
        model.drop_blocks(jnp.zeros((1, 32, 32, 3)), jnp.ones(3, bool), jnp.ones(3))
