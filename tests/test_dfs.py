"""DFS (docs/dfs.md): the bitwidth menu against an independent quantiser, every executor agreeing
on option plans, the integer kernels equal to the float grid path, the gates' batch-1 paths equal
to their batch paths, the one-path training estimator, the budget term and clear errors."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax import cost, execution
from adaptive_jax.data import datasets
from adaptive_jax.methods.dfs import DFSNet
from adaptive_jax.models import quantized
from adaptive_jax.models.options import Bitwidths
from adaptive_jax.models.resnet import resnet
from adaptive_jax.train import dfs, search

MENU = Bitwidths()
SMALL = Bitwidths((8, 12, 32))  # what compiles in tests: skip, 8 bits (the integer kernels), 12, float
KERNEL_SHAPES = [(16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]


def _images(n, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, 32, 32, 3))


@nnx.jit
def _train_forward(model: DFSNet, images):
    model.train()
    model.forward(images)


def _calibrated(model: DFSNet, images):
    """One training-mode forward sets every block's ranges (then eval mode)."""
    _train_forward(model, images)
    model.eval()
    return model


def _reference_residual(block, x, bits, r1, r2):
    """The block at `bits`, written out in numpy float64: weights on the signed per-output-channel
    grid, inputs on the unsigned grid over [0, r], convolutions, BN with running statistics."""
    def quant_w(w):
        scale = np.abs(w).max(axis=(0, 1, 2), keepdims=True) / (2 ** (bits - 1) - 1)
        return np.clip(np.round(w / scale), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) * scale

    def quant_x(x, r):
        scale = r / (2 ** bits - 1)
        return np.clip(np.round(x / scale), 0, 2 ** bits - 1) * scale

    def conv(x, w, stride):  # 3x3, padding 1, NHWC x HWIO, as nine shifted float64 matmuls
        x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = (x.shape[1] - 3) // stride + 1
        return sum(x[:, i:i + stride * (out - 1) + 1:stride, j:j + stride * (out - 1) + 1:stride]
                   @ w[i, j] for i in range(3) for j in range(3))

    def bn(norm, y):
        return ((y - np.asarray(norm.mean[...])) / np.sqrt(np.asarray(norm.var[...]) + norm.epsilon)
                * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...]))

    x = np.asarray(x, np.float64)
    def kernel(conv_module):
        return np.asarray(conv_module.kernel[...], np.float64)

    y = np.maximum(bn(block.bn1, conv(quant_x(x, r1), quant_w(kernel(block.conv1)), block.stride)), 0)
    return bn(block.bn2, conv(quant_x(y, r2), quant_w(kernel(block.conv2)), 1))


def test_menu_names_bits_costs_and_errors():
    assert MENU.names == ("skip", "8 bit", "10 bit", "12 bit", "14 bit", "16 bit", "float")
    assert MENU.bits(0) == (0, 0) and MENU.bits(1) == (8, 8) and MENU.bits(6) == (32, 32)
    assert MENU.computation() == pytest.approx([0, 1 / 16, 25 / 256, 9 / 64, 49 / 256, 1 / 4, 1])
    assert MENU.option_of(0) == 0 and MENU.option_of(12) == 3
    with pytest.raises(ValueError, match="9 bits is not on the menu"):
        MENU.option_of(9)
    for bad in [(), (8, 8, 32), (16, 8), (1, 8), (8, 24), (8, 64), (8.0, 32)]:
        with pytest.raises(ValueError, match="bitwidths must be increasing integers"):
            Bitwidths(bad)
    with pytest.raises(ValueError, match="unknown kernel 'int4'"):
        Bitwidths(kernels=(((16, 16, 1), "int4"),))


@pytest.mark.parametrize("bits", [8, 12])
def test_a_block_at_b_bits_matches_an_independent_quantiser(bits):
    model = _calibrated(DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0)), _images(8))
    net = model.quantized()
    x = net.stem(_images(2, seed=1))
    for qblock in net.units()[:2]:  # stage 1 and the first transition
        option = SMALL.option_of(bits)
        got = quantized.residual_at_bits(qblock, x, bits, qblock.ranges[option])
        r1, r2 = (float(v) for v in qblock.ranges[option])
        want = _reference_residual(qblock.block, x, bits, r1, r2)
        diff = np.abs(np.asarray(got) - want)
        if bits == 8:
            assert diff.max() < 2e-4, diff.max()
        else:
            # at 12 bits float32 rounding (~2e-4 of a grid step at 4095 levels) puts ~1 input in
            # 2000 on the other side of a rounding boundary, each spreading over 9 x C outputs;
            # the grid itself is pinned by the 8-bit case
            assert diff.mean() < 2e-4 and diff.max() < 2e-3, (diff.mean(), diff.max())
        x = qblock.block(x)


