"""DFS end to end (docs/dfs.md): from a zoo backbone, the gate's warm-up, then one joint step per
target computation percentage; the same for skip-only (the menu {0 (skip), 32}: SkipNet-like);
and the greedy static allocation (one bitwidth per block for every image) at each DFS point's
BitOPs. Prints one row per point: accuracy, computation percentage, BitOPs, MACs, the share of
decisions at skip / 8 bits / float, and batch-1 latency (only the chosen option of each block
runs) against the plain backbone.

    python -m experiments.dfs.main --workdir=/tmp/dfs --config=experiments/dfs/configs/default.py

WORKDIR/<menu>/warmup and WORKDIR/<menu>/target_<T> hold each step's checkpoints and metrics;
re-running resumes (finished steps are restored and re-evaluated, not retrained).
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from adaptive_jax import execution, latency, report
from adaptive_jax.data import datasets, normalize
from adaptive_jax.train import dfs, loop, search, train_and_evaluate
from adaptive_jax.train.metrics import recorded_train_time
from adaptive_jax.train.workdir import claim_run_dir
from experiments import common

FLAGS = flags.FLAGS
if __name__ == "__main__":
    common.exit_on_bad_overrides(dfs.default_config())
flags.DEFINE_string("workdir", None, "Directory for every step's checkpoints, metrics and the report.")
flags.DEFINE_integer("latency_images", 8, "Test images timed one by one at batch 1 per point.")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])

COLUMNS = [("point", "point", "s"), ("test_accuracy", "top-1", ".4f"),
           ("test_computation_pct", "comp %", ".1f"), ("test_bitops", "BitOPs/img", ".3e"),
           ("test_macs", "MACs/img", ".3e"), ("skip_frac", "skip", ".2f"),
           ("bits8_frac", "8 bit", ".2f"), ("float_frac", "float", ".2f"),
           ("distinct_plans", "plans", "d"), ("bitops_cv", "BitOPs CV", ".3f"),
           ("latency_b1_ms", "b1 ms", ".2f"), ("full_latency_b1_ms", "full b1 ms", ".2f"),
           ("train_time_s", "train s", ".0f")]
SKIP_ONLY_WIDTHS = (32,)


def _menu_config(config, widths):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.dfs.widths = tuple(widths)
    return c


def _fractions(result: dict) -> dict:
    """The share of decisions at skip, 8 bits and float, from the eval step's option counts."""
    share = lambda name: result.get(f"test_option_{name.replace(' ', '')}", 0.0)  # noqa: E731
    return {"skip_frac": share("skip"), "bits8_frac": share("8 bit"), "float_frac": share("float")}


def train_menu(config, workdir: str, data, name: str, latency_args) -> tuple[list[dict], dict]:
    """Warm-up (unless dfs.warmup_epochs is 0), then the joint step per target. Returns the rows
    per target and the warm-up's result (None without one)."""
    start = warm = None
    if config.dfs.warmup_epochs:
        warm = train_and_evaluate(dfs.step_config(config, "warmup", 100.0),
                                  os.path.join(workdir, name, "warmup"), data, dfs.task("warmup"))
        start = warm["state"]
    from_plan = config.dfs.gate_start != "warmup"
    if from_plan and warm is None:
        raise ValueError(f"dfs.gate_start={config.dfs.gate_start!r} searches the plan on the warm-up's "
                         "backbone and calibrated ranges: set dfs.warmup_epochs >= 1")
    rows = []
    for target in config.dfs.targets:
        run_dir = os.path.join(workdir, name, f"target_{target:g}")
        joint_start, extra = start, {}
        if from_plan:
            plan = gate_start_plan(config, run_dir, data[0], warm, target)
            joint_start = dfs.start_at_plan(warm["graphdef"], start, plan,
                                            config.dfs.gate_start_margin)
            extra = {"gate_start_plan": plan.tolist()}
        result = train_and_evaluate(dfs.step_config(config, "joint", target), run_dir, data,
                                    dfs.task("joint", joint_start))
        row = {"point": f"{name} @{target:g}%", "menu": name, "target": float(target),
               **{k: v for k, v in result.items() if k not in ("state", "graphdef")},
               **_fractions(result), **extra}
        plans = loop.test_plans(result["graphdef"], result["state"], data[1], config.dataset,
                                config.eval_batch_size)
        train_split = data[0]
        row.update(dfs.plan_statistics(plans, dfs.model_costs(
            config, train_split.num_classes, train_split.images.shape[-1])))
        row.update(measure_latency(result, *latency_args))
        row["train_time_s"] = recorded_train_time(run_dir)
        rows.append(row)
    return rows, warm


