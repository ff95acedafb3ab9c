"""Slimmable layers and the slimmable ResNet: every width is a prefix of the full net, costs
fewer MACs, keeps its own BN statistics, and can be recalibrated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax import cost
from adaptive_jax.execution import SubnetExecutor
from adaptive_jax.models.slimmable import (SlimmableResNet, SlimmableSpec, WidthSubnet,
                                           extract_subnet, sort_channels_by_importance, subnet_spec)
from adaptive_jax.nn.slim import recalibrate_batch_norm, slim_channels


@pytest.fixture(scope="module")
def model():
    m = SlimmableResNet(SlimmableSpec(8), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    m.eval()
    return m


def _images(batch, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, 32, 32, 3), np.float32))


def test_slim_channels_rounds_up():
    assert [slim_channels(16, w) for w in (0.25, 0.5, 0.75, 1.0)] == [4, 8, 12, 16]
    assert slim_channels(10, 0.33) == 4
    with pytest.raises(ValueError, match=r"width must be in \(0, 1\]"):
        slim_channels(16, 1.5)


def test_every_width_runs_and_costs_less(model):
    graphdef, state = nnx.split(model)
    macs = {}
    for w in (0.25, 0.5, 0.75, 1.0):
        assert model(_images(2), w).shape == (2, 10)
        macs[w] = cost.function_macs(lambda s, x, w=w: nnx.merge(graphdef, s)(x, w), state,
                                     jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    assert macs[0.25] < macs[0.5] < macs[0.75] < macs[1.0]
    # inner convs scale as w^2; the stem reads 3 channels whatever the width
    assert 0.22 < macs[0.5] / macs[1.0] < 0.3
    assert model(_images(2), (0.25, 0.5, 1.0)).shape == (2, 10)  # non-uniform, per stage


def test_a_narrow_subnet_reads_only_its_prefix(model):
    images = _images(2)
    graphdef, state = nnx.split(model)
    narrow, full = model(images, 0.5), model(images, 1.0)
    # scramble every conv weight outside the 0.5 prefix: the 0.5 sub-net must not notice
    def scramble(path, v):
        if "kernel" not in path or v.ndim != 4:
            return v
        cin, cout = v.shape[2], v.shape[3]
        keep_in = cin if cin == 3 else slim_channels(cin, 0.5)
        mask = np.ones(v.shape, bool)
        mask[:, :, :keep_in, :slim_channels(cout, 0.5)] = False
        return jnp.where(mask, 7.0, v)

    scrambled = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(
        lambda p, v: scramble(tuple(getattr(k, "key", getattr(k, "idx", None)) for k in p), v), state))
    np.testing.assert_allclose(scrambled(images, 0.5), narrow, rtol=1e-5, atol=1e-5)
    assert not np.allclose(scrambled(images, 1.0), full)  # the scrambling did reach the weights


def test_unknown_widths_are_named(model):
    with pytest.raises(ValueError, match=r"unknown width 0.6; this model has widths \(0.25, 0.5, 0.75, 1.0\)"):
        model(_images(1), 0.6)
    with pytest.raises(ValueError, match="one width per stage"):
        model(_images(1), (0.5, 0.5))
    with pytest.raises(ValueError, match="end at 1.0"):
        SlimmableSpec(8, widths=(0.5, 0.75))


def test_each_width_keeps_its_own_batch_statistics():
    m = SlimmableResNet(SlimmableSpec(8), rngs=nnx.Rngs(jax.random.key(1, impl="rbg")))
    before = jax.tree.map(np.asarray, nnx.state(m, nnx.BatchStat))
    m.train()
    m(_images(4), 0.5)
    after = jax.tree.map(np.asarray, nnx.state(m, nnx.BatchStat))
    norms_before, norms_after = before["stem_bn"]["norms"], after["stem_bn"]["norms"]
    for i, w in enumerate((0.25, 0.5, 0.75, 1.0)):
        changed = not np.array_equal(norms_before[i]["mean"].value, norms_after[i]["mean"].value)
        assert changed == (w == 0.5), w


def test_recalibration_gives_the_exact_mean_of_the_batches():
    m = SlimmableResNet(SlimmableSpec(8), rngs=nnx.Rngs(jax.random.key(2, impl="rbg")))
    batches = [_images(4, seed=s) for s in (3, 4, 5)]
    used = recalibrate_batch_norm(m, lambda model, x: model(x, 0.25), batches)
    assert used == 3 and m.stem_bn.norms[0].use_running_average  # back in eval mode
    c = slim_channels(16, 0.25)
    stem_means = [m.stem_conv(x, c).mean(axis=(0, 1, 2)) for x in batches]
    np.testing.assert_allclose(m.stem_bn.norms[0].mean[...], np.mean(stem_means, axis=0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(m.stem_bn.norms[3].mean[...], np.zeros(16))  # width 1.0 untouched
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batch_norm(m, lambda model, x: model(x, 0.25), [])


@pytest.fixture(scope="module")
def used_model():
    """A depth-8 slimmable net whose every width has its own, non-trivial BN statistics and
    affine parameters, so a sub-net picking the wrong BN shows."""
    m = SlimmableResNet(SlimmableSpec(8), rngs=nnx.Rngs(jax.random.key(3, impl="rbg")))
    rng = np.random.default_rng(3)
    for _, bn in nnx.iter_graph(m):
        if isinstance(bn, nnx.BatchNorm):
            bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, bn.scale.shape), jnp.float32)
            bn.bias[...] = jnp.asarray(rng.normal(0, 0.2, bn.bias.shape), jnp.float32)
    m.train()
    for w in (0.25, 0.5, 0.75, 1.0):
        m(_images(8, seed=11), w)
    m.eval()
    return m


@pytest.mark.parametrize("width", [0.25, 0.75, 1.0, (0.25, 1.0, 0.5)])
def test_an_extracted_subnet_is_the_slimmable_width(used_model, width):
    sub = extract_subnet(used_model, width)
    assert sub.spec.widths == WidthSubnet.of(width).channels()
    images = _images(3, seed=4)
    np.testing.assert_allclose(sub(images), used_model(images, width), rtol=1e-5, atol=1e-5)
    # channels padded to multiples of 8 (4 -> 8, 12 -> 16, 24 stays): the same function
    padded = extract_subnet(used_model, width, channel_multiple=8)
    assert all(p % 8 == 0 and p >= c for p, c in zip(padded.spec.widths, sub.spec.widths))
    np.testing.assert_allclose(padded(images), used_model(images, width), rtol=1e-5, atol=1e-5)
    # it holds only its own weights: sliced kernels, one BN per layer
    c = sub.spec.widths
    assert sub.stages[2].first.conv1.kernel.shape == (3, 3, c[1], c[2])
    sizes = [sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param))) for m in (sub, used_model)]
    assert sizes[0] < sizes[1]


def test_width_subnets_are_hashable_names():
    assert WidthSubnet.of(0.5) == WidthSubnet.of((0.5, 0.5, 0.5))
    assert len({WidthSubnet.of(0.5), WidthSubnet.of(0.5), WidthSubnet.of(1.0)}) == 2
    assert WidthSubnet.of(0.5).name == "w0.5"
    assert WidthSubnet.of((0.25, 0.5, 1.0)).name == "w0.25-0.5-1"
    with pytest.raises(ValueError, match="one width per stage"):
        WidthSubnet.of((0.5, 1.0))
    with pytest.raises(ValueError, match=r"unknown width 0.6"):
        subnet_spec(SlimmableSpec(8), WidthSubnet.of(0.6))


def test_subnet_executor_serves_every_width_without_compiling_after_warm_up(used_model):
    executor = SubnetExecutor(used_model, max_executables=4)
    widths = (0.25, 0.5, (0.25, 1.0, 0.5))
    executor.warm_up(widths, batch_sizes=(2,))
    compiled = executor.stats()["compilations"]
    images = _images(2, seed=5)
    for w in widths * 2:
        np.testing.assert_allclose(executor(images, w), used_model(images, w), rtol=1e-5, atol=1e-5)
    assert compiled == 3 and executor.stats()["compilations"] == compiled
    with pytest.raises(ValueError, match="unknown width 0.6"):
        executor(images, 0.6)


def test_subnet_executor_is_bounded_and_drops_evicted_weights(used_model):
    executor = SubnetExecutor(used_model, max_executables=2)
    images = _images(1)
    for w in (0.25, 0.5, 1.0):
        executor(images, w)
    assert executor.stats()["evictions"] == 1 and executor.stats()["live"] == 2
    assert set(executor._weights) == {WidthSubnet.of(0.5), WidthSubnet.of(1.0)}
    executor(images, 0.25)  # compiled again, not lost
    assert executor.stats()["compilations"] == 4


def test_sorting_channels_keeps_the_full_net_and_puts_important_channels_first():
    m = SlimmableResNet(SlimmableSpec(8), rngs=nnx.Rngs(jax.random.key(4, impl="rbg")))
    m.eval()
    # make the first half of block 1's inner channels (the ones its second conv reads) dead and
    # the last quarter of stage 2's stream (read by the classifier and block 2's first conv) loud
    m.blocks[1].conv2.kernel[...] = m.blocks[1].conv2.kernel[...].at[:, :, :16].multiply(0.0)
    m.head.kernel[...] = m.head.kernel[...].at[48:].multiply(100.0)
    images = _images(2, seed=6)
    before = m(images, 1.0)
    orders = sort_channels_by_importance(m)
    np.testing.assert_allclose(m(images, 1.0), before, rtol=1e-4, atol=1e-4)
    assert set(orders["block1.inner"][:16]) == set(range(16, 32))  # live channels moved first
    assert set(orders["stage2"][:16]) == set(range(48, 64))
    # every group is now in non-increasing importance, and narrow BNs start from the full prefix
    inner = np.abs(np.asarray(m.blocks[1].conv2.kernel[...])).sum(axis=(0, 1, 3))
    assert np.all(np.diff(inner) <= 1e-6)
    full_bn, narrow_bn = m.blocks[1].bn1.norms[3], m.blocks[1].bn1.norms[1]
    np.testing.assert_array_equal(narrow_bn.scale[...], full_bn.scale[...][:16])
    np.testing.assert_array_equal(narrow_bn.mean[...], full_bn.mean[...][:16])


def _slim_config(mode, **slim):
    from adaptive_jax.train import slimmable
    c = slimmable.default_config()
    c.model.depth = 8
    c.num_epochs = 1
    c.batch_size = 8
    c.eval_batch_size = 10
    c.log_every_steps = 1
    c.progress_bar = False
    c.num_devices = 1
    c.slim.mode = mode
    c.slim.update(slim)
    return c


def _moved_widths(result, widths):
    """Which widths' stem BN statistics left their initial zeros during training."""
    stats = result["state"].batch_stats["stem_bn"]["norms"]
    return {w for i, w in enumerate(widths) if np.any(stats[i]["mean"][...])}


