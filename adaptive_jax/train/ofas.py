"""OFAS training (docs/methods.md 3.3) as two tasks for `train_and_evaluate`.

Stage A (`stage_a_task`): end-to-end supervised training of backbone and head, straight-through
decisions, cross-entropy only: `OFASNet.__call__` in training mode is exactly that, so the
supervised step is reused as is. Stage B (`stage_b_task`): policy gradient on the head (REINFORCE,
self-critical greedy baseline, a reward shape from `policy_gradient`), while the backbone keeps
learning by cross-entropy on the sampled plans (SkipNet's "hybrid" loss), starting from stage A's
weights. Both evaluate the thresholded plans and report accuracy, the share of block MACs and the
MACs per image (policy included), counted per test image.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from adaptive_jax import config as config_lib, cost, execution
from adaptive_jax.config import check_config_keys
from adaptive_jax.data.augment import normalize
from adaptive_jax.methods.ofas import OFASNet
from adaptive_jax.policies import OFAS_VARIANTS, decisions
from adaptive_jax.train import checkpoint, loop, optim, policy_gradient as pg, search, steps

_MASKED = execution.masked()  # the training / evaluation path of every plan
_COND = execution.cond()      # one plan for a whole batch, its skipped blocks not run

FIDELITIES = ("clean", "ofas_code")
ESTIMATORS = ("reinforce", "straight_through")


def default_config() -> ml_collections.ConfigDict:
    """The loop's keys (stage A's schedule) plus the policy head (`policy`) and stage B (`rl`)."""
    c = loop.default_config()
    c.model.depth = 32
    c.policy = ml_collections.ConfigDict()
    c.policy.variant = "I"                  # hidden widths of the linear stack, OFAS_VARIANTS
    c.policy.initial_execute_prob = 0.9
    c.policy.pool_grid = 1                  # 1: global average pool (the reference); g: g x g grid
    c.policy.activation = "none"            # "none": the reference's linear stack; "relu"
    c.policy.input_norm = "none"            # "layer": standardise the pooled features per image
    c.policy.logit_norm = "none"            # "batch": per-block score batch-normalised, x logit_scale,
    c.policy.logit_scale = 2.0              # + a learned bias (rate and ranking apart; policies/ofas.py)
    c.policy.start = "on"                   # stage B's head: "on" (every block at
                                            # initial_execute_prob); "static_plan": every image at
                                            # the greedy static sub-net of start_block_share of the
                                            # block MACs, per-image deviations learned from there
    c.policy.start_block_share = 0.6
    c.policy.start_margin = 3.0             # static_plan: each block's logit this far from 0
    c.rl = ml_collections.ConfigDict()
    c.rl.num_epochs = 1
    c.rl.fidelity = "clean"                 # "ofas_code": the reference code's estimator and rewards
    c.rl.reward = "skipnet"                 # policy_gradient.REWARDS
    c.rl.penalty = 0.5                      # weight of compute in the reward: the curve's knob
    c.rl.penalties = (0.5,)                 # experiments/ofas runs stage B once per value
    c.rl.wrong_penalty = 1.0                # blockdrop: reward of a wrong prediction is -this
    c.rl.bound = 0.9                        # bounded Bernoulli: p' = b p + (1 - b)(1 - p)
    c.rl.epsilon = 0.1                      # ofas_code's epsilon-greedy
    c.rl.self_critical = True               # advantage = R(sampled) - R(greedy)
    c.rl.estimator = "reinforce"            # "straight_through": Gumbel-sigmoid decisions, hard
                                            # forward / soft backward, loss CE + penalty * compute
    c.rl.normalize_advantage = False        # divide advantages by their batch std (step size
                                            # independent of the reward's scale)
    c.rl.entropy_weight = 0.0
    c.rl.rl_weight = 1.0                    # loss = CE(sampled plan) + rl_weight * REINFORCE
    c.rl.curriculum_steps_per_block = 0     # > 0: BlockDrop's curriculum, one block released per N steps
    c.rl.backbone_learning_rate = 0.01      # SGD (the stage A optimiser's momentum / decay), cosine
    c.rl.policy_learning_rate = 0.01        # Adam
    c.rl.distill_weight = 0.0               # a > 0: the backbone's loss is (1 - a) CE + a KD, KD the
    c.rl.distill_temperature = 4.0          # soft CE to the frozen full backbone at this temperature
    c.rl.static_baseline = False            # also fine-tune the best static sub-net at each point's MACs
    c.rl.static_heldout_examples = 5000     # ... chosen greedily on the last this-many training
                                            # images (not held out from the backbone's training)
    c.rl.static_mixture = False             # ... and the one a block above, mixed at the point's MACs
    c.rl.static_dir = ""                    # the static sub-nets' runs, one per plan ("": WORKDIR/
                                            # static); OFAS runs from one backbone may share one
    c.rl.static_cascade = False             # ... and the cascade of the sub-net below into the full
                                            # backbone at the point's MACs (methods.cascade)
    return c


def check_config(config) -> None:
    """The head's and stage B's keys (types, ranges, menus): run before any data is loaded."""
    c = config_lib
    c.check_config_values(config, {
        "policy.initial_execute_prob": c.number(above=0, below=1),
        "policy.pool_grid": c.integer(1), "policy.activation": c.one_of("none", "relu"),
        "policy.input_norm": c.one_of("none", "layer"), "policy.logit_norm": c.one_of("none", "batch"),
        "policy.logit_scale": c.number(above=0), "policy.start": c.one_of("on", "static_plan"),
        "policy.start_block_share": c.number(above=0, below=1),
        "policy.start_margin": c.number(above=0),
        "rl.num_epochs": c.integer(0), "rl.penalty": c.number(0),
        "rl.penalties": c.sequence_of(c.number(0), unique=True), "rl.wrong_penalty": c.number(0),
        "rl.epsilon": c.number(0, 1), "rl.self_critical": c.boolean(),
        "rl.normalize_advantage": c.boolean(), "rl.entropy_weight": c.number(0),
        "rl.rl_weight": c.number(0), "rl.curriculum_steps_per_block": c.integer(0),
        "rl.backbone_learning_rate": c.number(above=0), "rl.policy_learning_rate": c.number(above=0),
        "rl.static_baseline": c.boolean(), "rl.static_heldout_examples": c.integer(1),
        "rl.static_mixture": c.boolean(), "rl.static_dir": c.string(),
        "rl.static_cascade": c.boolean(),
        "rl.distill_weight": c.number(0, 1), "rl.distill_temperature": c.number(above=0),
    })
    if config.rl.static_mixture and not config.rl.static_baseline:
        raise ValueError("rl.static_mixture mixes the static sub-nets of rl.static_baseline; "
                         "pass --config.rl.static_baseline=True too, or leave the mixture out")
    if config.rl.static_cascade and not config.rl.static_baseline:
        raise ValueError("rl.static_cascade escalates from the static sub-net of rl.static_baseline; "
                         "pass --config.rl.static_baseline=True too, or leave the cascade out")
    if config.policy.variant not in OFAS_VARIANTS:
        raise ValueError(f"unknown OFAS head variant {config.policy.variant!r}; "
                         f"expected one of {sorted(OFAS_VARIANTS)}")
    if config.rl.fidelity not in FIDELITIES:
        raise ValueError(f"unknown rl.fidelity {config.rl.fidelity!r}; expected one of {FIDELITIES}")
    if config.rl.estimator not in ESTIMATORS:
        raise ValueError(f"unknown rl.estimator {config.rl.estimator!r}; expected one of {ESTIMATORS}")
    if config.rl.reward not in pg.REWARDS:
        raise ValueError(f"unknown rl.reward {config.rl.reward!r}; expected one of {pg.REWARDS}")
    decisions.bound(jnp.zeros(()), config.rl.bound)  # the range check


def build_model(config, num_classes: int, in_channels: int) -> OFASNet:
    check_config(config)
    backbone = loop.build_model(config, num_classes, in_channels)
    return OFASNet(backbone, OFAS_VARIANTS[config.policy.variant],
                   initial_execute_prob=config.policy.initial_execute_prob,
                   pool_grid=config.policy.pool_grid, activation=config.policy.activation,
                   input_norm=config.policy.input_norm, logit_norm=config.policy.logit_norm,
                   logit_scale=config.policy.logit_scale, rngs=nnx.Rngs(config.seed + 1))


def model_costs(config, num_classes: int, in_channels: int) -> cost.BlockCosts:
    """MACs per block and of the head, priced on an abstract model (no weights are made)."""
    model = nnx.eval_shape(lambda: build_model(config, num_classes, in_channels))
    return model.costs((1, 32, 32, in_channels))


def make_eval_step(graphdef, config, *, num_classes: int, mean, std):
    """Thresholded plans through the masked executor (the same numbers the cond / bucketed
    executors give, tested), with per-image block-MAC share and MACs summed."""
    costs = model_costs(config, num_classes, len(mean))

    def eval_step(params, batch_stats, images_u8, labels, mask):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        images = normalize(images_u8, mean, std)
        features = model.backbone.stem(images)
        plan = decisions.threshold(model.execute_probs(features))
        logits = model.backbone.classify(_MASKED.run_units(model.backbone, features, plan))
        loss = steps.cross_entropy(logits, labels, num_classes)
        macs = costs.plan_macs_jnp(plan)
        block_frac = (macs - costs.base_macs - costs.policy_macs) / sum(costs.run_macs)
        return {"loss_sum": (loss * mask).sum(),
                "accuracy_sum": ((logits.argmax(-1) == labels) * mask).sum(),
                "block_macs_frac_sum": (block_frac * mask).sum(),
                "macs_sum": (macs * mask).sum(),
                "count": mask.sum()}

    return jax.jit(eval_step)


def full_backbone_teacher(config, num_classes: int, in_channels: int,
                          teacher: steps.TrainState):
    """The teacher of `rl.distill_weight`: stage A's backbone (the zoo's, when stage A is
    skipped) with every block run, frozen, in evaluation mode: (normalised images) -> logits.
    Distilling from the network the sub-nets were cut from (docs/ofas.md) keeps what it knows
    about the classes that a plan's CE alone does not carry."""
    graphdef = nnx.graphdef(loop.build_model(config, num_classes, in_channels))
    params, batch_stats = teacher.params["backbone"], teacher.batch_stats["backbone"]

    def logits(images):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return jax.lax.stop_gradient(model(images))

    return logits