def gate_start_plan(config, run_dir: str, train_split, warm: dict, target: float) -> np.ndarray:
    """The greedy static allocation at `target` computation percent, searched on the warm-up's
    model over the last dfs.static_heldout_examples training images: where the joint step's gate
    starts with dfs.gate_start='static_plan' (with 'static_plan_above', the search's step just
    above the target: `dfs.gate_start_of_search`). The search is kept in
    RUN_DIR/gate_start_plan.json, so a resumed run starts from the same plan."""
    path = os.path.join(run_dir, "gate_start_plan.json")
    n = config.dfs.static_heldout_examples
    key = {"target": float(target), "heldout_examples": n}
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached["key"] == key:
            return dfs.gate_start_of_search(cached["plan"], cached["greedy_path"],
                                            config.dfs.gate_start)
    heldout = datasets.Split(train_split.images[-n:], train_split.labels[-n:], train_split.num_classes)
    costs = dfs.model_costs(config, train_split.num_classes, train_split.images.shape[-1])
    [(plan, search_path)] = dfs.static_allocation(
        warm["graphdef"], warm["state"], heldout, config.dataset, dfs.menu(config), costs,
        [float(target)], config.eval_batch_size, price="computation",
        journal=os.path.join(run_dir, "plan_accuracy.jsonl"))
    os.makedirs(run_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"key": key, "plan": plan.tolist(), "greedy_path": search_path}, f)
    os.replace(path + ".tmp", path)
    return dfs.gate_start_of_search(plan, search_path, config.dfs.gate_start)


def measure_latency(result: dict, images) -> dict:
    """Batch-1 ms of `predict` (only each block's chosen option runs, kernels quantised once;
    the 8-bit option on the integer kernel of each conv shape where one measured faster here)
    and of the plain backbone."""
    if not len(images):
        return {}
    state = result["state"]
    model = nnx.merge(result["graphdef"], state.params, state.batch_stats)
    kernels, _ = latency.fastest_int8_kernels(model.backbone, 1)
    model.options = dataclasses.replace(model.options, kernels=kernels)
    graphdef = nnx.graphdef(model)
    weights = model.prepare_weights()
    predict = execution.jit_predict(
        graphdef, lambda model, image, weights: model.predict(image, weights=weights)[0])
    full = execution.jit_predict(graphdef, lambda model, image: model.backbone(image))
    planned_ms, full_ms = latency.interleaved_batch1_ms(
        (lambda params, stats, image: predict(params, stats, image, weights), full),
        (state.params, state.batch_stats), images)
    return {"latency_b1_ms": planned_ms, "full_latency_b1_ms": full_ms,
            "speedup_b1": full_ms / planned_ms, "int8_kernels": [list(k) + [v] for k, v in kernels]}