def test_executors_agree_on_option_plans_and_the_float_option_is_the_backbone():
    model = _calibrated(DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0)), _images(8))
    net, images = model.quantized(), _images(8, seed=3)
    plans = jnp.asarray(np.random.default_rng(0).integers(0, SMALL.num_options, (8, 3)), jnp.int32)
    def run(executor):  # compiled: eager NNX dispatches op by op
        return nnx.jit(lambda model, images, plans: executor.forward(model.quantized(), images,
                                                                     plans))
    masked = run(execution.masked(SMALL))(model, images, plans)
    bucketed = run(execution.bucketed(4, SMALL))(model, images, plans)
    # Quantised options agree up to rounding flips: a convolution summed in another order (other
    # batch sizes) can move a value across a grid boundary, one step (~1 % at 8 bits) of one
    # input; logits then move by ~1e-3, where a wrong option or range moves them by ~1.
    tolerance = 5e-3
    np.testing.assert_allclose(bucketed, masked, atol=tolerance)
    for i in range(2):
        cond = run(execution.cond(SMALL))(model, images[i:i + 1], plans[i])
        static = execution.static(SMALL).forward(net, images[i:i + 1], np.asarray(plans[i]))
        np.testing.assert_allclose(cond[0], masked[i], atol=tolerance)
        np.testing.assert_allclose(static[0], masked[i], atol=tolerance)
    assert np.abs(np.asarray(masked) - np.asarray(model.backbone(images))).max() > 0.05
    full = execution.cond(SMALL).forward(net, images, jnp.full((3,), 3, jnp.int32))
    np.testing.assert_allclose(full, model.backbone(images), atol=1e-5)


@pytest.mark.parametrize("kernel", ["xla", "patches"])
def test_integer_kernels_give_the_8_bit_option_of_the_float_path(kernel):
    model = _calibrated(DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0)), _images(8))
    images = _images(4, seed=4)
    plan = jnp.full((3,), 1, jnp.int32)
    integer = Bitwidths(SMALL.widths, kernels=tuple((shape, kernel) for shape in KERNEL_SHAPES))
    want = execution.cond(SMALL).forward(model.quantized(), images, plan)
    got = execution.cond(integer).forward(model.quantized(), images, plan)
    np.testing.assert_allclose(got, want, atol=5e-3)  # rounding flips: see above


def test_prepared_weights_give_the_same_outputs_and_are_refused_where_they_cannot_serve():
    mixed = Bitwidths(SMALL.widths, kernels=(((16, 16, 1), "xla"), ((32, 32, 1), "patches")))
    with pytest.raises(ValueError, match="need calibrated activation ranges"):
        DFSNet(resnet(8), mixed, rngs=nnx.Rngs(0)).prepare_weights()
    model = _calibrated(DFSNet(resnet(8), mixed, rngs=nnx.Rngs(0)), _images(8))
    weights = model.prepare_weights()
    assert sorted(weights.stacks) == [8, 12] and set(weights.stacks[8][(16, 16, 1)]) == {
        "grid", "int8", "scale", "offset"}
    images = _images(8, seed=3)
    plans = jnp.asarray(np.random.default_rng(1).integers(0, SMALL.num_options, (8, 3)), jnp.int32)

    @nnx.jit
    def both(model, weights, images, plans):  # the two walks: every block (scan), active ones
        masked, cond = execution.masked(mixed), execution.cond(mixed)
        return {"masked": (masked.forward(model.quantized(), images, plans),
                           masked.forward(model.quantized(weights), images, plans)),
                "cond": (cond.forward(model.quantized(), images[:1], plans[0]),
                         cond.forward(model.quantized(weights), images[:1], plans[0]))}

    for name, (fresh, prepared) in both(model, weights, images, plans).items():
        # the same values; XLA may fuse the arithmetic around the convs differently (~1e-7),
        # and such a difference can flip a later rounding (see above)
        np.testing.assert_allclose(prepared, fresh, atol=5e-3, err_msg=name)
    model.train()
    with pytest.raises(ValueError, match="prepared weights are for inference"):
        model(images, weights)