def backbone_loss(config, ce, logits, images, teacher) -> tuple[jax.Array, dict]:
    """The loss the backbone learns from (stage B and the static sub-net alike): the mean CE,
    or with `rl.distill_weight` a > 0, (1 - a) CE + a KD to `teacher` (`steps.soft_cross_entropy`
    at `rl.distill_temperature`). Returns (loss, metrics)."""
    weight = config.rl.distill_weight
    if not weight:
        return ce.mean(), {}
    soft = steps.soft_cross_entropy(logits, teacher(images), config.rl.distill_temperature).mean()
    return (1 - weight) * ce.mean() + weight * soft, {"distill_loss": soft}


def _teacher(config, teacher_state, num_classes: int, in_channels: int):
    if not config.rl.distill_weight:
        return None
    if teacher_state is None:
        raise ValueError("rl.distill_weight > 0 needs a teacher: the stage A state the run "
                         "starts from (stage_b_task / static_plan_task pass it)")
    return full_backbone_teacher(config, num_classes, in_channels, teacher_state)


def stage_a_task() -> loop.Task:
    return loop.Task(build_model=build_model, make_eval_step=make_eval_step,
                     reference_config=default_config, validate_config=check_config)


def make_stage_b_tx(config, steps_per_epoch: int, total_steps: int):
    """SGD on the backbone (cosine from rl.backbone_learning_rate), Adam on the policy head."""
    schedule = optim.learning_rate_schedule("cosine", config.rl.backbone_learning_rate, total_steps)
    backbone = optim.make_optimizer(learning_rate=schedule, momentum=config.optimizer.momentum,
                                    nesterov=config.optimizer.nesterov,
                                    weight_decay=config.optimizer.weight_decay)
    policy = optax.adam(config.rl.policy_learning_rate)

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "policy" if getattr(path[0], "key", None) == "policy" else "backbone",
            params)

    return optax.multi_transform({"backbone": backbone, "policy": policy}, labels), schedule


