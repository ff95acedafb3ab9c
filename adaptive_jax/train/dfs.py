"""DFS training from a zoo backbone (docs/methods.md 7.3, docs/dfs.md): two steps as the paper.

1. **Warm-up**: the backbone frozen, the gate trained towards full execution (target 100 %: the
   sign-controlled budget term always rewards compute).
2. **Joint**: everything trained towards a target computation percentage T with
   loss = CE + s * budget_weight * cost, s = +1 if the batch's computation percentage is above
   T else -1, cost = sum over rows and blocks of the chosen option's (b/32)^2 (straight-through,
   so differentiable in the gate's softmax). Each row runs its chosen option only
   (`options.Bitwidths.blend`): the step costs about a plain step, not the reference's ~6x.

Recipes (`dfs.recipe`): "readme" (the reference README: both steps at lr 0.01; warm-up 2000
iterations) and "paper" (the paper as quoted: lr 0.1, 64k iterations divided by 10 at 32k and
48k); they disagree, so both are here. The experiment's configs set the epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from adaptive_jax import config as config_lib, cost, execution
from adaptive_jax.data.augment import normalize
from adaptive_jax.methods.dfs import GATES, DFSNet
from adaptive_jax.models.options import ESTIMATORS, Bitwidths
from adaptive_jax.train import checkpoint, loop, optim, search, steps

GATE_STARTS = ("warmup", "static_plan", "static_plan_above")  # where each joint step's gate starts
RECIPES = {  # (learning rate, schedule) of each step
    "readme": {"warmup": (0.01, "constant"), "joint": (0.01, "step")},
    "paper": {"warmup": (0.1, "step"), "joint": (0.1, "step")},
}


def default_config() -> ml_collections.ConfigDict:
    """The loop's keys plus `dfs`: the menu, the gate, the two steps and the curve's targets."""
    c = loop.default_config()
    c.model.depth = 32
    c.batch_size = 128
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.dfs = ml_collections.ConfigDict()
    c.dfs.widths = (8, 10, 12, 14, 16, 32)  # the menu beyond skip (the reference's)
    c.dfs.gate = "recurrent"                # "recurrent" (the paper's LSTM) or "once" (after the stem)
    c.dfs.embed = 10
    c.dfs.hidden = 10
    c.dfs.per_bitwidth_ranges = True        # False: the reference's one range for every bitwidth
    c.dfs.range_momentum = 0.9
    c.dfs.estimator = "one_path"            # "two_path": the loss also compares each row's choice
                                            # with the option one below (models.options.Bitwidths)
    c.dfs.recipe = "readme"                 # RECIPES: learning rates and schedules of both steps
    c.dfs.warmup_epochs = 1
    c.dfs.joint_epochs = 1
    c.dfs.target = 100.0                    # computation percentage the budget term steers to
    c.dfs.targets = (30.0, 40.0, 50.0)      # experiments/dfs trains one joint step per target
    c.dfs.budget_weight = 1e-5              # beta; cost is a sum over the batch (not a mean)
    c.dfs.skip_only_baseline = True         # the same training with the menu {0, 32} (SkipNet-like)
    c.dfs.static_baseline = True            # the greedy static allocation at each point's BitOPs
    c.dfs.static_heldout_examples = 2000    # ... searched on the last this-many training images
                                            # (not held out from the backbone's training)
    c.dfs.static_finetune = True            # fine-tune each static plan for the joint step's steps
    c.dfs.static_mixture = False            # ... and the greedy step above it, the two mixed at
                                            # the DFS point's BitOPs (equal cost, docs/dfs.md)
    c.dfs.static_cascade = False            # ... and the cheapest one fine-tuned escalating its
                                            # least sure images to the search's uniform start
                                            # plan, at each point's BitOPs (methods.cascade)
    c.dfs.gate_start = "warmup"             # "static_plan": each joint step's gate starts at the
                                            # greedy static allocation for its target (a per-block
                                            # prior), learning per-image deviations from there;
                                            # "static_plan_above": at the greedy search's step
                                            # just above the target, so that the budget term
                                            # pulls computation down from the start (docs/dfs.md)
    c.dfs.gate_start_margin = 2.0           # ... the static option's logit above the others
    return c


def check_config(config) -> None:
    c = config_lib
    c.check_config_values(config, {
        "dfs.gate": c.one_of(*GATES), "dfs.embed": c.integer(1), "dfs.hidden": c.integer(1),
        "dfs.per_bitwidth_ranges": c.boolean(), "dfs.estimator": c.one_of(*ESTIMATORS),
        "dfs.range_momentum": c.number(above=0, maximum=1),
        "dfs.recipe": c.one_of(*RECIPES), "dfs.warmup_epochs": c.integer(0),
        "dfs.joint_epochs": c.integer(0), "dfs.budget_weight": c.number(0),
        "dfs.skip_only_baseline": c.boolean(), "dfs.static_baseline": c.boolean(),
        "dfs.static_heldout_examples": c.integer(1), "dfs.static_finetune": c.boolean(),
        "dfs.static_mixture": c.boolean(), "dfs.static_cascade": c.boolean(),
        "dfs.gate_start": c.one_of(*GATE_STARTS), "dfs.gate_start_margin": c.number(above=0),
    })
    if config.dfs.static_mixture and not config.dfs.static_baseline:
        raise ValueError("dfs.static_mixture mixes the static allocations of dfs.static_baseline; "
                         "pass --config.dfs.static_baseline=True too, or leave the mixture out")
    if config.dfs.static_cascade and not config.dfs.static_baseline:
        raise ValueError("dfs.static_cascade starts from the static allocations of "
                         "dfs.static_baseline; pass --config.dfs.static_baseline=True too, or "
                         "leave the cascade out")
    check_target(config.dfs.target)
    for target in config.dfs.targets:
        check_target(target)
    menu(config)  # the menu's own checks


def check_target(target) -> None:
    """A computation percentage: a number in (0, 100]."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 100:
        raise ValueError(f"a DFS target is a computation percentage in (0, 100], got {target!r}")