@pytest.mark.parametrize("gate", ["recurrent", "once"])
def test_predict_at_batch_1_runs_the_batch_path_s_decisions(gate):
    model = DFSNet(resnet(8), SMALL, gate=gate, rngs=nnx.Rngs(1))
    # make the gate choose: large random output (and embedding) layers and images of several
    # scales spread the decisions over the menu
    last = model.gate.out if gate == "recurrent" else model.gate.layers[-1]
    last.kernel[...] = 10.0 * jax.random.normal(jax.random.key(5), last.kernel[...].shape)
    last.bias[...] = jnp.zeros_like(last.bias[...])
    if gate == "recurrent":
        embeddings = nnx.state(model.gate.embeddings, nnx.Param)
        nnx.update(model.gate.embeddings, jax.tree.map(lambda a: 30.0 * a, embeddings))
    _calibrated(model, _images(8))
    images = _images(6, seed=6) * jnp.linspace(0.2, 3.0, 6)[:, None, None, None]
    logits, onehot = model.forward(images)
    plans = np.asarray(onehot.argmax(-1))
    assert len(np.unique(plans)) > 2  # the test exercises several options
    np.testing.assert_array_equal(np.asarray(model.plan(images)), plans)
    for i in range(3):
        one, plan = model.predict(images[i:i + 1])
        np.testing.assert_array_equal(np.asarray(plan)[0], plans[i])
        np.testing.assert_allclose(one[0], logits[i], atol=5e-3)  # rounding flips: see above
    with pytest.raises(ValueError, match="predict runs one image in eval mode"):
        model.predict(images[:2])


def test_training_runs_each_row_s_choice_once_and_keeps_ranges_per_bitwidth():
    model = DFSNet(resnet(8), rngs=nnx.Rngs(0))
    net, images = model.quantized(), _images(6, seed=7)
    model.train()
    # rows 0-1 skip block 0, rows 2-3 run it at 8 bits, rows 4-5 in float
    choice = jnp.asarray([0, 0, 1, 1, 6, 6])
    weights = jax.nn.one_hot(jnp.stack([choice] * 3, 1), MENU.num_options)
    out = execution.masked(MENU).run_units(net, net.stem(images), weights)
    assert out.shape == (6, 8, 8, 64)
    ranges = np.asarray(model.ranges[...])
    # options chosen moved their own ranges; options no row chose start from all rows' range
    assert (ranges > 0).all()
    assert ranges[0, 1, 1] != ranges[0, 6, 1]  # conv2's input at 8 bits differs from float's
    shared = DFSNet(resnet(8), Bitwidths(per_bitwidth_ranges=False), rngs=nnx.Rngs(0))
    shared.train()
    execution.masked(shared.options).run_units(shared.quantized(), net.stem(images), weights)
    r = np.asarray(shared.ranges[...])
    assert np.allclose(r, r[:, :1, :])  # one range for every option
    # in training a skipped row is its shortcut, and a batch that runs in float is the block
    # (BN's batch statistics couple the rows, so float rows among 8-bit ones differ slightly)
    block = model.backbone.units()[0]
    x = net.stem(images)
    q = quantized.QuantizedBlock(block, jnp.ones((MENU.num_options, 2)), training=True)
    y = MENU.blend(q, x, jax.nn.one_hot(choice, MENU.num_options))
    np.testing.assert_allclose(y[:2], x[:2], atol=1e-6)
    y = MENU.blend(q, x, jax.nn.one_hot(jnp.full((6,), 6), MENU.num_options))
    np.testing.assert_allclose(y, block(x), atol=1e-5)


def test_the_gate_learns_from_loss_and_budget_in_one_step():
    model = DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0))
    images, labels = _images(4, seed=8), jnp.arange(4)

    def loss(model, target):
        logits, weights = model.forward(images)
        total, percentage, sign = dfs.budget_terms(weights, model.options, target)
        ce = -jax.nn.log_softmax(logits)[jnp.arange(4), labels].mean()
        return ce + sign * 1e-2 * total, percentage

    model.train()
    (_, percentage), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True),
                                     static_argnums=1)(model, 30.0)
    assert float(percentage) == pytest.approx(100.0)  # the gate starts at float everywhere
    gate_grad = float(optax_norm(nnx.state(grads.gate)))
    assert np.isfinite(gate_grad) and gate_grad > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


