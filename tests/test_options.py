"""Option plans: the seam DFS and ACS plug into. A toy menu of three options per block (skip, the
block at half its inner width, the full block) runs through every executor, equal to a plain
reference written here from the raw weights, and is priced per option."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax import cost, execution
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.models.options import RUN_OR_SKIP, InnerWidths
from adaptive_jax.plans import OptionLayout, StaticOptionPlan
from tests.conftest import running_statistics

pytestmark = pytest.mark.usefixtures("strict_dtype_promotion")

DEPTH = 14  # two blocks per stage: a transition block and one stacked block in each
UNITS = 6
MENU = InnerWidths((0.5, 1.0))  # options: 0 skip, 1 half inner width, 2 the full block


@pytest.fixture(scope="module", params=["projection", "pad"])
def net(request):
    model = CifarResNet(ResNetSpec(DEPTH, shortcut=request.param),
                        rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    stats = running_statistics(stats)
    logits = execution.make_predict_fn(graphdef)(params, stats, _images(4))
    assert float(jnp.abs(logits).max()) > 0.1 and float(jnp.std(logits)) > 0.01
    return graphdef, params, stats


def _images(batch, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, 32, 32, 3), np.float32))


def _option_plans(batch, seed):
    rng = np.random.default_rng(seed)
    return {"random": rng.integers(0, 3, (batch, UNITS)).astype(np.int32),
            "all half": np.ones((batch, UNITS), np.int32),
            "all full": np.full((batch, UNITS), 2, np.int32),
            "all skip": np.zeros((batch, UNITS), np.int32)}


def _conv(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


def _bn(y, bn, channels):
    def part(v):
        return v[...][:channels]
    return ((y - part(bn.mean)) / jnp.sqrt(part(bn.var) + bn.epsilon) * part(bn.scale)
            + part(bn.bias))


def _reference(model, image, choices):
    """One image, one option per block, from the raw weights: conv1 on its first c output
    channels, their BN, conv2 reading only them (c = all for the full block)."""
    x = model.stem(image)
    for block, option in zip(model.units(), choices):
        shortcut = block.shortcut(x)
        if option == 0:
            x = shortcut
            continue
        channels = block.out_channels if option == 2 else math.ceil(0.5 * block.out_channels)
        y = _conv(x, block.conv1.kernel[...][..., :channels], block.stride)
        y = jax.nn.relu(_bn(y, block.bn1, channels))
        y = _conv(y, block.conv2.kernel[...][:, :, :channels, :], 1)
        x = jax.nn.relu(shortcut + _bn(y, block.bn2, block.out_channels))
    return model.classify(x)


def _want(net, images, plans):
    graphdef, params, stats = net
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    return np.concatenate([_reference(model, images[i:i + 1], plans[i]) for i in range(len(plans))])


@pytest.mark.parametrize("batch", [1, 8])
def test_every_executor_runs_option_plans_like_the_reference(net, batch):
    graphdef, params, stats = net
    images = _images(batch, seed=batch)
    run = {name: execution.make_predict_fn(graphdef, executor)
           for name, executor in [("masked", execution.masked(MENU)),
                                  ("switch", execution.switch(MENU)),
                                  # two capacities at batch 8: gathers and the all-rows branch, a
                                  # quicker compile than the default eight
                                  ("bucketed", execution.bucketed(buckets=min(batch, 2), options=MENU))]}
    static = execution.StaticExecutor(graphdef, params, stats, options=MENU)
    for name, plans in _option_plans(batch, seed=batch).items():
        want = _want(net, images, plans)
        for executor in ("masked", "bucketed"):
            np.testing.assert_allclose(run[executor](params, stats, images, plans), want,
                                       rtol=2e-4, atol=2e-4, err_msg=f"{executor}, {name}")
        for i in range(min(batch, 2)):  # one plan per call
            one = images[i:i + 1]
            np.testing.assert_allclose(run["switch"](params, stats, one, plans[i]), want[i:i + 1],
                                       rtol=2e-4, atol=2e-4, err_msg=f"switch, {name}, row {i}")
            np.testing.assert_allclose(static(one, plans[i]), want[i:i + 1],
                                       rtol=2e-4, atol=2e-4, err_msg=f"static, {name}, row {i}")


def test_masked_option_weights_are_differentiable_and_one_hot_equals_the_plan():
    model = CifarResNet(ResNetSpec(8), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))  # 3 blocks
    model.eval()
    images = _images(2)
    plans = np.array([[0, 1, 2], [2, 2, 1]], np.int32)
    masked = execution.masked(MENU)
    one_hot = jax.nn.one_hot(plans, 3)
    np.testing.assert_allclose(masked.forward(model, images, one_hot),
                               masked.forward(model, images, plans), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda w: masked.forward(model, images, w).sum())(jnp.full((2, 3, 3), 1 / 3))
    assert grads.shape == (2, 3, 3) and bool(jnp.all(jnp.isfinite(grads)))
    assert float(jnp.abs(grads[..., 1:]).min()) > 0  # every non-skip option moves the output


def test_options_are_priced_per_unit_and_the_plan(net):
    graphdef, params, stats = net
    model = nnx.merge(graphdef, params, stats)
    costs = cost.unit_costs(model, MENU)
    blocks = cost.block_costs(model)
    assert costs.options == ("skip", "width 0.5", "width 1")
    assert costs.run_macs == blocks.run_macs and costs.skip_macs == blocks.skip_macs
    for unit, (skip, half, full) in zip(model.units(), costs.option_macs):
        # half the inner width: conv1 keeps half its outputs, conv2 half its inputs
        assert half - skip == (full - skip) // 2, unit
    plans = _option_plans(3, seed=2)["random"]
    want = [costs.base_macs + sum(costs.option_macs[l][k] for l, k in enumerate(p)) for p in plans]
    np.testing.assert_array_equal(costs.plan_macs(plans), want)
    np.testing.assert_array_equal(costs.plan_bitops(plans), np.asarray(want) * 32 * 32)
    # the price is what the plan computes: the reference's jaxpr under the same plan
    model.eval()
    for plan in plans:
        assert cost.function_macs(lambda x: _reference(model, x, plan), _images(1)) == \
            costs.plan_macs(plan)


def test_bucketed_computes_a_transition_projection_once(net):
    """Was: the projection for every row, then again inside the block for the rows that run it."""
    graphdef, params, stats = net
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    plans = np.ones((8, UNITS), bool)
    forward = execution.bucketed().forward
    macs = cost.function_macs(lambda x: forward(model, x, plans), _images(8))
    assert macs == 8 * cost.block_costs(model).full_macs


def test_option_plans_off_the_menu_or_of_the_wrong_shape_are_named(net):
    graphdef, params, stats = net
    run = execution.make_predict_fn(graphdef, execution.switch(MENU))
    images = _images(1)
    with pytest.raises(ValueError, match=r"option 3 is not on the menu \('skip', 'width 0.5', 'width 1'\)"):
        run(params, stats, images, np.array([0, 1, 2, 3, 0, 0], np.int32))
    with pytest.raises(ValueError, match="has 5 decisions, but resnet14 \\(6 blocks"):
        run(params, stats, images, np.zeros(5, np.int32))
    with pytest.raises(TypeError, match="bool block plan runs a block fully or not at all"):
        run(params, stats, images, np.ones(6, bool))
    with pytest.raises(TypeError, match="holds integer option indices"):
        StaticOptionPlan.from_array(np.zeros(6, np.float32),
                                    OptionLayout(nnx.merge(graphdef, params, stats).layout, MENU.names))
    with pytest.raises(ValueError, match="must increase within \\(0, 1\\] and end at 1.0"):
        InnerWidths((0.5, 0.75))
    assert RUN_OR_SKIP.names == ("skip", "run")