# Small width menus keep the compiled branches (one per width or width set) few.
@pytest.mark.parametrize("mode, want", [("multi_path", {0.5, 1.0}), ("single_path", 1),
                                        ("alone", {0.5})])
def test_training_modes_train_the_widths_they_say(tmp_path, mode, want):
    from adaptive_jax.train import slimmable, train_and_evaluate
    from tests.conftest import random_split
    data = random_split(24, seed=1), random_split(10, seed=2)
    result = train_and_evaluate(_slim_config(mode, width=0.5, widths=(0.5, 1.0)), str(tmp_path),
                                data, slimmable.task())
    moved = _moved_widths(result, (0.5, 1.0))
    if mode == "single_path":
        assert len(moved) == want  # one width for the whole epoch
    else:
        assert moved == want
    widths = {0.5} if mode == "alone" else {0.5, 1.0}
    assert {k for k in result if k.startswith("test_accuracy_w")} == {f"test_accuracy_w{w:g}" for w in widths}


def test_sandwich_trains_the_largest_the_smallest_and_one_between(tmp_path):
    from adaptive_jax.train import slimmable, train_and_evaluate
    from tests.conftest import random_split
    data = random_split(16, seed=1), random_split(10, seed=2)
    menu = (0.25, 0.5, 1.0)
    result = train_and_evaluate(_slim_config("sandwich", num_random=1, widths=menu),
                                str(tmp_path), data, slimmable.task())
    assert _moved_widths(result, menu) == set(menu)
    with pytest.raises(ValueError, match="unknown slim.mode 'greedy'"):
        train_and_evaluate(_slim_config("greedy"), str(tmp_path / "x"), data, slimmable.task())


def test_progressive_adds_narrower_widths_over_the_schedule():
    # the schedule as data (the steps themselves are the multi-width steps the modes above train)
    from adaptive_jax.train.slimmable import _branches
    config = _slim_config("progressive", widths=(0.25, 0.5, 1.0))
    config.num_epochs = 3
    sets, pick = _branches(config, (0.25, 0.5, 1.0), steps_per_epoch=2)
    assert sets == [(1.0,), (1.0, 0.5), (1.0, 0.5, 0.25)]
    rng = jax.random.key(0, impl="rbg")
    assert [int(pick(jnp.int32(step), rng)) for step in range(7)] == [0, 0, 1, 1, 2, 2, 2]


def test_bad_slimmable_configs_are_named():
    from adaptive_jax.train import slimmable
    with pytest.raises(ValueError, match="unknown slim.mode 'greedy'"):
        slimmable.check_config(_slim_config("greedy"))
    with pytest.raises(ValueError, match="unknown width 0.6"):
        slimmable.check_config(_slim_config("alone", width=0.6))