def test_budget_sign_and_computation_percentage():
    weights = jax.nn.one_hot(jnp.asarray([[0, 6], [1, 6]]), 7)  # skip, float, 8 bit, float
    total, percentage, sign = dfs.budget_terms(weights, MENU, 50.0)
    assert float(total) == pytest.approx(2 + 1 / 16)
    assert float(percentage) == pytest.approx(100 * (2 + 1 / 16) / 4)
    assert float(sign) == 1.0  # above the target: the cost is penalised
    assert float(dfs.budget_terms(weights, MENU, 60.0)[2]) == -1.0


@pytest.mark.parametrize("bad", [0, -5, 100.5, True, "50"])
def test_targets_outside_0_100_are_refused(bad):
    with pytest.raises(ValueError, match="computation percentage in \\(0, 100\\]"):
        dfs.check_target(bad)


def test_bad_option_plans_are_refused_by_name():
    model = _calibrated(DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0)), _images(4))
    net, images = model.quantized(), _images(2)
    cond = execution.cond(SMALL)
    with pytest.raises(ValueError, match="3"):  # wrong length: 3 units
        cond.forward(net, images[:1], jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match="integer option plan"):  # a bool plan on a 4-option menu
        cond.forward(net, images[:1], jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="option 7 is not on the menu"):
        execution.check_plan_values(np.asarray([0, 7, 1]), MENU)


def test_costs_price_bits_and_the_gate():
    model = DFSNet(resnet(8), rngs=nnx.Rngs(0))
    costs = model.costs()
    plain = cost.unit_costs(model.backbone)
    assert costs.run_macs == plain.run_macs  # every option computes the block's MACs ...
    assert all(len(set(row[1:])) == 1 for row in costs.option_macs)
    eight, full = np.full(3, 1), np.full(3, 6)
    block_bitops = sum(costs.run_macs)
    fixed = (costs.base_macs + costs.policy_macs) * 1024
    assert costs.plan_bitops(eight) - fixed == 64 * block_bitops  # ... at 8 x 8 bits
    assert costs.plan_bitops(full) - fixed == 1024 * block_bitops
    assert 0 < costs.policy_macs < 10_000  # embeddings, LSTM and output per block


def test_greedy_descent_takes_the_move_that_keeps_accuracy():
    def accuracy(plan):  # unit 0 matters, unit 1 does not
        return 1.0 - 0.1 * (3 - plan[0]) - 0.01 * (3 - plan[1])

    def lower(plan):
        return [(u, np.where(np.arange(2) == u, plan - 1, plan)) for u in np.flatnonzero(plan > 1)]

    plan, path = search.greedy_descent(np.asarray([3, 3]), lower, lambda p: float(p.sum()),
                                       accuracy, 4)
    assert plan.tolist() == [3, 1] and [s["moved"] for s in path[1:]] == [1, 1]
    with pytest.raises(ValueError, match="no static plan reaches the budget"):
        search.greedy_descent(np.asarray([3, 3]), lower, lambda p: float(p.sum()), accuracy, 1)


def test_an_interrupted_search_resumes_from_its_journal(tmp_path):
    """The journal keeps every plan's figure as the search goes: a search stopped part way
    (here: its evaluation fails on the third new plan) and run again evaluates only the plans
    it had not finished, and reaches the plan an uninterrupted search reaches."""
    def accuracy(plan):  # unit 0 matters, unit 1 does not
        return 1.0 - 0.1 * (3 - plan[0]) - 0.01 * (3 - plan[1])

    def lower(plan):
        return [(u, np.where(np.arange(2) == u, plan - 1, plan)) for u in np.flatnonzero(plan > 1)]

    journal, context = str(tmp_path / "search" / "plan_accuracy.jsonl"), {"heldout_examples": 7}
    seen = []

    def interrupted(plan):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(tuple(plan))
        return accuracy(plan)

    def descend(evaluate, path=journal, ctx=context):
        return search.greedy_descent(np.asarray([3, 3]), lower, lambda p: float(p.sum()),
                                     search.journaled(evaluate, path, ctx), 4)

    with pytest.raises(KeyboardInterrupt):
        descend(interrupted)
    with open(journal, "a") as f:
        f.write('{"context": {"heldout_examples": 7}, "plan": [2, ')  # a write cut short
    again = []
    plan, path = descend(lambda plan: again.append(tuple(plan)) or accuracy(plan))
    uninterrupted, _ = descend(accuracy, path=None)
    assert plan.tolist() == uninterrupted.tolist() == [3, 1]
    assert not set(again) & set(seen) and len(again) > 0  # nothing evaluated twice
    third = []  # the entry written after the cut line is kept too: a third run evaluates nothing
    assert descend(lambda plan: third.append(tuple(plan)) or accuracy(plan))[0].tolist() == [3, 1]
    assert third == []
    # another context (a different held-out set) reuses nothing
    other = []
    descend(lambda plan: other.append(tuple(plan)) or accuracy(plan), ctx={"heldout_examples": 8})
    assert set(seen) <= set(other)