def static_rows(config, workdir, data, dfs_rows, start_result, latency_images=()) -> list[dict]:
    """The greedy static allocation at each DFS point's BitOPs, searched on the backbone the
    joint steps started from (the warm-up's weights, statistics and calibrated ranges), then,
    with dfs.static_finetune, fine-tuned for the joint step's steps (`dfs.static_plan_task`),
    evaluated on the test set (before fine-tuning too: `untuned_test_accuracy`); with
    dfs.static_mixture the greedy step above it too, the two mixed at the point's BitOPs; with
    dfs.static_cascade the allocation below escalating its least sure images (`static_cascade`)."""
    train_split, test_split = data
    n = config.dfs.static_heldout_examples
    heldout = datasets.Split(train_split.images[-n:], train_split.labels[-n:], train_split.num_classes)
    graphdef, state = start_result["graphdef"], start_result["state"]
    options = dfs.menu(config)
    costs = dfs.model_costs(config, train_split.num_classes, train_split.images.shape[-1])
    static_costs = dataclasses.replace(costs, policy_macs=0)  # no gate runs
    budgets = [r["test_bitops"] for r in dfs_rows]
    search_path = os.path.join(workdir, "static", "greedy_search.json")
    key = {"budgets": budgets, "heldout_examples": n}
    cached = None
    if os.path.exists(search_path):
        with open(search_path) as f:
            cached = json.load(f)
    if cached is not None and cached["key"] == key:
        found = [(np.asarray(p), path) for p, path in cached["found"]]
    else:
        found = dfs.static_allocation(graphdef, state, heldout, config.dataset, options,
                                      static_costs, budgets, config.eval_batch_size,
                                      journal=os.path.join(workdir, "static", "plan_accuracy.jsonl"))
        os.makedirs(os.path.dirname(search_path), exist_ok=True)
        with open(search_path + ".tmp", "w") as f:
            json.dump({"key": key, "found": [(p.tolist(), path) for p, path in found]}, f)
        os.replace(search_path + ".tmp", search_path)
    test_top1 = dfs.plan_accuracy(graphdef, state, config.dataset, options, config.eval_batch_size)

    def static_row(target, plan, menu, run_dir):
        """The plan's row and the model it runs on (fine-tuned, or the warm-up's)."""
        accuracy = untuned = test_top1(test_split, plan)
        tuned, model = {}, start_result
        if config.dfs.static_finetune:
            step_config = dfs.step_config(config, "joint", target)
            # the directory is named by target; the key ties it to the plan the search gave
            run_dir = claim_run_dir(run_dir, dfs.static_run_key(step_config, start_result["state"], plan))
            tuned = train_and_evaluate(step_config, run_dir, data,
                                       dfs.static_plan_task(plan, start_result["state"]))
            accuracy, model = tuned["test_accuracy"], tuned
            tuned = {"untuned_test_accuracy": untuned, "train_time_s": recorded_train_time(run_dir)}
        relative = np.asarray(options.computation())[plan]
        name = {"static": "static", "static_above": "static above"}[menu]
        return {**tuned,
            "point": f"{name} @{target:g}%", "menu": menu, "target": target,
            "test_accuracy": accuracy, "test_computation_pct": float(100 * relative.mean()),
            "test_bitops": float(static_costs.plan_bitops(plan)),
            "test_macs": float(static_costs.plan_macs(plan)), "static_plan": plan.tolist(),
            "skip_frac": float((plan == 0).mean()), "bits8_frac": float((plan == 1).mean()),
            "float_frac": float((plan == options.num_options - 1).mean()),
            "distinct_plans": 1, "bitops_cv": 0.0}, model

    rows, fine_tuned = [], []  # fine_tuned: (row, model) of every static plan
    for dfs_row, (plan, path) in zip(dfs_rows, found):
        target = dfs_row["target"]
        below, small = static_row(target, plan, "static",
                                  os.path.join(workdir, "static", f"target_{target:g}"))
        below.update(greedy_path=path,
                     dfs_minus_static_accuracy=dfs_row["test_accuracy"] - below["test_accuracy"])
        rows.append(below)
        fine_tuned.append((below, small))
        if config.dfs.static_mixture and len(path) >= 2:  # (nothing above the search's start)
            above = static_row(target, np.asarray(path[-2]["plan"]), "static_above",
                               os.path.join(workdir, "static_above", f"target_{target:g}"))
            rows += [above[0], mixture_row(dfs_row, below, above[0])]
            fine_tuned.append(above)
    if config.dfs.static_cascade:
        # One cheap network for every point: the cheapest static plan fine-tuned (fixed before
        # any test accuracy is seen); the more BitOPs a point leaves above it, the more images
        # can escalate.
        cheap, small = min(fine_tuned, key=lambda pair: pair[0]["test_bitops"])
        start_plan = np.asarray(found[0][1][0]["plan"])  # every budget's search starts there
        logits = (plan_test_logits(config, test_split, small, cheap["static_plan"]),
                  plan_test_logits(config, test_split, start_result, start_plan))
        timer = (cascade_timer(small, cheap["static_plan"], start_result, start_plan, options,
                               latency_images) if len(latency_images) else None)
        for dfs_row in dfs_rows:
            rows.append(static_cascade(config, data, dfs_row, cheap, start_plan, logits,
                                       static_costs, [r for r, _ in fine_tuned], timer))
    return rows


def plan_test_logits(config, split, result, plan) -> np.ndarray:
    """(N, classes) logits of `result`'s model running the option `plan` on every image."""
    plan = np.asarray(plan, np.int32)
    return loop.test_outputs(result["graphdef"], result["state"], split, config.dataset,
                             lambda model, x: model.forward(x, plan=plan)[0],
                             config.eval_batch_size)


def mixture_row(dfs_row, below, above) -> dict:
    """The static allocation `below` the DFS point and the greedy step `above` it mixed at the
    point's BitOPs: the static allocation at exactly equal cost (search.mixture_at)."""
    target = dfs_row["target"]
    mixed = search.mixture_at(below, above, dfs_row["test_bitops"], "test_bitops",
                              ("test_accuracy", "test_computation_pct", "test_macs"))
    bitops_cv = mixed.pop("cost_cv")
    return {**mixed, "point": f"static mix @{target:g}%", "menu": "static_mix", "target": target,
            "bitops_cv": bitops_cv, "distinct_plans": 2,
            "static_plans": [below["static_plan"], above["static_plan"]],
            "dfs_minus_static_mixture_accuracy": dfs_row["test_accuracy"] - mixed["test_accuracy"]}