def make_stage_b_step(graphdef, tx, config, *, num_classes: int, mean, std,
                      steps_per_epoch: int = 1, teacher_state: steps.TrainState | None = None):
    """Stage B's jit'd train step. `teacher_state`: the stage A state the run started from, the
    teacher of `rl.distill_weight` (needed only when it is > 0)."""
    rl = config.rl
    teacher = _teacher(config, teacher_state, num_classes, len(mean))
    ofas_code = rl.fidelity == "ofas_code"
    shape = "ofas_code" if ofas_code else rl.reward
    self_critical = rl.self_critical and not ofas_code  # the reference code has no baseline
    costs = model_costs(config, num_classes, len(mean))
    run_macs = jnp.asarray(costs.run_macs, jnp.float32)

    def outcome(model, features, actions, labels):
        logits = model.backbone.classify(_MASKED.run_units(model.backbone, features, actions))
        return logits, steps.cross_entropy(logits, labels, num_classes)

    def reinforce_loss(model, images, labels, key, step):
        # the greedy baseline's model: these weights, frozen, over a copy of the statistics as
        # they were before this step (its own batch-statistic updates are dropped)
        _, params, greedy_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        greedy_stats = jax.tree.map(lambda x: x, greedy_stats)
        features = model.backbone.stem(images)
        probs = model.execute_probs(features)
        if ofas_code:
            actions, log_prob, entropy = decisions.ofas_code_epsilon_greedy(key, probs, rl.epsilon)
        else:
            actions, log_prob, entropy = decisions.bounded_bernoulli(key, probs, rl.bound)
        weights = pg.curriculum_weights(probs.shape[-1], step, rl.curriculum_steps_per_block)
        forced = weights == 0
        actions = actions | forced
        logits, ce = outcome(model, features, actions, labels)
        correct = logits.argmax(-1) == labels
        kwargs = dict(penalty=rl.penalty, wrong_penalty=rl.wrong_penalty)
        returns = pg.returns(shape, ce=jax.lax.stop_gradient(ce), correct=correct, actions=actions,
                             **kwargs)
        greedy = decisions.threshold(probs) | forced
        metrics = {}
        if self_critical:
            greedy_model = nnx.merge(graphdef, jax.lax.stop_gradient(params), greedy_stats)
            greedy_model.train()
            g_logits, g_ce = outcome(greedy_model, jax.lax.stop_gradient(features), greedy, labels)
            g_correct = g_logits.argmax(-1) == labels
            baseline = pg.returns(shape, ce=g_ce, correct=g_correct, actions=greedy, **kwargs)
            metrics["greedy_accuracy"] = g_correct.mean()
        else:
            baseline = 0.0
        advantage = returns - baseline
        if rl.normalize_advantage:
            advantage = pg.normalize_advantage(advantage)
        policy_loss = pg.reinforce_loss(log_prob, advantage, entropy, rl.entropy_weight, weights)
        supervised, distill_metrics = backbone_loss(config, ce, logits, images, teacher)
        loss = supervised + rl.rl_weight * policy_loss
        metrics.update(distill_metrics)
        metrics.update(
            loss=ce.mean(), accuracy=correct.mean(), policy_loss=policy_loss,
            return_=returns[:, 0].mean(),
            block_macs_frac=((actions * run_macs).sum(-1) / run_macs.sum()).mean(),
            greedy_block_macs_frac=((greedy * run_macs).sum(-1) / run_macs.sum()).mean(),
            execute_prob=probs.mean())
        return loss, metrics

    def straight_through_loss(model, images, labels, key, step):
        """ConvNet-AIG's estimator on the OFAS head: logistic (Gumbel-sigmoid) noise on the
        logits, the hard decision going forward and the noisy sigmoid's gradient going back, so
        every image tells every block, every step, whether it helped its loss; the compute term
        (penalty x the share of block MACs run) pushes against it. No second forward pass."""
        features = model.backbone.stem(images)
        logits = model.policy(features)
        u = jax.random.uniform(key, logits.shape, minval=1e-6, maxval=1 - 1e-6)
        soft = jax.nn.sigmoid(logits + jnp.log(u) - jnp.log1p(-u))
        gates = decisions.straight_through(soft)
        block_frac = (gates * run_macs).sum(-1) / run_macs.sum()
        out, ce = outcome(model, features, gates, labels)
        supervised, distill_metrics = backbone_loss(config, ce, out, images, teacher)
        loss = supervised + rl.penalty * block_frac.mean()
        greedy = decisions.threshold(jax.nn.sigmoid(logits))
        metrics = dict(**distill_metrics, loss=ce.mean(), accuracy=(out.argmax(-1) == labels).mean(),
                       block_macs_frac=block_frac.mean(),
                       greedy_block_macs_frac=((greedy * run_macs).sum(-1) / run_macs.sum()).mean(),
                       execute_prob=jax.nn.sigmoid(logits).mean())
        return loss, metrics

    loss = straight_through_loss if rl.estimator == "straight_through" else reinforce_loss
    return jax.jit(steps.make_step(graphdef, tx, loss, mean=mean, std=std), donate_argnums=0)


