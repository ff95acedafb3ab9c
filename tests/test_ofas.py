"""OFAS: the network planned by one head after the stem, its executors, its cost, and stage B."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax import cost
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.methods.ofas import OFASNet
from adaptive_jax.train import create_train_state, ofas, read_metrics, train_and_evaluate
from tests.conftest import random_split

DEPTH = 14


@pytest.fixture(scope="module")
def net():
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))  # rbg: threefry compiles slowly on XLA:CPU
    model = OFASNet(CifarResNet(ResNetSpec(DEPTH), rngs=rngs), (32,), rngs=rngs)
    # A head that plans something other than "all on": random biases around 0.
    last = model.policy.layers[-1]
    last.bias.value = jnp.asarray(np.random.default_rng(3).normal(0, 2, last.bias.value.shape),
                                  jnp.float32)
    model.eval()
    return model


def _images(batch, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, 32, 32, 3), np.float32))


def test_plan_is_per_sample_and_mixed(net):
    plan = np.asarray(net.plan(_images(8)))
    assert plan.shape == (8, 6) and plan.dtype == bool
    assert 0 < plan.mean() < 1


def test_cond_and_bucketed_give_the_masked_logits(net):
    images = _images(8)
    want = net(images)  # eval mode: thresholded plan through the masked executor
    logits, plan = net.predict(images, "bucketed", buckets=4)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(plan, net.plan(images))
    for i in range(3):
        one, one_plan = net.predict(images[i:i + 1], "cond")
        np.testing.assert_allclose(one, want[i:i + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(one_plan, plan[i:i + 1])
    with pytest.raises(ValueError, match="unknown executor 'vmap'"):
        net.predict(images, "vmap")


def test_training_forward_reaches_the_head_through_straight_through(net):
    images = _images(4)
    graphdef, params, stats = nnx.split(net, nnx.Param, nnx.BatchStat)

    def loss(params):
        model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats))
        model.train()
        return model(images).sum()

    grads = jax.grad(loss)(params)
    assert np.any(grads["policy"]["layers"][0]["kernel"].value)


def test_static_subnet_trains_without_running_its_skipped_blocks():
    """FixedPlanNet in training: the masked executor's logits, but the skipped blocks get no
    gradient and keep their BN statistics (they did not run)."""
    from adaptive_jax.methods.ofas import FixedPlanNet
    from adaptive_jax import execution

    plan = (True, False, True, True, True, False)
    model = FixedPlanNet(CifarResNet(ResNetSpec(DEPTH), rngs=nnx.Rngs(1)), plan)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    before = jax.tree.map(np.array, stats)
    images = _images(4, seed=5)

    def loss(params):
        m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, stats))
        m.train()
        return (m(images) ** 2).sum(), nnx.state(m, nnx.BatchStat)

    (value, after), grads = jax.value_and_grad(loss, has_aux=True)(params)
    masked = nnx.merge(graphdef, params, jax.tree.map(np.array, before))
    masked.train()
    b = masked.backbone
    ref = b.classify(execution.masked().run_units(b, b.stem(images), masked.plan(images)))
    np.testing.assert_allclose(value, (ref ** 2).sum(), rtol=1e-5)
    rest = grads["backbone"]["stages"][0]["rest"]["conv1"]["kernel"][...]  # block 1: skipped
    assert float(jnp.abs(rest).sum()) == 0
    assert float(jnp.abs(grads["backbone"]["stages"][0]["first"]["conv1"]["kernel"][...]).sum()) > 0
    last = lambda s: np.asarray(s["backbone"]["stages"][2]["rest"]["bn1"]["mean"][...])  # block 5
    np.testing.assert_array_equal(last(after), last(before))


def test_static_subnet_predicts_what_it_evaluates():
    """FixedPlanNet.predict (the static executor: the skipped blocks do not run) gives the logits
    of its evaluation forward (the masked executor, every block computed)."""
    from adaptive_jax.methods.ofas import FixedPlanNet

    model = FixedPlanNet(CifarResNet(ResNetSpec(DEPTH), rngs=nnx.Rngs(2)),
                         (False, True, True, False, True, True))
    model.eval()
    images = _images(3, seed=6)
    np.testing.assert_allclose(model.predict(images), model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("logit_norm", ["none", "batch"])
def test_a_head_started_at_a_plan_gives_every_image_that_plan(logit_norm):
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    model = OFASNet(CifarResNet(ResNetSpec(DEPTH), rngs=rngs), (32,), logit_norm=logit_norm,
                    input_norm="layer", pool_grid=4, activation="relu", rngs=rngs)
    plan = np.array([True, False, True, True, False, False])
    head = model.policy  # as a trained head leaves them: whatever it learned is overwritten
    head.layers[-1].bias[...] = jnp.linspace(-4.0, 4.0, 6)
    if head.score_norm is not None:
        head.score_norm.mean[...], head.score_norm.var[...] = jnp.full(6, 0.5), jnp.full(6, 4.0)
    model.policy.start_at_plan(plan, margin=3.0)
    images = _images(8, seed=2)
    for mode in (model.eval, model.train):  # inference, and the first training step's logits
        mode()
        logits = model.policy(model.backbone.stem(images))
        np.testing.assert_allclose(logits, np.broadcast_to(np.where(plan, 3.0, -3.0), (8, 6)),
                                   atol=1e-5)
    model.eval()
    np.testing.assert_array_equal(model.plan(images), np.broadcast_to(plan, (8, 6)))
    with pytest.raises(ValueError, match=r"a start plan is \(6,\) bools"):
        model.policy.start_at_plan(plan[:5])
    with pytest.raises(ValueError, match="margin must be positive"):
        model.policy.start_at_plan(plan, margin=0.0)


def test_starting_the_head_at_a_plan_leaves_the_given_state_as_it_was():
    """ofas.start_at_plan returns a new state: the one it is given (stage A's, shared by every
    penalty and digested in the static sub-nets' run keys) is not changed through the merge."""
    import optax
    from adaptive_jax.train import checkpoint

    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    model = OFASNet(CifarResNet(ResNetSpec(DEPTH), rngs=rngs), (32,), rngs=rngs)
    graphdef, state = create_train_state(model, optax.identity(), 0)
    digest = lambda s: checkpoint.state_digest({"params": s.params, "batch_stats": s.batch_stats})  # noqa: E731
    before = digest(state)
    started = ofas.start_at_plan(graphdef, state, np.array([True, False] * 3), 3.0)
    assert digest(state) == before and digest(started) != before


def test_plan_macs_count_the_head(net):
    costs = net.costs()
    assert costs.policy_macs == 16 * 32 + 32 * 6
    assert costs.full_macs == cost.model_cost(net.backbone).macs
    plan = np.asarray(net.plan(_images(8)))
    np.testing.assert_allclose(costs.plan_macs_jnp(jnp.asarray(plan)), costs.plan_macs(plan),
                               rtol=1e-6)
    assert costs.plan_macs(np.ones(6, bool)) == costs.full_macs + costs.policy_macs


def _tiny_config(**rl):
    c = ofas.default_config()
    c.model.depth = 8
    c.num_epochs = 1
    c.batch_size = 16
    c.eval_batch_size = 20
    c.log_every_steps = 1
    c.progress_bar = False
    c.num_devices = 1
    c.rl.update(rl)
    return c


def test_stage_b_resumes_exactly(tmp_path):
    data = random_split(64, seed=10), random_split(40, seed=11)
    config = _tiny_config()
    stage_a = train_and_evaluate(config, str(tmp_path / "a"), data, ofas.stage_a_task())
    b_config = ofas.stage_b_config(config, 4.0)
    straight = train_and_evaluate(b_config, str(tmp_path / "straight"), data,
                                  ofas.stage_b_task(stage_a["state"]))
    stop = ofas.stage_b_config(config, 4.0)
    stop.stop_after_steps = 2
    train_and_evaluate(stop, str(tmp_path / "resumed"), data, ofas.stage_b_task(stage_a["state"]))
    resumed = train_and_evaluate(b_config, str(tmp_path / "resumed"), data,
                                 ofas.stage_b_task(stage_a["state"]))
    for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
        np.testing.assert_array_equal(a, b)
    assert straight["test_accuracy"] == resumed["test_accuracy"]
    logged = [r for r in read_metrics(os.path.join(tmp_path / "straight", "metrics.jsonl"))
              if "train_loss" in r]
    assert {"train_greedy_accuracy", "train_block_macs_frac", "train_policy_loss"} <= set(logged[0])


def test_bad_ofas_config_is_named(tmp_path):
    data = random_split(32, seed=1), random_split(20, seed=2)
    for key, value, match in [("reward", "a2c", "unknown rl.reward 'a2c'"),
                              ("fidelity", "paper", "unknown rl.fidelity 'paper'"),
                              ("bound", 0.2, "alpha must be in")]:
        with pytest.raises(ValueError, match=match):
            train_and_evaluate(_tiny_config(**{key: value}), str(tmp_path / key), data,
                               ofas.stage_a_task())
    for flag in ("static_mixture", "static_cascade"):
        with pytest.raises(ValueError, match="pass --config.rl.static_baseline=True too"):
            ofas.check_config(_tiny_config(**{flag: True}))
    config = _tiny_config()
    config.policy.start, config.policy.start_block_share = "warm", 1.5
    with pytest.raises(ValueError, match=r"policy.start = 'warm': expected one of \['on', "
                                         r"'static_plan'\]\n.*start_block_share = 1.5: expected a "
                                         r"finite number > 0 and < 1"):
        ofas.check_config(config)


def test_static_mixture_costs_the_point_and_interpolates_accuracy():
    """Two static sub-nets mixed at MACs between theirs: the share w of images on the one above
    makes the mean cost exactly those MACs; accuracy and block share follow the same line."""
    below = {"test_macs": 30e6, "test_accuracy": 0.80, "test_block_macs_frac": 0.40,
             "static_plan": [True, False, False]}
    above = {"test_macs": 40e6, "test_accuracy": 0.84, "test_block_macs_frac": 0.55,
             "static_plan": [True, True, False]}
    mix = ofas.static_mixture(below, above, 32.5e6)
    assert mix["share_above"] == pytest.approx(0.25)
    assert mix["test_accuracy"] == pytest.approx(0.81) and mix["test_macs"] == 32.5e6
    assert mix["test_block_macs_frac"] == pytest.approx(0.4375)
    # per-image MACs take two values, 30 M on 3/4 of the images and 40 M on 1/4
    assert mix["macs_cv"] == pytest.approx(np.std([30, 30, 30, 40]) / 32.5)
    assert mix["distinct_plans"] == 2 and mix["static_plans"] == [below["static_plan"], above["static_plan"]]
    assert "cost_cv" not in mix
    assert ofas.static_mixture(below, above, 30e6)["test_accuracy"] == pytest.approx(0.80)
    for macs in (29e6, 41e6):
        with pytest.raises(ValueError, match="needs one at or below"):
            ofas.static_mixture(below, above, macs)


def test_routing_statistics_count_what_a_router_could_gain_and_where_ofas_spends():
    # 10 images: the static sub-net below right on 0-6, the one above on 0-5 and 7-8 (so it alone
    # gets 7 and 8, the one below alone gets 6); OFAS spends 0.9 on 7-9, 0.5 elsewhere
    below = np.arange(10) < 7
    above = np.isin(np.arange(10), [0, 1, 2, 3, 4, 5, 7, 8])
    frac = np.where(np.arange(10) >= 7, 0.9, 0.5)
    ofas_right = np.isin(np.arange(10), [0, 1, 2, 3, 4, 7])  # right on 7 (below wrong), wrong on 5, 6
    stats = ofas.routing_statistics(ofas_right, frac, below, above, share_above=0.1)
    assert stats["oracle_mixture_accuracy"] == pytest.approx(0.8)   # image 7 or 8 sent above
    assert ofas.routing_statistics(ofas_right, frac, below, above, 0.5)["oracle_mixture_accuracy"] \
        == pytest.approx(0.9)                                        # both, and three neutral
    # all ten above: the one above's own accuracy, however it is split
    assert ofas.routing_statistics(ofas_right, frac, below, above, 1.0)["oracle_mixture_accuracy"] \
        == pytest.approx(0.8)
    assert stats["static_above_only_right"] == pytest.approx(0.2)
    assert stats["static_below_only_right"] == pytest.approx(0.1)
    assert stats["ofas_block_frac_static_wrong"] == pytest.approx(0.9)
    assert stats["ofas_block_frac_static_right"] == pytest.approx(0.5)
    assert stats["ofas_only_right"] == pytest.approx(0.1)
    assert stats["static_only_right"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="different lengths"):
        ofas.routing_statistics(ofas_right[:9], frac, below, above, 0.1)
    with pytest.raises(ValueError, match="share_above = 1.5"):
        ofas.routing_statistics(ofas_right, frac, below, above, 1.5)


def _search_case(net, seed):
    """40 random held-out images and a stage-B state of `net` for a greedy static search."""
    from adaptive_jax.data import datasets

    rng = np.random.default_rng(seed)
    split = datasets.Split(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                           rng.integers(0, 10, 40), 10)
    graphdef, state = create_train_state(net, ofas.make_stage_b_tx(ofas.stage_b_config(
        ofas.default_config(), 1.0), 1, 1)[0], 0)
    return split, graphdef, state


def test_a_greedy_path_continued_from_its_end_is_the_path_searched_at_once(net):
    """Why one cached path serves every budget: searching to a high budget and continuing from
    its last plan to a low one takes the same steps as searching to the low one at once."""
    split, graphdef, state = _search_case(net, seed=0)
    costs = net.costs()
    low, high = (costs.base_macs + costs.policy_macs + share * sum(costs.run_macs)
                 for share in (0.3, 0.7))
    search = functools.partial(ofas.greedy_static_plan, graphdef, state, split, "cifar10", costs,
                               batch_size=20)
    plan, path = search(low)
    _, first = search(high)
    continued_plan, rest = search(low, start=first[-1]["plan"])
    assert rest[0]["plan"] == first[-1]["plan"] and len(first) > 1 and len(rest) > 1
    assert first + rest[1:] == path and continued_plan == plan


def test_the_greedy_search_resumes_from_its_journal_and_scores_plans_as_the_masked_path(net, tmp_path):
    """The search runs its candidates on the cond executor (dropped blocks do not run): each
    step's held-out accuracy is the one the masked training path gives that plan. Its journal
    holds every plan it scored, and a search run again on the journal scores none anew."""
    from adaptive_jax import execution
    from adaptive_jax.data import datasets
    from adaptive_jax.data.augment import normalize

    split, graphdef, state = _search_case(net, seed=1)
    costs = net.costs()
    budget = costs.base_macs + costs.policy_macs + 0.4 * sum(costs.run_macs)
    journal = str(tmp_path / "journal.jsonl")
    search = functools.partial(ofas.greedy_static_plan, graphdef, state, split, "cifar10", costs,
                               budget, batch_size=16, journal=journal)
    plan, path = search()
    with open(journal) as f:
        scored = f.read().splitlines()
    num_blocks = len(costs.run_macs)
    assert len(scored) == 1 + sum(num_blocks - i for i in range(len(path) - 1))  # all distinct

    masked = execution.jit_predict(graphdef, lambda model, x, plan: model.backbone.classify(
        execution.masked().run_units(model.backbone, model.backbone.stem(x),
                                     jnp.broadcast_to(plan, (x.shape[0], num_blocks)))))
    images = normalize(jnp.asarray(split.images), datasets.CHANNEL_MEAN["cifar10"],
                       datasets.CHANNEL_STD["cifar10"])
    for step in (path[0], path[-1]):
        logits = masked(state.params, state.batch_stats, images, jnp.asarray(step["plan"]))
        assert step["accuracy"] == pytest.approx(float((logits.argmax(-1) == split.labels).mean()))

    assert search() == (plan, path)
    with open(journal) as f:
        assert f.read().splitlines() == scored  # nothing scored again


def test_a_static_run_is_keyed_by_plan_backbone_and_recipe_not_by_the_head(net):
    """Two OFAS runs share a static sub-net's fine-tuning only if it would train the same weights:
    the head's settings, the penalty and the loop's bookkeeping do not change the key; the plan,
    the starting backbone and the backbone's recipe do."""
    state = create_train_state(net, ofas.make_stage_b_tx(ofas.stage_b_config(
        ofas.default_config(), 1.0), 10, 10)[0], 0)[1]
    plan = (True, False, True, True, False, True)

    def key(plan=plan, state=state, **overrides):
        config = ofas.stage_b_config(ofas.default_config(), overrides.pop("penalty", 1.0))
        for name, value in overrides.items():
            section, _, field = name.rpartition(".")
            (config[section] if section else config)[field] = value
        return ofas.static_run_key(config, state, plan)

    base = key()
    assert base["plan"] == list(plan) and "policy" not in base["recipe"]
    for same in (key(penalty=4.0), key(**{"policy.start": "static_plan"}),
                 key(**{"rl.policy_learning_rate": 0.1}), key(eval_batch_size=100),
                 key(data_dir="/elsewhere"), key(checkpoint_every_steps=100)):
        assert same == base
    def nudged(part):  # the state with one part's weights moved
        return state.replace(params=jax.tree_util.tree_map_with_path(
            lambda path, x: x + 1e-3 if path[0].key == part else x, state.params))

    assert key(state=nudged("policy")) == base
    for different in (key(plan=(True,) * 6), key(state=nudged("backbone")), key(seed=1),
                      key(**{"rl.distill_weight": 0.5}), key(**{"rl.backbone_learning_rate": 0.1}),
                      key(num_train_examples=100)):
        assert different != base


def test_a_run_directory_refuses_another_runs_key(tmp_path):
    from adaptive_jax.train.workdir import WorkdirError, claim_run_dir

    run_dir = str(tmp_path / "static" / "101")
    key = {"plan": [True, False, True], "recipe": {"seed": 0, "rl": {"distill_weight": 0.5}}}
    assert claim_run_dir(run_dir, key) == run_dir
    assert claim_run_dir(run_dir, key) == run_dir  # the same run: resumed
    with pytest.raises(WorkdirError, match=r"holds another run .*recipe\.rl\.distill_weight: "
                                           r"held 0\.5, wanted 0\.0"):
        claim_run_dir(run_dir, {**key, "recipe": {"seed": 0, "rl": {"distill_weight": 0.0}}})
    unkeyed = tmp_path / "static" / "111"
    (unkeyed / "checkpoints").mkdir(parents=True)
    with pytest.raises(WorkdirError, match="holds files but no run_key.json"):
        claim_run_dir(str(unkeyed), key)


def test_per_block_gates_batch1_path_matches_their_blend():
    from adaptive_jax.methods.gates import GatedResNet
    rngs = nnx.Rngs(jax.random.key(1, impl="rbg"))
    model = GatedResNet(CifarResNet(ResNetSpec(DEPTH), rngs=rngs), rngs=rngs)
    rng = np.random.default_rng(0)
    for gates in model.gates:  # gates that open for some inputs and not others
        for gate in (gates.first, gates.rest):
            gate.out.bias[...] = jnp.asarray(rng.normal(0, 1, gate.out.bias[...].shape), jnp.float32)
            gate.out.kernel[...] = jnp.asarray(rng.normal(0, 3, gate.out.kernel[...].shape), jnp.float32)
    model.eval()
    images = _images(6, seed=5)
    logits, plan = model.blend(images)
    assert plan.shape == (6, 6) and 0 < float(plan.mean()) < 1
    for i in range(6):
        one, one_plan = model.predict(images[i:i + 1])
        np.testing.assert_allclose(one, logits[i:i + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(one_plan[0], plan[i] > 0.5)
    with pytest.raises(ValueError, match="one image"):
        model.predict(images)
    with pytest.raises(TypeError, match="not GatedResNet"):  # its gates are not block-priced
        cost.block_costs(model)


def test_straight_through_stage_b_trades_blocks_for_its_penalty(tmp_path):
    """rl.estimator='straight_through': the head learns from the loss gradient through the hard
    decisions; a large compute penalty pushes every block's execute logit down (Adam's first step
    is -lr * sign(gradient)), and a few steps of it turn blocks off."""
    config = _tiny_config(estimator="straight_through", policy_learning_rate=0.05)
    config.policy.input_norm = "layer"
    images = random_split(16, seed=1)
    biases, fractions = {}, {}
    last = len(ofas.OFAS_VARIANTS[config.policy.variant])  # the head's output layer
    for penalty in (0.0, 50.0):
        b = ofas.stage_b_config(config, penalty)
        tx, _ = ofas.make_stage_b_tx(b, 4, 12)
        graphdef, state = create_train_state(ofas.build_model(b, 10, 3), tx, 0)
        start = np.asarray(state.params["policy"]["layers"][last]["bias"][...])
        step = ofas.make_stage_b_step(graphdef, tx, b, num_classes=10, mean=(0.5,) * 3,
                                      std=(0.25,) * 3)
        state, _ = step(state, images.images, images.labels)
        biases[penalty] = np.asarray(state.params["policy"]["layers"][last]["bias"][...]) - start
        for _ in range(5):
            state, metrics = step(state, images.images, images.labels)
        fractions[penalty] = float(metrics["greedy_block_macs_frac"])
    np.testing.assert_allclose(biases[50.0], -0.05, rtol=1e-3)
    assert fractions[50.0] < 0.7
    with pytest.raises(ValueError, match="unknown rl.estimator 'gumbel'"):
        train_and_evaluate(_tiny_config(estimator="gumbel"), str(tmp_path / "bad"),
                           (random_split(32, seed=1), random_split(20, seed=2)), ofas.stage_a_task())


def test_distillation_from_the_full_backbone(tmp_path):
    """rl.distill_weight: the teacher is stage A's backbone with every block run in eval mode;
    the soft CE has no gradient where the student already matches it; stage B and the static
    sub-net both learn from (1 - a) CE + a KD and log it."""
    from adaptive_jax.train import steps

    teacher_logits = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    grad = jax.grad(lambda s: steps.soft_cross_entropy(s, teacher_logits, 4.0).sum())
    np.testing.assert_allclose(grad(teacher_logits), 0.0, atol=1e-6)
    assert np.all(np.abs(grad(jnp.zeros_like(teacher_logits))) > 1e-3)

    data = random_split(32, seed=10), random_split(20, seed=11)
    config = _tiny_config(distill_weight=0.5)
    stage_a = train_and_evaluate(config, str(tmp_path / "a"), data, ofas.stage_a_task())
    images = _images(4, seed=2)
    teacher = ofas.full_backbone_teacher(config, 10, 3, stage_a["state"])
    model = nnx.merge(stage_a["graphdef"], stage_a["state"].params, stage_a["state"].batch_stats)
    model.eval()
    np.testing.assert_allclose(teacher(images), model.backbone(images), rtol=1e-5, atol=1e-5)

    b_config = ofas.stage_b_config(config, 1.0)
    for name, task in [("b", ofas.stage_b_task(stage_a["state"])),
                       ("static", ofas.static_plan_task((True, False, True), stage_a["state"]))]:
        train_and_evaluate(b_config, str(tmp_path / name), data, task)
        logged = [r for r in read_metrics(os.path.join(tmp_path / name, "metrics.jsonl"))
                  if "train_loss" in r]
        assert logged and all(np.isfinite(r["train_distill_loss"]) and r["train_distill_loss"] > 0
                              for r in logged)
    with pytest.raises(ValueError, match="needs a teacher"):
        tx, _ = ofas.make_stage_b_tx(b_config, 2, 2)
        graphdef, _ = create_train_state(ofas.build_model(b_config, 10, 3), tx, 0)
        ofas.make_stage_b_step(graphdef, tx, b_config, num_classes=10, mean=(0.5,) * 3,
                               std=(0.25,) * 3)
