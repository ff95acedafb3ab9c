"""Cost model: MACs from the jaxpr against hand counts and against XLA's own cost analysis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax import cost
from adaptive_jax.models import CifarResNet, ResNetSpec, resnet


def hand_count_macs(depth: int, shortcut: str = "projection", num_classes: int = 10) -> int:
    n = (depth - 2) // 6
    conv = lambda hw, k, cin, cout: hw * hw * k * k * cin * cout  # noqa: E731
    total = conv(32, 3, 3, 16)
    for hw, cin, cout in ((32, 16, 16), (16, 16, 32), (8, 32, 64)):
        total += conv(hw, 3, cin, cout) + conv(hw, 3, cout, cout)       # first block
        if cin != cout and shortcut == "projection":
            total += conv(hw, 1, cin, cout)                              # 1x1 projection
        total += (n - 1) * 2 * conv(hw, 3, cout, cout)                   # the other blocks
    return total + 64 * num_classes


@pytest.mark.parametrize("depth", [20, 38, 110])
@pytest.mark.parametrize("shortcut", ["projection", "pad"])
def test_macs_match_hand_count(depth, shortcut):
    assert cost.model_cost(resnet(depth, shortcut=shortcut)).macs == hand_count_macs(depth, shortcut)


def test_resnet110_is_about_2_5e8_macs_and_flops_double():
    c = cost.model_cost(resnet(110))
    assert 2.45e8 < c.macs < 2.6e8  # docs/methods.md 1.1: "ResNet-110 about 2.5e8"
    assert c.flops == 2 * c.macs
    assert c.params == 1_730_714


def test_macs_scale_with_batch_and_count_scan_iterations():
    model = resnet(20)
    model.eval()
    per_example = cost.model_cost(model).macs
    assert cost.model_cost(model, (4, 32, 32, 3)).macs == per_example

    def stage_fn(x):  # a stage of 3 blocks: 1 plain + 2 inside a scan
        return model.stages[0](x)

    x = jax.ShapeDtypeStruct((1, 32, 32, 16), jnp.float32)
    assert cost.function_macs(stage_fn, x) == 3 * 2 * 32 * 32 * 9 * 16 * 16


def test_cross_check_against_xla_cost_analysis():
    # ResNet-8 has no scan (XLA counts a while-loop body once), so XLA sees every conv.
    model = resnet(8)
    graphdef, state = nnx.split(model)

    def forward(state, images):
        m = nnx.merge(graphdef, state)
        m.eval()
        return m(images)

    images = jnp.zeros((1, 32, 32, 3))
    # XLA skips the multiply-adds that land on zero padding; so does count_padding=False.
    ours = 2 * cost.function_macs(forward, state, images, count_padding=False)
    xla = cost.xla_flops(forward, state, images)
    # XLA also counts BN, ReLU, adds and pooling: a few percent more, never less.
    assert ours <= xla <= 1.1 * ours, (ours, xla)
    assert cost.function_macs(forward, state, images) > ours / 2  # the convention counts padding


def test_dense_and_grouped_conv_counts():
    x = jnp.zeros((2, 8, 8, 4))
    w = jnp.zeros((3, 3, 2, 6))  # 2 groups: each output sees 2 input channels
    grouped = lambda x: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
    assert cost.function_macs(grouped, x) == 2 * 8 * 8 * 6 * 2 * 9
    assert cost.function_macs(lambda a: a @ jnp.zeros((5, 7)), jnp.zeros((3, 5))) == 3 * 5 * 7
    assert cost.param_count(resnet(8)) == int(sum(np.prod(v.shape) for v in jax.tree.leaves(
        nnx.state(resnet(8), nnx.Param))))


@pytest.mark.parametrize("shortcut", ["projection", "pad"])
def test_block_costs_price_plans(shortcut):
    model = CifarResNet(ResNetSpec(14, shortcut=shortcut), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    costs = cost.block_costs(model)
    assert costs.full_macs == cost.model_cost(model).macs  # all blocks on = the plain network
    assert len(costs.run_macs) == 6
    # a skipped transition still runs its projection; identity and pooled shortcuts are free
    projection_macs = 16 * 32 * 16 * 16 + 32 * 64 * 8 * 8  # the two 1x1 convs, per example
    assert sum(costs.skip_macs) == (projection_macs if shortcut == "projection" else 0)
    plans = np.array([[True] * 6, [False] * 6, [True, False, True, False, True, False]])
    macs = costs.plan_macs(plans)
    assert macs[0] == costs.full_macs and macs[1] == costs.base_macs + sum(costs.skip_macs)
    assert macs[2] == costs.base_macs + sum(
        r if on else s for r, s, on in zip(costs.run_macs, costs.skip_macs, plans[2]))
    np.testing.assert_allclose(costs.block_fraction(plans[0]), 1.0)
    with pytest.raises(ValueError, match="bool plan of 6 blocks"):
        costs.plan_macs(np.ones(5, bool))