def stage_b_config(config, penalty: float) -> ml_collections.ConfigDict:
    """Stage B's loop config: rl.num_epochs epochs at this penalty."""
    b = copy.deepcopy(config)
    with b.unlocked():
        b.num_epochs = config.rl.num_epochs
        b.rl.penalty = float(penalty)
        b.optimizer.warmup_epochs = 0.0
    return b


def stage_b_task(stage_a_state: steps.TrainState) -> loop.Task:
    """Stage B starting from stage A's weights and batch statistics (fresh optimiser, step 0)."""

    def init_state(state):
        # Copies: the train step donates its state, and stage A's arrays may start other runs.
        return state.replace(params=jax.tree.map(jnp.copy, stage_a_state.params),
                             batch_stats=jax.tree.map(jnp.copy, stage_a_state.batch_stats))

    return loop.Task(build_model=build_model, make_tx=make_stage_b_tx,
                     make_train_step=functools.partial(make_stage_b_step,
                                                       teacher_state=stage_a_state),
                     make_eval_step=make_eval_step,
                     init_state=init_state, reference_config=default_config,
                     validate_config=check_config)


# ---------------------------------------------------------------------------------------------
# Starting from the zoo, and measuring what a policy does (docs/ofas.md).


def zoo_stage_a(config, data) -> dict:
    """Stage A when the backbone comes trained from the zoo (`config.num_epochs == 0` and
    `config.init_from`): the OFAS model with the zoo backbone and a fresh head (every block on),
    evaluated, not trained. Returns what `train_and_evaluate` returns (state, graphdef, metrics)."""
    from adaptive_jax import zoo
    from adaptive_jax.data import datasets
    from adaptive_jax.train import sharding

    if not config.init_from:
        raise ValueError("num_epochs = 0 skips stage A, which needs a trained backbone: set "
                         "config.init_from (e.g. 'zoo:resnet32')")
    check_config_keys(config, default_config())
    train, test = data
    model = build_model(config, train.num_classes, train.images.shape[-1])
    zoo.init_from(model, config.init_from)
    graphdef, state = steps.create_train_state(model, optax.identity(), config.seed)
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]
    eval_step = make_eval_step(graphdef, config, num_classes=train.num_classes, mean=mean, std=std)
    mesh = sharding.data_mesh(config.num_devices or None)
    result = loop.evaluate(eval_step, state, test, config.eval_batch_size, mesh)
    return {**result, "step": 0, "train_time_s": 0.0, "state": state, "graphdef": graphdef}