def static_cascade(config, data, dfs_row, cheap, large_plan, logits, costs, statics,
                   timer=None) -> dict:
    """A static allocation under the DFS point (`cheap`: its row; its model fine-tuned for it)
    escalating the test images it is least sure of to `large_plan` (the greedy search's start:
    the cheapest uniform plan at or above every budget, on the warm-up's model, not
    fine-tuned), as many as the point's BitOPs allow (`methods.cascade`,
    docs/dfs.md): a per-image bitwidth choice by the network's own confidence, after the cheap
    plan has run. `logits`: both networks' on the test set. The zoo backbones trained on every
    training image, so no image is unseen by both networks: the threshold is set two-fold on
    the test images' confidences (no labels; `cascade.two_fold_statistics`), as `make demo`
    sets its cascades'. Compared at its measured BitOPs with the mixture of the two fine-tuned
    static plans of `statics` (rows) nearest below and above them (when two bracket them) and
    with the two networks mixed at random at its escalated share; with `timer`
    (`cascade_timer`), its batch-1 latency at its threshold."""
    from adaptive_jax.methods import cascade

    target, test_split = dfs_row["target"], data[1]
    options = dfs.menu(config)
    large_plan = np.asarray(large_plan, np.int32)
    small_plan = np.asarray(cheap["static_plan"], np.int32)
    large_bitops = float(costs.plan_bitops(large_plan))
    small_logits, large_logits = logits
    labels = np.asarray(test_split.labels)
    share = cascade.share_for_cost(dfs_row["test_bitops"], cheap["test_bitops"], large_bitops)
    stats = cascade.two_fold_statistics(small_logits, large_logits, labels, share,
                                        cheap["test_bitops"], large_bitops)
    escalated = stats.pop("escalated")
    bitops, bitops_cv = stats.pop("cost_mean"), stats.pop("cost_cv")
    large_accuracy = float(np.mean(large_logits.argmax(-1) == labels))
    random_mixture = ((1 - stats["escalated_share"]) * cheap["test_accuracy"]
                      + stats["escalated_share"] * large_accuracy)
    relative = np.asarray(options.computation())
    computation = 100 * (relative[small_plan].mean() + escalated * relative[large_plan].mean())
    row = {**stats, "point": f"cascade @{target:g}%", "menu": "static_cascade", "target": target,
           "test_bitops": bitops, "bitops_cv": bitops_cv, "distinct_plans": 2,
           "test_computation_pct": float(computation.mean()),
           "test_macs": float(costs.plan_macs(small_plan)
                              + escalated.mean() * costs.plan_macs(large_plan)),
           "static_plans": [small_plan.tolist(), large_plan.tolist()],
           "escalation_target_share": share, "large_plan_accuracy": large_accuracy,
           "cascade_minus_random_mixture_accuracy": stats["test_accuracy"] - random_mixture,
           "dfs_minus_static_cascade_accuracy": dfs_row["test_accuracy"] - stats["test_accuracy"]}
    mixed = search.bracketing_mixture(statics, bitops, "test_bitops", ("test_accuracy",))
    if mixed is not None:
        row.update(static_mixture_accuracy=mixed["test_accuracy"],
                   static_mixture_plans=[mixed["below"]["static_plan"],
                                         mixed["above"]["static_plan"]],
                   cascade_minus_static_mixture_accuracy=(stats["test_accuracy"]
                                                          - mixed["test_accuracy"]))
    if timer is not None:
        row.update(timer(stats["threshold"]))
    return row