def menu(config) -> Bitwidths:
    return Bitwidths(tuple(int(b) for b in config.dfs.widths), config.dfs.per_bitwidth_ranges,
                     range_momentum=config.dfs.range_momentum, estimator=config.dfs.estimator)


def build_model(config, num_classes: int, in_channels: int) -> DFSNet:
    check_config(config)
    backbone = loop.build_model(config, num_classes, in_channels)
    return DFSNet(backbone, menu(config), config.dfs.gate, embed=config.dfs.embed,
                  hidden=config.dfs.hidden, rngs=nnx.Rngs(config.seed + 1))


def model_costs(config, num_classes: int, in_channels: int) -> cost.PlanCosts:
    model = nnx.eval_shape(lambda: build_model(config, num_classes, in_channels))
    return model.costs((1, 32, 32, in_channels))


def budget_terms(weights: jax.Array, options: Bitwidths, target: float):
    """(cost summed over rows and blocks, the batch's computation percentage, sign s)."""
    relative = jnp.asarray(options.computation(), weights.dtype)
    total = (weights * relative).sum()
    percentage = 100.0 * total / (weights.shape[0] * weights.shape[1])
    sign = jnp.where(jax.lax.stop_gradient(percentage) > target, 1.0, -1.0)
    return total, percentage, sign


def make_tx(config, steps_per_epoch: int, total_steps: int, *, step: str, frozen_backbone: bool):
    learning_rate, schedule_name = RECIPES[config.dfs.recipe][step]
    schedule = optim.learning_rate_schedule(schedule_name, learning_rate, total_steps)
    sgd = optim.make_optimizer(learning_rate=schedule, momentum=config.optimizer.momentum,
                               nesterov=config.optimizer.nesterov,
                               weight_decay=config.optimizer.weight_decay)
    if not frozen_backbone:
        return sgd, schedule

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "gate" if getattr(path[0], "key", None) == "gate" else "frozen", params)

    return optax.multi_transform({"gate": sgd, "frozen": optax.set_to_zero()}, labels), schedule