def test_every_config_variant_is_valid_and_unknown_ones_are_refused():
    from experiments.dfs.configs import default
    for variant in default.VARIANTS:
        dfs.check_config(default.get_config(variant))
    with pytest.raises(ValueError, match="unknown config variant 'fast'"):
        default.get_config("fast")
    config = default.get_config("smoke")
    config.dfs.targets = (30.0, 120.0)
    with pytest.raises(ValueError, match="computation percentage in \\(0, 100\\]"):
        dfs.check_config(config)
    config = default.get_config("smoke")
    config.dfs.static_baseline, config.dfs.static_mixture = False, True
    with pytest.raises(ValueError, match="pass --config.dfs.static_baseline=True too"):
        dfs.check_config(config)
    config = default.get_config("smoke")
    config.dfs.static_baseline, config.dfs.static_cascade = False, True
    with pytest.raises(ValueError, match="dfs.static_cascade starts from the static allocations"):
        dfs.check_config(config)


def test_greedy_per_saving_takes_the_big_free_step_first():
    # unit 0: float (3) -> 16 bits (2) saves 10 and loses nothing; unit 1: 2 -> 1 saves 1, gains
    # an image by noise. By accuracy alone the small step comes first; per saving, the big one.
    prices = {3: 10.0, 2: 1.0, 1: 0.5}

    def price(plan):
        return sum(prices[int(v)] for v in plan)

    def accuracy(plan):
        return 0.9 + 0.001 * (plan[1] == 1)

    def lower(plan):
        return [(u, np.where(np.arange(2) == u, plan - 1, plan)) for u in np.flatnonzero(plan > 1)]

    _, by_accuracy = search.greedy_descent(np.asarray([3, 2]), lower, price, accuracy, 10.0)
    _, per_saving = search.greedy_descent(np.asarray([3, 2]), lower, price, accuracy, 10.0,
                                          per_saving=True)
    assert by_accuracy[1]["moved"] == 1 and per_saving[1]["moved"] == 0


def test_a_fixed_plan_runs_for_every_image_and_trains_the_backbone_not_the_gate():
    """`forward(images, plan=...)`: the static allocation's path (its fine-tuning and evaluation)."""
    model = _calibrated(DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0)), _images(8))
    images, plan = _images(4, seed=5), np.asarray([1, 0, 3], np.int32)  # 8 bit, skip, float
    # the plan as a jit argument (traced), as a compiled caller would pass it
    logits, chosen = nnx.jit(lambda m, x, p: m.forward(x, plan=p))(model, images, plan)
    expected = execution.cond(SMALL).forward(model.quantized(), images, jnp.asarray(plan))
    np.testing.assert_allclose(logits, expected, atol=5e-3)  # rounding flips only (see above)
    np.testing.assert_array_equal(chosen, jax.nn.one_hot(np.stack([plan] * 4), SMALL.num_options))

    def loss(model):
        logits, _ = model.forward(images, plan=plan)
        return -jax.nn.log_softmax(logits)[jnp.arange(4), jnp.arange(4)].mean()

    model.train()
    grads = nnx.jit(nnx.grad(loss))(model)
    assert float(optax_norm(nnx.state(grads.gate))) == 0.0  # the gate is not used
    assert float(optax_norm(nnx.state(grads.backbone))) > 0
    with pytest.raises(ValueError, match="L = 3 blocks, got shape \\(4,\\)"):
        model.forward(images, plan=np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="option ints"):
        model.forward(images, plan=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="option 7 is not on the menu"):
        model.forward(images, plan=np.asarray([0, 7, 1]))