def plan_statistics(plans: np.ndarray, costs: cost.BlockCosts) -> dict:
    """How adaptive a policy is over a set of images: distinct plans, MACs per image (policy
    included) and their spread, blocks run per image."""
    macs = costs.plan_macs(plans).astype(np.float64)
    blocks = plans.sum(-1)
    return {"distinct_plans": int(len(np.unique(plans, axis=0))),
            "macs_mean": float(macs.mean()), "macs_std": float(macs.std()),
            "macs_cv": float(macs.std() / macs.mean()),
            "block_macs_frac_mean": float(costs.block_fraction(plans).mean()),
            "blocks_mean": float(blocks.mean()), "blocks_std": float(blocks.std())}


def greedy_static_plan(graphdef, state, split, dataset: str, costs: cost.BlockCosts,
                       max_macs: float, batch_size: int = 500, start=None,
                       journal: str | None = None) -> tuple[tuple[bool, ...], list[dict]]:
    """The best *static* sub-net under `max_macs` MACs per image, found greedily: from all
    blocks (or the plan `start`, to continue a path searched before), drop one block at a time,
    each time the one whose removal keeps the most images of `split` right (held-out images),
    until the plan's MACs are at most `max_macs`. Returns the plan and the path taken (plan,
    MACs, accuracy per step, `start` first). Until it stops the path does not depend on
    `max_macs`: a path searched to a lower budget holds the answer for every higher one.

    Each candidate runs on the cond executor, so its dropped blocks do not run and its time
    follows the blocks it keeps (`benchmarks.skip_speedup` times the executors): over a path
    down to a third of the blocks, the mean candidate runs about two thirds of them. `journal`: a
    file keeping each plan's held-out accuracy as the search goes (`search.journaled`), so a
    search interrupted after hours resumes where it stopped."""
    from adaptive_jax.data import datasets, pipeline

    mean, std = datasets.CHANNEL_MEAN[dataset], datasets.CHANNEL_STD[dataset]

    def count_correct(model, images_u8, labels, mask, plan):
        features = model.backbone.stem(normalize(images_u8, mean, std))
        logits = model.backbone.classify(_COND.run_units(model.backbone, features, plan))
        return ((logits.argmax(-1) == labels) * mask).sum()

    correct = execution.jit_predict(graphdef, count_correct)

    def held_out_accuracy(plan):
        total = sum(int(correct(state.params, state.batch_stats, *batch, jnp.asarray(plan)))
                    for batch in pipeline.eval_batches(split, batch_size))
        return total / len(split)

    accuracy = search.journaled(held_out_accuracy, journal,
                                {"heldout_examples": len(split), "backbone_sha256": backbone_digest(state)})

    def drop_one(plan):
        return [(int(k), np.where(np.arange(len(plan)) == k, False, plan)) for k in np.flatnonzero(plan)]

    start = np.ones(len(costs.run_macs), bool) if start is None else np.asarray(start, bool)
    plan, path = search.greedy_descent(start, drop_one,
                                       lambda plan: int(costs.plan_macs(plan)), accuracy, max_macs)
    for step in path:  # the keys this search has always written (greedy_search.json)
        step["macs"] = int(step.pop("price"))
        if "moved" in step:
            step["dropped"] = step.pop("moved")
    return tuple(bool(b) for b in plan), path