def make_train_step(graphdef, tx, config, *, num_classes: int, mean, std, steps_per_epoch: int = 1,
                    plan=None):
    """The joint (or warm-up) step; with `plan` (L,) every image runs that static allocation
    (the budget term is then a constant: CE alone trains)."""
    options, target, beta = menu(config), float(config.dfs.target), config.dfs.budget_weight

    def loss(model, images, labels, key, step):
        logits, weights = model.forward(images, plan=plan)
        ce = steps.cross_entropy(logits, labels, num_classes).mean()
        total, percentage, sign = budget_terms(weights, options, target)
        chosen = jax.lax.stop_gradient(weights).argmax(-1)
        return ce + sign * beta * total, {
            "loss": ce, "accuracy": (logits.argmax(-1) == labels).mean(),
            "computation_pct": percentage, "skip_frac": (chosen == 0).mean(),
            "full_frac": (chosen == options.num_options - 1).mean()}

    return jax.jit(steps.make_step(graphdef, tx, loss, mean=mean, std=std), donate_argnums=0)


def make_eval_step(graphdef, config, *, num_classes: int, mean, std, plan=None):
    """Accuracy and, per image, the computation percentage, BitOPs and MACs of its decisions
    (each option of a block runs on the rows that chose it: exact, `DFSNet.forward`). With
    `plan`, that static allocation for every image, priced without the gate (none runs)."""
    options = menu(config)
    costs = model_costs(config, num_classes, len(mean))
    if plan is not None:
        costs = dataclasses.replace(costs, policy_macs=0)
    option_macs = jnp.asarray(costs.option_macs, jnp.float32)            # (L, K)
    bit_scale = jnp.asarray([w * a for w, a in costs.option_bits], jnp.float32)
    fixed = float(costs.base_macs + costs.policy_macs)
    relative = jnp.asarray(options.computation(), jnp.float32)

    def eval_step(params, batch_stats, images_u8, labels, mask):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        logits, onehot = model.forward(normalize(images_u8, mean, std), plan=plan)
        loss = steps.cross_entropy(logits, labels, num_classes)
        macs = fixed + (onehot * option_macs).sum((1, 2))
        bitops = fixed * 32 * 32 + (onehot * option_macs * bit_scale).sum((1, 2))
        percentage = 100.0 * (onehot * relative).sum((1, 2)) / onehot.shape[1]
        out = {"loss_sum": (loss * mask).sum(),
               "accuracy_sum": ((logits.argmax(-1) == labels) * mask).sum(),
               "computation_pct_sum": (percentage * mask).sum(),
               "bitops_sum": (bitops * mask).sum(), "macs_sum": (macs * mask).sum(),
               "count": mask.sum()}
        for k, name in enumerate(options.names):  # the share of decisions at each option
            out[f"option_{name.replace(' ', '')}_sum"] = (onehot[..., k].mean(-1) * mask).sum()
        return out

    return jax.jit(eval_step)


def plan_statistics(plans: np.ndarray, costs: cost.PlanCosts) -> dict:
    """How adaptive a gate is over a set of images ((N, L) option plans): distinct plans, BitOPs
    per image and their spread, and per block the share of images that skip it."""
    bitops = costs.plan_bitops(plans).astype(np.float64)
    return {"distinct_plans": int(len(np.unique(plans, axis=0))),
            "bitops_mean": float(bitops.mean()), "bitops_std": float(bitops.std()),
            "bitops_cv": float(bitops.std() / bitops.mean()),
            "skip_share_per_block": [round(float(v), 4) for v in (plans == 0).mean(0)]}