def cascade_timer(small, small_plan, large, large_plan, options, images):
    """threshold -> batch-1 ms on `images` of the cascade (`methods.cascade.predictor`: the
    small plan, then the large one only if the image escalates), the float backbone and the
    small plan alone, interleaved: each plan through the cond executor (only its options run),
    kernels quantised once and the 8-bit option on the integer kernel of each conv shape where
    one measured faster here (as `measure_latency` runs DFS). The kernels are measured, the
    weights prepared and the plans compiled once, for every threshold."""
    from adaptive_jax.execution.predict import pure_predict
    from adaptive_jax.methods import cascade

    state = large["state"]
    backbone = nnx.merge(large["graphdef"], state.params, state.batch_stats).backbone
    kernels, _ = latency.fastest_int8_kernels(backbone, 1)
    options = dataclasses.replace(options, kernels=kernels)
    executor = execution.cond(options)

    def plan_net(result, plan):
        """(params, (batch_stats, prepared weights), images) -> logits of `plan`, and its state."""
        state = result["state"]
        model = nnx.merge(result["graphdef"], state.params, state.batch_stats)
        model.options = options
        weights = model.prepare_weights()
        run = pure_predict(nnx.graphdef(model), lambda model, x, weights: executor.forward(
            model.quantized(weights), x, jnp.asarray(plan, jnp.int32)))
        return (lambda params, stats_weights, x: run(params, stats_weights[0], x, stats_weights[1]),
                (state.params, (state.batch_stats, weights)))

    (small_net, small_state), (large_net, large_state) = (plan_net(small, small_plan),
                                                          plan_net(large, large_plan))
    full = execution.jit_predict(large["graphdef"], lambda model, x: model.backbone(x))
    small_jit = jax.jit(small_net)
    full_state = (large["state"].params, large["state"].batch_stats)

    def time_at(threshold: float) -> dict:
        cascaded = cascade.predictor(small_net, large_net, threshold)
        cascade_ms, full_ms, small_ms = latency.interleaved_batch1_ms(
            (lambda s, l, x: cascaded(s, l, x)[0], lambda s, l, x: full(*full_state, x),
             lambda s, l, x: small_jit(*s, x)), (small_state, large_state), images)
        return {"latency_b1_ms": cascade_ms, "full_latency_b1_ms": full_ms,
                "speedup_b1": full_ms / cascade_ms, "small_plan_latency_b1_ms": small_ms}

    return time_at


def run(config, workdir: str, latency_images: int = 8) -> list[dict]:
    loop.validate_config(config, dfs.task("joint"))  # every step's settings, before data loads
    data = loop.load_data(config)
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]
    images = np.asarray(normalize(data[1].images[:latency_images], mean, std), np.float32)
    rows, warm = train_menu(config, workdir, data, "dfs", (images,))
    dfs_rows = list(rows)
    if config.dfs.skip_only_baseline:
        skip_rows, _ = train_menu(_menu_config(config, SKIP_ONLY_WIDTHS), workdir, data,
                                  "skip_only", (images,))
        by_target = {r["target"]: r for r in skip_rows}
        for r in dfs_rows:
            r["dfs_minus_skip_only_accuracy"] = r["test_accuracy"] - by_target[r["target"]]["test_accuracy"]
        rows += skip_rows
    if config.dfs.static_baseline:
        if warm is None:
            raise ValueError("the static baseline starts from the warm-up's backbone and "
                             "calibrated ranges: set dfs.warmup_epochs >= 1 or "
                             "dfs.static_baseline=False")
        rows += static_rows(config, workdir, data, dfs_rows, warm, images)

    print(f"DFS ResNet-{config.model.depth} on {config.dataset} ({config.dfs.gate} gate, "
          f"{config.dfs.estimator} estimator, gate from {config.dfs.gate_start}, menu "
          f"{dfs.menu(config).names}); comp % = the paper's computation percentage (mean over "
          f"blocks of (b/32)^2); batch-1 latency of predict (only the chosen option runs) vs the "
          f"plain backbone, {len(images)} test images")
    print(report.format_table(rows, COLUMNS), flush=True)
    summary = {"model": f"dfs_resnet{config.model.depth}", "dataset": config.dataset,
               "init_from": config.init_from, "gate": config.dfs.gate,
               "estimator": config.dfs.estimator, "gate_start": config.dfs.gate_start,
               "points": rows}
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot = plot_curve(rows, os.path.join(workdir, "curve.png"),
                      f"DFS ResNet-{config.model.depth} on {config.dataset}")
    print(f"report: {os.path.join(workdir, 'report.json')}, plot: {plot}")
    return rows


def plot_curve(rows, out_path: str, title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for menu, style in (("dfs", "o-"), ("skip_only", "s--"), ("static", "^:"), ("static_mix", "x"),
                        ("static_cascade", "v")):
        points = sorted((r["test_computation_pct"], r["test_accuracy"]) for r in rows
                        if r["menu"] == menu)
        if points:
            ax.plot(*zip(*points), style, label=menu.replace("_", "-"))
    ax.set_xlabel("computation percentage ((b/32)^2 per block)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def main(argv):
    print(common.start(argv, "experiments.dfs.main"), flush=True)
    run(FLAGS.config, FLAGS.workdir, FLAGS.latency_images)


if __name__ == "__main__":
    app.run(main)