def start_at_plan(graphdef, state: steps.TrainState, plan, margin: float) -> steps.TrainState:
    """`state` with its head started at `plan` for every image (`OFASHead.start_at_plan`);
    `state` itself unchanged (merged as a copy: an eager merge shares its variables)."""
    model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
    model.policy.start_at_plan(np.asarray(plan, bool), margin)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return state.replace(params=params, batch_stats=batch_stats)


def static_mixture(below: dict, above: dict, macs: float) -> dict:
    """Two static sub-nets (rows with test_macs, test_accuracy, test_block_macs_frac) mixed at
    `macs` per image (below's <= macs <= above's): the one above runs on a share w of the images,
    so the mean cost is `macs` and the expected accuracy, like the block-MACs share, is the
    interpolation between the two (`search.mixture_at`)."""
    mixed = search.mixture_at(below, above, macs, "test_macs",
                              ("test_accuracy", "test_block_macs_frac"))
    macs_cv = mixed.pop("cost_cv")
    return {**mixed, "macs_mean": float(macs), "distinct_plans": 2, "macs_cv": macs_cv,
            "static_plans": [below["static_plan"], above["static_plan"]]}


def routing_statistics(ofas_correct, ofas_block_frac, below_correct, above_correct,
                       share_above: float) -> dict:
    """What per-image routing could buy over the static mixture, and what OFAS's routing does
    (per test image: whether each model is right, and the share of block MACs OFAS ran).

    oracle_mixture_accuracy: the two static sub-nets with the share `share_above` of the images
    sent to the one above, chosen knowing the labels (first the images only it gets right, never
    those only the one below gets right unless the share forces it): the most a router between
    the two could score at the mixture's MACs. The rest: how OFAS spends its blocks on the images
    the static sub-net below gets right and wrong (a router by difficulty spends more on the
    wrong ones), and where OFAS and that sub-net disagree."""
    ofas_correct, below_correct, above_correct = (
        np.asarray(a, bool) for a in (ofas_correct, below_correct, above_correct))
    ofas_block_frac = np.asarray(ofas_block_frac, np.float64)
    n = {len(a) for a in (ofas_correct, ofas_block_frac, below_correct, above_correct)}
    if len(n) != 1:
        raise ValueError(f"per-image arrays of different lengths {sorted(n)}: all must cover "
                         "the same test images")
    if not 0.0 <= share_above <= 1.0:
        raise ValueError(f"share_above = {share_above}: expected a share in [0, 1]")
    gain = float(np.mean(above_correct & ~below_correct))   # only the one above is right
    lose = float(np.mean(below_correct & ~above_correct))   # only the one below is right
    oracle = (float(below_correct.mean()) + min(share_above, gain)
              - max(0.0, share_above - (1.0 - lose)))
    wrong = ~below_correct

    def mean_where(mask):
        return float(ofas_block_frac[mask].mean()) if mask.any() else float("nan")

    return {"oracle_mixture_accuracy": oracle,
            "static_above_only_right": gain, "static_below_only_right": lose,
            "ofas_block_frac_static_wrong": mean_where(wrong),
            "ofas_block_frac_static_right": mean_where(~wrong),
            "ofas_only_right": float(np.mean(ofas_correct & wrong)),
            "static_only_right": float(np.mean(below_correct & ~ofas_correct))}