def _search_setup(seed: int):
    """What the static search runs on: a calibrated ResNet-8 DFS model split (graphdef, state),
    40 random held-out images and the model's costs without a gate."""
    model = _calibrated(DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0)), _images(8))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = types.SimpleNamespace(params=params, batch_stats=batch_stats)
    rng = np.random.default_rng(seed)
    split = datasets.Split(rng.integers(0, 256, (40, 32, 32, 3), np.uint8),
                           rng.integers(0, 10, 40).astype(np.int32), 10)
    return graphdef, state, split, dataclasses.replace(model.costs(), policy_macs=0)


def test_static_allocation_below_every_block_at_8_bits_starts_there_and_skips():
    """A budget under the all-8-bit plan's BitOPs needs skips: the search starts at that uniform
    plan (not at float) and lowers blocks to the skip until the budget is met."""
    graphdef, state, split, costs = _search_setup(seed=0)
    eight, skip = costs.plan_bitops(np.full(3, 1)), costs.plan_bitops(np.zeros(3, int))
    budgets = [float(eight), float(skip + 0.4 * (eight - skip))]
    (plan_at_eight, path_eight), (plan, path) = dfs.static_allocation(
        graphdef, state, split, "cifar10", SMALL, costs, budgets, batch_size=20)
    assert path[0]["plan"] == [1, 1, 1] and plan_at_eight.tolist() == [1, 1, 1]
    assert costs.plan_bitops(plan) <= budgets[1] and (plan == 0).sum() >= 1
    assert (plan <= 1).all() and len(path) == 1 + int((plan == 0).sum())


def _blend_and_slopes(menu: Bitwidths, choice, x, cotangent):
    """A training-mode block blend of rows choosing `choice`: (output, d <output, cotangent> /
    d weights (B, K), the block's updated ranges, its BN statistics after the call)."""
    model = DFSNet(resnet(8), menu, rngs=nnx.Rngs(0))
    model.ranges[...] = jnp.full_like(model.ranges[...], 3.0)
    model.train()

    def inner(model, weights):
        qblock = quantized.QuantizedBlock(model.backbone.units()[0], model.ranges[0], training=True)
        out = model.options.blend(qblock, x, weights)
        return (out * cotangent).sum(), (out, qblock.updated_ranges)

    grad, (out, ranges) = nnx.jit(nnx.grad(inner, argnums=1, has_aux=True))(
        model, jax.nn.one_hot(jnp.asarray(choice), menu.num_options))
    stats = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model.backbone, nnx.BatchStat))]
    return np.asarray(out), np.asarray(grad), np.asarray(ranges), stats, model


def test_the_two_path_estimator_changes_the_gradient_to_the_probed_option_only():
    """Training forward: the same output and the same updates (ranges, BN statistics) as the
    one-path estimator; backward: the weight of each row's probe option (one below its choice,
    one above 8 bits, 8 bits for a skipped row) gets another slope, every other run option the
    slope along the chosen residual, as before."""
    menu = Bitwidths((8, 12, 32))
    choice = [0, 1, 2, 3]   # skip, 8 bits, 12 bits, float
    probe = np.asarray([1, 2, 1, 2])
    x = nnx.relu(_images(4, seed=11)[:, :8, :8, :1] * jnp.ones(16))  # (4, 8, 8, 16), >= 0
    cotangent = jax.random.normal(jax.random.key(2), (4, 8, 8, 16))
    out1, grad1, ranges1, stats1, _ = _blend_and_slopes(menu, choice, x, cotangent)
    out2, grad2, ranges2, stats2, _ = _blend_and_slopes(
        dataclasses.replace(menu, estimator="two_path"), choice, x, cotangent)
    np.testing.assert_array_equal(out2, out1)
    np.testing.assert_array_equal(ranges2, ranges1)
    for a, b in zip(stats1, stats2):
        np.testing.assert_array_equal(a, b)
    # slopes relative to the skip's (a softmax's gradient ignores a common shift)
    rows, slope1, slope2 = np.arange(4), grad1 - grad1[:, :1], grad2 - grad2[:, :1]
    assert np.allclose(slope1[:, 1:], slope1[:, 1:2])  # one path: one slope for every run option
    assert (np.abs(slope1[:, 1]) > 1e-3).all()
    others = np.ones_like(grad2, bool)
    others[rows, probe] = others[:, 0] = False
    np.testing.assert_allclose(slope2[others], np.broadcast_to(slope1[:, 1:2], grad2.shape)[others],
                               rtol=1e-5)
    assert (np.abs(slope2[rows, probe] - slope1[rows, probe]) > 1e-4).all()
    with pytest.raises(ValueError, match="unknown estimator 'three_path'"):
        Bitwidths(estimator="three_path")