def step_config(config, step: str, target: float) -> ml_collections.ConfigDict:
    """The loop's config for one step: its epochs and target."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.num_epochs = config.dfs.warmup_epochs if step == "warmup" else config.dfs.joint_epochs
        c.dfs.target = float(target)
    return c


def task(step: str, start: steps.TrainState | None = None) -> loop.Task:
    """The loop's task for `step` ("warmup": gate only, backbone frozen; "joint": everything),
    starting from `start`'s weights, statistics and ranges when given (the warm-up's result)."""

    def init_state(state):
        return state.replace(params=jax.tree.map(jnp.copy, start.params),
                             batch_stats=jax.tree.map(jnp.copy, start.batch_stats))

    return loop.Task(
        build_model=build_model,
        make_tx=lambda config, spe, total: make_tx(config, spe, total, step=step,
                                                   frozen_backbone=step == "warmup"),
        make_train_step=make_train_step, make_eval_step=make_eval_step,
        init_state=None if start is None else init_state,
        reference_config=default_config, validate_config=check_config)


# ---------------------------------------------------------------------------------------------
# The static baseline: one bitwidth per block for every image (HAQ-like), at equal BitOPs.


def static_plan_task(plan, start: steps.TrainState) -> loop.Task:
    """The static allocation `plan` ((L,) option ints, one per block for every image) fine-tuned
    like DFS's joint step (same optimiser, schedule and steps; CE alone, the plan being fixed)
    from `start` (the warm-up's weights, statistics and ranges): HAQ fine-tunes its allocation
    too, and DFS's backbone is fine-tuned, so the comparison at equal BitOPs is on equal terms."""
    plan = np.asarray(plan, np.int32)
    joint = task("joint", start)
    return dataclasses.replace(
        joint, make_train_step=functools.partial(make_train_step, plan=plan),
        make_eval_step=functools.partial(make_eval_step, plan=plan))


# The `dfs` keys a static allocation's fine-tuning reads (the model, its ranges, the joint
# step's recipe and length); the rest steer the gate or the experiment (the budget term is a
# constant under a fixed plan).
STATIC_DFS_KEYS = ("widths", "gate", "embed", "hidden", "per_bitwidth_ranges", "range_momentum",
                   "recipe", "joint_epochs")


def static_run_key(config, start: steps.TrainState, plan) -> dict:
    """What a static allocation's fine-tuning run is (`train.workdir.claim_run_dir`): its plan,
    a digest of the state it starts from (the warm-up's weights, statistics and ranges) and its
    recipe (the loop's config without bookkeeping, `dfs` cut to STATIC_DFS_KEYS), so that adding
    a target or a baseline to the experiment does not disown the runs it already has."""
    recipe = loop.recipe_of(config)
    recipe["dfs"] = {k: recipe["dfs"][k] for k in STATIC_DFS_KEYS}
    return {"plan": np.asarray(plan).tolist(),
            "start_sha256": checkpoint.state_digest({"params": start.params,
                                                     "batch_stats": start.batch_stats}),
            "recipe": recipe}


def plan_accuracy(graphdef, state, dataset: str, options: Bitwidths, batch_size: int = 500):
    """accuracy(split, plan): top-1 over `split` of the model's quantised net with one option
    plan (L,) for every image (the cond executor; kernels quantised once)."""
    from adaptive_jax.data import datasets, pipeline

    mean, std = datasets.CHANNEL_MEAN[dataset], datasets.CHANNEL_STD[dataset]
    executor = execution.cond(options)

    def count_correct(model, images_u8, labels, mask, plan, weights):
        logits = executor.forward(model.quantized(weights), normalize(images_u8, mean, std), plan)
        return ((logits.argmax(-1) == labels) * mask).sum()

    correct = execution.jit_predict(graphdef, count_correct)
    weights = nnx.merge(graphdef, state.params, state.batch_stats).prepare_weights()

    def accuracy(split, plan) -> float:
        plan = jnp.asarray(plan, jnp.int32)
        right = sum(int(correct(state.params, state.batch_stats, *batch, plan, weights))
                    for batch in pipeline.eval_batches(split, batch_size))
        return right / len(split)

    return accuracy


def static_allocation(graphdef, state, split, dataset: str, options: Bitwidths,
                      costs: cost.PlanCosts, budgets: list[float], batch_size: int = 500,
                      price: str = "bitops", journal: str | None = None
                      ) -> list[tuple[np.ndarray, list]]:
    """For each budget (BitOPs per image, or with `price="computation"` the paper's computation
    percentage, what the joint step's target is in), the static option plan found greedily on
    `split` (held-out images): from the cheapest uniform plan (every block at one bitwidth) that is not below the
    largest budget, lower one block by one option at a time (down to the skip), each time the
    move that loses the fewest images per BitOP it saves (`search.greedy_descent(per_saving=True)`).
    One descent serves every budget (the largest first). Starting from the uniform plan rather
    than from all-float spares the search the rounds between the two: below every block at 8 bits
    a budget needs skips, and a descent from float would first take some 75 moves of one
    bitwidth each. `journal`: a file keeping each plan's held-out accuracy as the search goes
    (`search.journaled`), so an interrupted search resumes. Returns [(plan, path)] in the order
    of `budgets`."""
    if price not in ("bitops", "computation"):
        raise ValueError(f"a static allocation is priced in 'bitops' or 'computation', got {price!r}")
    plan_top1 = plan_accuracy(graphdef, state, dataset, options, batch_size)
    accuracy = search.journaled(lambda plan: plan_top1(split, plan), journal,
                                {"heldout_examples": len(split), "options": list(options.names)})

    def lower_one(plan):
        return [(int(u), np.where(np.arange(len(plan)) == u, plan - 1, plan))
                for u in np.flatnonzero(plan > 0)]

    relative = np.asarray(options.computation())
    price = ((lambda plan: float(costs.plan_bitops(plan))) if price == "bitops"  # noqa: E731
             else (lambda plan: float(100 * relative[plan].mean())))
    uniform = [np.full(costs.num_units, k) for k in range(1, options.num_options)]
    plan = next(p for p in uniform if price(p) >= max(budgets) or p[0] == options.num_options - 1)
    results, path = {}, []
    for budget in sorted(budgets, reverse=True):
        plan, more = search.greedy_descent(plan, lower_one, price, accuracy, budget,
                                           per_saving=True)
        path = path + (more if not path else more[1:])
        results[budget] = (plan, list(path))
    return [results[b] for b in budgets]


def gate_start_of_search(plan, search_path: list[dict], gate_start: str) -> np.ndarray:
    """The plan a joint step's gate starts at, from the greedy search at its target: `plan` (the
    search's result, at or under the target) for "static_plan"; for "static_plan_above" the
    search's step before it, the cheapest plan it priced above the target (`plan` itself when the
    search started at or under the target: nothing above it was priced)."""
    if gate_start not in GATE_STARTS[1:]:
        raise ValueError(f"no plan to start the gate at for dfs.gate_start={gate_start!r}")
    if gate_start == "static_plan_above" and len(search_path) >= 2:
        return np.asarray(search_path[-2]["plan"], np.int32)
    return np.asarray(plan, np.int32)


def start_at_plan(graphdef, state: steps.TrainState, plan, margin: float) -> steps.TrainState:
    """`state` with its gate set to run `plan` ((L,) option ints) for every image
    (`DFSNet.start_gate_at_plan`); backbone, statistics and ranges unchanged. `state` itself is
    left as it was (merged as a copy: an eager merge shares its variables with the state)."""
    model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
    model.start_gate_at_plan(plan, margin)
    return state.replace(params=nnx.state(model, nnx.Param))


def calibrate_ranges(graphdef, state, batches, dataset: str, per_bitwidth: bool = True):
    """`state` with its activation ranges measured afresh (from zero) over `batches` of uint8
    images, each row at the option the model picks; per bitwidth, or one range for every option
    (the reference's) with `per_bitwidth=False`. Weights and BN statistics are left as they are.
    Returns (graphdef with that menu, state)."""
    import dataclasses

    from adaptive_jax.data import datasets

    mean, std = datasets.CHANNEL_MEAN[dataset], datasets.CHANNEL_STD[dataset]
    model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)  # `state` unchanged
    model.options = dataclasses.replace(model.options, per_bitwidth_ranges=per_bitwidth)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    @jax.jit
    def measure(params, batch_stats, ranges, images_u8):
        m = nnx.merge(graphdef, params, batch_stats)
        m.ranges[...] = ranges
        m.train()
        m.forward(normalize(images_u8, mean, std))
        return m.ranges[...]

    ranges = jnp.zeros_like(model.ranges[...])
    for images in batches:
        ranges = measure(params, batch_stats, ranges, images)
    model = nnx.merge(graphdef, params, batch_stats)
    model.ranges[...] = ranges
    return graphdef, state.replace(batch_stats=nnx.state(model, nnx.BatchStat))