def static_plan_task(plan: tuple[bool, ...], stage_a_state: steps.TrainState) -> loop.Task:
    """The static sub-net `plan` fine-tuned like stage B's backbone (same optimiser, schedule and
    steps, the same backbone loss: CE, distilled alike under `rl.distill_weight`), from stage A's
    weights: what an adaptive policy must beat at equal MACs."""
    from adaptive_jax.methods.ofas import FixedPlanNet

    def build(config, num_classes: int, in_channels: int):
        return FixedPlanNet(loop.build_model(config, num_classes, in_channels), plan)

    def init_state(state):
        return state.replace(params=_subtree_copy(state.params, stage_a_state.params),
                             batch_stats=_subtree_copy(state.batch_stats, stage_a_state.batch_stats))

    def eval_step(graphdef, config, *, num_classes: int, mean, std):
        costs = model_costs(config, num_classes, len(mean))
        macs = float(costs.plan_macs(np.asarray(plan)) - costs.policy_macs)
        block_frac = float(costs.block_fraction(np.asarray(plan)))
        supervised = steps.make_eval_step(graphdef, num_classes=num_classes, mean=mean, std=std)

        def step(params, batch_stats, images_u8, labels, mask):
            out = supervised(params, batch_stats, images_u8, labels, mask)
            return {**out, "macs_sum": macs * mask.sum(), "block_macs_frac_sum": block_frac * mask.sum()}

        return jax.jit(step)

    def train_step(graphdef, tx, config, *, num_classes: int, mean, std, steps_per_epoch: int = 1):
        teacher = _teacher(config, stage_a_state, num_classes, len(mean))

        def loss(model, images, labels, key, step):
            logits = model(images)
            ce = steps.cross_entropy(logits, labels, num_classes, config.optimizer.label_smoothing)
            value, metrics = backbone_loss(config, ce, logits, images, teacher)
            return value, {"loss": ce.mean(), "accuracy": (logits.argmax(-1) == labels).mean(),
                           **metrics}

        return jax.jit(steps.make_step(graphdef, tx, loss, mean=mean, std=std), donate_argnums=0)

    return loop.Task(build_model=build, make_tx=make_stage_b_tx, make_train_step=train_step,
                     make_eval_step=eval_step,
                     init_state=init_state, reference_config=default_config,
                     validate_config=check_config)


# The stage-B keys a static sub-net's fine-tuning reads (static_plan_task and make_stage_b_tx);
# the rest of `rl` and all of `policy` shape only the adaptive head.
STATIC_RL_KEYS = ("backbone_learning_rate", "distill_weight", "distill_temperature")


def static_run_key(b_config, stage_a_state: steps.TrainState, plan) -> dict:
    """What a static sub-net's fine-tuning run is: its plan, the backbone it starts from (a digest
    of stage A's backbone weights and statistics: the same zoo file or stage A run gives the same)
    and its recipe (stage B's config without the head's keys and the loop's bookkeeping). Equal keys give the same run, so
    every penalty, and every OFAS run from the same backbone and recipe, can share it
    (`train.workdir.claim_run_dir`)."""
    recipe = loop.recipe_of(b_config)
    recipe.pop("policy", None)
    recipe["rl"] = {k: recipe["rl"][k] for k in STATIC_RL_KEYS}
    return {"plan": [bool(b) for b in plan], "backbone_sha256": backbone_digest(stage_a_state),
            "recipe": recipe}


def backbone_digest(state: steps.TrainState) -> str:
    """sha256 of an OFAS state's backbone weights and BN statistics (the head left out)."""
    return checkpoint.state_digest({"params": state.params["backbone"],
                                    "batch_stats": state.batch_stats["backbone"]})


def _subtree_copy(target, source):
    """`target` (a FixedPlanNet state) with its backbone replaced by a copy of `source`'s."""
    target["backbone"] = jax.tree.map(jnp.copy, source["backbone"])
    return target