def test_the_two_path_probe_of_8_bit_rows_on_an_8_or_float_menu_is_the_float_block():
    """An independent check of the probe's value: rows at 8 bits on the menu {skip, 8, float}
    probe float, whose slope must be that of the plain block in training mode."""
    x = nnx.relu(_images(4, seed=12)[:, :8, :8, :1] * jnp.ones(16))
    cotangent = jax.random.normal(jax.random.key(3), (4, 8, 8, 16))
    _, grad, _, _, model = _blend_and_slopes(Bitwidths((8, 32), estimator="two_path"),
                                             [1, 1, 1, 1], x, cotangent)
    block = DFSNet(resnet(8), rngs=nnx.Rngs(0)).backbone.units()[0]
    block.train()
    shortcut = block.shortcut(x)
    expected = ((nnx.relu(shortcut + block.residual(x)) - shortcut) * cotangent).sum((1, 2, 3))
    np.testing.assert_allclose(grad[:, 2] - grad[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_plan_statistics_count_plans_price_each_image_and_share_skips_per_block():
    costs = dataclasses.replace(DFSNet(resnet(8), SMALL, rngs=nnx.Rngs(0)).costs(), policy_macs=0)
    plans = np.asarray([[0, 1, 3], [0, 1, 3], [1, 1, 3], [3, 3, 3]])
    stats = dfs.plan_statistics(plans, costs)
    bitops = np.asarray([costs.plan_bitops(p) for p in plans], np.float64)
    assert stats["distinct_plans"] == 3
    assert stats["bitops_mean"] == pytest.approx(bitops.mean())
    assert stats["bitops_cv"] == pytest.approx(bitops.std() / bitops.mean())
    assert stats["skip_share_per_block"] == [0.5, 0.0, 0.0]


@pytest.mark.parametrize("gate", ["recurrent", "once"])
def test_a_gate_started_at_a_plan_runs_it_for_every_image_and_learns_deviations(gate):
    """`start_gate_at_plan` (dfs.gate_start='static_plan'): every image runs the plan, and the
    layer that reads the input gets a gradient, so per-image choices can grow from the plan."""
    model = _calibrated(DFSNet(resnet(8), SMALL, gate, rngs=nnx.Rngs(0)), _images(8))
    plan = np.asarray([1, 0, 3])  # 8 bit, skip, float
    before = model.plan(_images(6, seed=2))
    assert (np.asarray(before) != plan).any()  # (the gates start near float everywhere)
    model.start_gate_at_plan(plan)
    np.testing.assert_array_equal(model.plan(_images(6, seed=2)), np.stack([plan] * 6))
    images, labels = _images(4, seed=9), jnp.arange(4)

    def loss(model):
        logits, weights = model.forward(images)
        total, _, sign = dfs.budget_terms(weights, model.options, 30.0)
        return -jax.nn.log_softmax(logits)[jnp.arange(4), labels].mean() + sign * 1e-2 * total

    model.train()
    grads = nnx.jit(nnx.grad(loss))(model)
    reads_input = (grads.gate.out.kernel if gate == "recurrent"
                   else grads.gate.layers[len(model.gate.layers) - 1].kernel)
    assert float(jnp.abs(reads_input[...]).max()) > 0
    with pytest.raises(ValueError, match="one \\(L,\\) plan for every image"):
        model.start_gate_at_plan(np.stack([plan] * 2))
    with pytest.raises(ValueError, match="option 9 is not on the menu"):
        model.start_gate_at_plan(np.asarray([1, 9, 0]))
    with pytest.raises(ValueError, match="margin must be positive"):
        model.start_gate_at_plan(plan, 0.0)


def test_static_allocation_priced_in_computation_percent_meets_the_target():
    """The plan a gate starts at (dfs.gate_start='static_plan') is searched at the joint step's
    target, a computation percentage: mean over blocks of (b/32)^2."""
    graphdef, state, split, costs = _search_setup(seed=1)
    [(plan, path)] = dfs.static_allocation(graphdef, state, split, "cifar10", SMALL, costs,
                                           [40.0], batch_size=20, price="computation")
    percentage = 100 * np.asarray(SMALL.computation())[plan].mean()
    assert percentage <= 40.0 and path[-1]["price"] == pytest.approx(percentage)
    assert path[0]["plan"] == [3, 3, 3]  # no uniform plan below float reaches 40 %: 12 bits = 14 %
    with pytest.raises(ValueError, match="priced in 'bitops' or 'computation'"):
        dfs.static_allocation(graphdef, state, split, "cifar10", SMALL, costs, [40.0], price="macs")


def test_starting_the_gate_and_calibrating_ranges_leave_the_given_state_as_it_was():
    """Both return a new state; the warm-up's, which every joint step and static run starts from
    (and whose digest keys the static runs), stays as it was (an eager nnx.merge shares its
    variables with the state it merges: found when a run's static runs were refused)."""
    import optax
    from adaptive_jax.train import checkpoint, create_train_state

    model = DFSNet(resnet(8), rngs=nnx.Rngs(0))
    graphdef, state = create_train_state(model, optax.identity(), 0)
    digest = lambda s: checkpoint.state_digest({"params": s.params, "batch_stats": s.batch_stats})  # noqa: E731
    before = digest(state)
    started = dfs.start_at_plan(graphdef, state, np.array([0, 1, 2]), 0.5)
    assert digest(state) == before and digest(started) != before
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    _, calibrated = dfs.calibrate_ranges(graphdef, state, [images], "cifar10")
    assert digest(state) == before and digest(calibrated) != before


def test_the_bracketing_mixture_takes_the_nearest_plans_on_either_side():
    rows = [{"c": 1.0, "a": 0.5}, {"c": 2.0, "a": 0.6}, {"c": 4.0, "a": 0.8}, {"c": 8.0, "a": 0.9}]
    mixed = search.bracketing_mixture(rows, 3.0, "c", ("a",))
    assert mixed["below"] is rows[1] and mixed["above"] is rows[2]
    assert mixed["share_above"] == pytest.approx(0.5) and mixed["a"] == pytest.approx(0.7)
    assert search.bracketing_mixture(rows, 2.0, "c", ("a",))["a"] == pytest.approx(0.6)  # at a plan
    assert search.bracketing_mixture(rows, 9.0, "c", ("a",)) is None  # nothing above
    assert search.bracketing_mixture(rows, 0.5, "c", ("a",)) is None  # nothing at or below


def test_the_gate_starts_at_the_searched_plan_or_at_the_step_above_the_target():
    path = [{"plan": [3, 3, 3], "price": 50.0}, {"plan": [2, 3, 3], "price": 44.0},
            {"plan": [2, 2, 3], "price": 38.0}]
    found = np.array([2, 2, 3])
    assert dfs.gate_start_of_search(found, path, "static_plan").tolist() == [2, 2, 3]
    above = dfs.gate_start_of_search(found, path, "static_plan_above")
    assert above.tolist() == [2, 3, 3] and above.dtype == np.int32
    # a search that started under the target priced nothing above it: its plan
    assert dfs.gate_start_of_search(found, path[-1:], "static_plan_above").tolist() == [2, 2, 3]
    with pytest.raises(ValueError, match="no plan to start the gate at"):
        dfs.gate_start_of_search(found, path, "warmup")


def test_a_static_allocation_run_is_keyed_by_plan_start_and_training_not_by_the_experiment():
    """The experiment may add targets or baselines and keep its static runs; a change to the
    plan, the starting state or what the fine-tuning reads makes another run."""
    import optax
    from adaptive_jax.train import create_train_state

    model = DFSNet(resnet(8), rngs=nnx.Rngs(0))
    state = create_train_state(model, optax.identity(), 0)[1]
    plan = np.array([0, 1, 2])

    def key(plan=plan, state=state, **dfs_overrides):
        config = dfs.step_config(dfs.default_config(), "joint", 30.0)
        for name, value in dfs_overrides.items():
            config.dfs[name] = value
        return dfs.static_run_key(config, state, plan)

    base = key()
    assert base["plan"] == [0, 1, 2] and set(base["recipe"]["dfs"]) == set(dfs.STATIC_DFS_KEYS)
    for same in (key(targets=(4.0, 5.0)), key(static_mixture=True), key(budget_weight=1.0),
                 key(gate_start="static_plan")):
        assert same == base
    moved = state.replace(params=jax.tree.map(lambda x: x + 1e-3, state.params))
    for different in (key(plan=np.array([0, 2, 2])), key(state=moved), key(widths=(8, 32)),
                      key(joint_epochs=2), key(per_bitwidth_ranges=False)):
        assert different != base
