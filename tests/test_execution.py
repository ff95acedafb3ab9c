"""Executors: every one returns what the masked executor returns for the same plan."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax import latency
from adaptive_jax.execution import cond, make_predict_fn, masked
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.plans import BlockLayout, StaticBlockPlan
from tests.conftest import running_statistics

pytestmark = pytest.mark.usefixtures("strict_dtype_promotion")

DEPTH = 14  # two blocks per stage: a transition block and one stacked block in each


@pytest.fixture(scope="module", params=["projection", "pad"])
def net(request):
    # rbg keys: threefry takes seconds to compile per weight shape on XLA:CPU.
    model = CifarResNet(ResNetSpec(DEPTH, shortcut=request.param),
                        rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    stats = running_statistics(stats)
    logits = make_predict_fn(graphdef)(params, stats, _images(4))
    assert float(jnp.abs(logits).max()) > 0.1 and float(jnp.std(logits)) > 0.01
    return graphdef, params, stats


def _images(batch, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, 32, 32, 3), np.float32))


def _plans(batch, seed):
    layout = BlockLayout.of(ResNetSpec(DEPTH))
    rng = np.random.default_rng(seed)
    transitions = np.zeros(layout.num_blocks, bool)
    transitions[[s.start for s in layout.stage_slices()]] = True
    return {"all on": np.ones((batch, layout.num_blocks), bool),
            "all off": np.zeros((batch, layout.num_blocks), bool),
            "transitions off": np.broadcast_to(~transitions, (batch, layout.num_blocks)),
            "random": rng.random((batch, layout.num_blocks)) < 0.5}


def test_masked_all_on_is_the_plain_network(net):
    graphdef, params, stats = net
    images = _images(4)
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    plan = np.ones((4, 3 * (DEPTH - 2) // 6), bool)
    np.testing.assert_allclose(make_predict_fn(graphdef, "masked")(params, stats, images, plan),
                               model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 8])
def test_cond_equals_masked_for_a_shared_plan(net, batch):
    graphdef, params, stats = net
    run_masked, run_cond = make_predict_fn(graphdef, "masked"), make_predict_fn(graphdef, "cond")
    images = _images(batch)
    for name, plans in _plans(batch, seed=batch).items():
        shared = plans[0]
        want = run_masked(params, stats, images, np.broadcast_to(shared, plans.shape))
        got = run_cond(params, stats, images, shared)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_cond_runs_eagerly_on_weights_set_from_numpy(net):
    # A model whose arrays a user set from numpy (np.load): the cond walk's loop over stacked
    # blocks indexes them with a traced index, eagerly too.
    graphdef, params, stats = net
    images, plan = _images(1), _plans(1, seed=3)["random"][0]
    want = make_predict_fn(graphdef, "cond")(params, stats, images, plan)
    model = nnx.merge(graphdef, jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, stats))
    model.eval()
    assert isinstance(jax.tree.leaves(nnx.state(model))[0], np.ndarray)
    got = model.classify(cond().run_units(model, model.stem(images), jnp.asarray(plan)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_masked_per_sample_plans_equal_each_sample_alone(net):
    graphdef, params, stats = net
    run_masked, run_cond = make_predict_fn(graphdef, "masked"), make_predict_fn(graphdef, "cond")
    images = _images(5)
    plans = _plans(5, seed=7)["random"]
    batched = run_masked(params, stats, images, plans)
    for i in range(5):
        alone = run_cond(params, stats, images[i:i + 1], plans[i])
        np.testing.assert_allclose(batched[i:i + 1], alone, rtol=1e-5, atol=1e-5, err_msg=f"sample {i}")


@pytest.mark.parametrize("batch", [1, 8])
def test_bucketed_equals_masked_for_per_sample_plans(net, batch):
    graphdef, params, stats = net
    run_masked = make_predict_fn(graphdef, "masked")
    run_bucketed = make_predict_fn(graphdef, "bucketed", buckets=min(batch, 8))
    images = _images(batch, seed=batch)
    for name, plans in _plans(batch, seed=batch).items():
        want = run_masked(params, stats, images, plans)
        np.testing.assert_allclose(run_bucketed(params, stats, images, plans), want,
                                   rtol=1e-5, atol=1e-5, err_msg=name)
    shared = _plans(batch, seed=3)["random"][0]  # one (L,) plan for the whole batch
    np.testing.assert_allclose(run_bucketed(params, stats, images, shared),
                               run_masked(params, stats, images, np.broadcast_to(shared, (batch, 6))),
                               rtol=1e-5, atol=1e-5)


def test_fastest_exact_measures_exact_alternatives_and_refuses_another_computation(net):
    """latency.fastest_exact picks by measured time among ways of computing the same outputs: a
    deliberately slow but exact way is never the choice; a way that computes something else (one
    plan's decisions flipped) is an error naming it."""
    graphdef, params, stats = net
    images = _images(8, seed=2)
    plans = _plans(8, seed=5)["random"]
    run_masked = make_predict_fn(graphdef, "masked")
    run_bucketed = make_predict_fn(graphdef, "bucketed", buckets=4)

    def slow(params, stats, batch):
        time.sleep(0.05)
        return run_masked(params, stats, batch, plans)

    ways = {"masked": lambda p, s, x: run_masked(p, s, x, plans),
            "bucketed": lambda p, s, x: run_bucketed(p, s, x, plans), "slow masked": slow}
    chosen, ms = latency.fastest_exact(ways, (params, stats), [images, images[::-1]], rounds=2)
    assert chosen in ("masked", "bucketed") and set(ms) == set(ways)
    assert ms[chosen] == min(ms.values()) and ms["slow masked"] >= 50
    flipped = ~plans
    other = {"masked": ways["masked"], "other plans": lambda p, s, x: run_masked(p, s, x, flipped)}
    with pytest.raises(ValueError, match="'other plans' and 'masked' give different outputs"):
        latency.fastest_exact(other, (params, stats), [images])


def test_masked_float_gates_are_differentiable(net):
    graphdef, params, stats = net
    images = _images(2)

    def loss(gates):
        model = nnx.merge(graphdef, params, stats)
        model.eval()
        return masked().forward(model, images, gates).sum()

    grads = jax.grad(loss)(jnp.full((2, 6), 0.5))
    assert grads.shape == (2, 6) and bool(jnp.all(jnp.isfinite(grads)))
    assert float(jnp.abs(grads).min()) > 0  # every gate moves the output


def test_bad_plans_and_modes_are_named(net):
    graphdef, params, stats = net
    run_cond = make_predict_fn(graphdef, "cond")
    with pytest.raises(ValueError, match="one plan per call.*3 samples"):
        run_cond(params, stats, _images(3), np.ones((3, 6), bool))
    with pytest.raises(ValueError, match=r"5 block bits, but resnet14 \(6 blocks"):
        run_cond(params, stats, _images(1), np.ones(5, bool))
    with pytest.raises(ValueError, match="batch 12 is not a multiple of buckets=8"):
        make_predict_fn(graphdef, "bucketed")(params, stats, _images(12), np.ones((12, 6), bool))
    with pytest.raises(ValueError, match="unknown executor 'fast'"):
        make_predict_fn(graphdef, "fast")
    model = nnx.merge(graphdef, params, stats)
    model.train()
    with pytest.raises(ValueError, match="for inference: call model.eval"):
        cond().forward(model, _images(1), np.ones(6, bool))


def test_static_executor_equals_masked_and_caches(net):
    from adaptive_jax.execution import StaticExecutor
    graphdef, params, stats = net
    layout = BlockLayout.of(ResNetSpec(DEPTH))
    run_masked = make_predict_fn(graphdef, "masked")
    executor = StaticExecutor(graphdef, params, stats, max_executables=2)
    images = _images(2)
    plans = [StaticBlockPlan.from_array(p[0], layout) for p in _plans(1, seed=11).values()]
    for plan in plans:  # all on, all off, transitions off, random
        want = run_masked(params, stats, images, np.broadcast_to(plan.to_array(), (2, 6)))
        np.testing.assert_allclose(executor(images, plan), want, rtol=1e-5, atol=1e-5)
    assert executor.stats() == {"compilations": 4, "hits": 0, "evictions": 2, "live": 2}
    executor(images, plans[-1])  # the most recent plan is still cached
    assert executor.stats()["hits"] == 1 and executor.stats()["compilations"] == 4
    executor.warm_up(plans[:2], batch_sizes=(2,))
    before = executor.stats()["compilations"]
    executor(images, plans[1])
    assert executor.stats()["compilations"] == before  # served from the warm cache
    other = StaticBlockPlan(BlockLayout.of(ResNetSpec(20)), (True,) * 9)
    with pytest.raises(ValueError, match="made for resnet20.*not for resnet14"):
        executor(images, other)
    with pytest.raises(ValueError, match="max_executables must be an integer >= 1"):
        StaticExecutor(graphdef, params, stats, max_executables=0)


def test_block_by_block_carries_a_recurrent_deciders_state(net):
    """A decider with state (as DFS's LSTM gate): here a block counter that runs every other
    block; at batch 1 each decision is a `lax.cond`, equal to the cond executor on that plan."""
    from adaptive_jax.execution.executors import block_by_block
    from adaptive_jax.methods import GatedResNet
    graphdef, params, stats = net
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    gates = GatedResNet(model, rngs=nnx.Rngs(1)).gates  # the companions; their outputs unused
    image = _images(1)

    def decide(gate, h, count):
        return count % 2 == 0, count + 1

    x, decisions, count = block_by_block(model, model.stem(image), gates, decide,
                                         state=jnp.zeros((), jnp.int32))
    plan = np.arange(6) % 2 == 0
    assert int(count) == 6
    np.testing.assert_array_equal(decisions, plan)
    np.testing.assert_allclose(model.classify(x), cond().forward(model, image, plan),
                               rtol=1e-5, atol=1e-5)
