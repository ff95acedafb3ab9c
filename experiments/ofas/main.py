"""OFAS end to end: stage A, stage B per penalty, then accuracy / MACs / latency per point.

    python -m experiments.ofas.main --workdir=/tmp/ofas \
        --config=experiments/ofas/configs/default.py:demo

Stage A lands in WORKDIR/stage_a, each penalty's stage B in WORKDIR/penalty_<p>, the static
sub-nets (rl.static_baseline) in WORKDIR/static/<plan> (or rl.static_dir); re-running with
the same --workdir resumes (finished stages are restored and re-evaluated, not retrained).
`--config.rl.penalties=1,4` picks the curve's points. Prints one row per point: test accuracy, the
share of block MACs the policy spends, MACs per image (policy included) and the measured batch-1
latency of the cond executor on test images (skipped blocks do not run), against the full net.
"""

import json
import os

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from adaptive_jax import latency, report
from adaptive_jax.methods.ofas import make_predictors
from adaptive_jax.data import datasets, normalize
from adaptive_jax.train import loop, ofas, train_and_evaluate
from adaptive_jax.train.metrics import recorded_train_time
from adaptive_jax.train.workdir import claim_run_dir
from experiments import common

FLAGS = flags.FLAGS
if __name__ == "__main__":
    common.exit_on_bad_overrides(ofas.default_config())
flags.DEFINE_string("workdir", None, "Directory for both stages' checkpoints, metrics and the report.")
flags.DEFINE_integer("latency_images", 16, "Test images timed one by one at batch 1 per point.")
flags.DEFINE_string("zoo_name", "", "Save the OFAS model of --zoo_penalty to the zoo under this name.")
flags.DEFINE_float("zoo_penalty", None, "Which stage-B point (penalty) --zoo_name saves.")
flags.DEFINE_string("zoo_dir", None, "Zoo directory --zoo_name goes to (default: the package's).")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])

COLUMNS = [("point", "point", "s"), ("test_accuracy", "top-1", ".4f"),
           ("test_block_macs_frac", "block MACs", ".3f"), ("test_macs", "MACs/img", ".3e"),
           ("latency_b1_ms", "b1 ms", ".2f"), ("full_latency_b1_ms", "full b1 ms", ".2f"),
           ("speedup_b1", "b1 speedup", ".2f"), ("distinct_plans", "plans", "d"),
           ("macs_cv", "MACs CV", ".3f"),
           ("train_time_s", "train s", ".0f")]


def run(config, workdir: str, latency_images: int = 16, zoo_name: str = "",
        zoo_penalty: float | None = None, command: str = "", zoo_dir: str | None = None) -> list[dict]:
    # every stage's settings, before the data loads and stage A trains
    loop.validate_config(config, ofas.stage_b_task(None))
    if zoo_name and zoo_penalty not in config.rl.penalties:
        raise ValueError(f"--zoo_penalty={zoo_penalty} is not one of rl.penalties "
                         f"{config.rl.penalties}; pass one of them")
    train_split, test_split = loop.load_data(config)
    data = (train_split, test_split)
    stage_a_dir = os.path.join(workdir, "stage_a")
    if config.num_epochs == 0:  # the backbone comes trained from the zoo: stage A is evaluated only
        stage_a = ofas.zoo_stage_a(config, data)
    else:
        stage_a = train_and_evaluate(config, stage_a_dir, data, ofas.stage_a_task())
    graphdef = stage_a["graphdef"]
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]
    images = normalize(test_split.images[:latency_images], mean, std)
    images = np.asarray(images, np.float32)
    planned, full = make_predictors(graphdef)
    costs = nnx.merge(graphdef, stage_a["state"].params, stage_a["state"].batch_stats).costs()

    def row(point, result, run_dir, extra=None, graph=graphdef):
        r = {"point": point, **{k: v for k, v in result.items() if k not in ("state", "graphdef")},
             **(extra or {})}
        if graph is graphdef:  # an OFAS model: its plans over the test set, and their latency
            plans = loop.test_plans(graphdef, result["state"], test_split, config.dataset,
                                    config.eval_batch_size)
            r.update(ofas.plan_statistics(plans, costs))
            planned_ms, full_ms = latency.interleaved_batch1_ms(
                (planned, full), (result["state"].params, result["state"].batch_stats), images)
            r.update(latency_b1_ms=planned_ms, full_latency_b1_ms=full_ms,
                     speedup_b1=full_ms / planned_ms)
        r.setdefault("train_time_s", recorded_train_time(run_dir))
        return r

    rows = [row("stage A", stage_a, stage_a_dir)]
    start, start_plan = start_state(config, stage_a, train_split, costs, workdir)
    if start_plan is not None:
        print(f"stage B starts every image at the static sub-net {np.asarray(start_plan, int)} "
              f"({costs.block_fraction(np.asarray(start_plan)[None])[0]:.3f} of block MACs)",
              flush=True)
    states = {}
    for penalty in config.rl.penalties:
        b_config = ofas.stage_b_config(config, penalty)
        run_dir = os.path.join(workdir, f"penalty_{penalty:g}")
        result = train_and_evaluate(b_config, run_dir, data, ofas.stage_b_task(start))
        states[float(penalty)] = result["state"]
        rows.append(row(f"penalty {penalty:g}", result, run_dir, {"penalty": float(penalty)}))
        if config.rl.static_baseline:
            rows += static_baseline(b_config, stage_a, rows[-1], data, costs, workdir,
                                    result["state"], images)

    print(f"OFAS ResNet-{config.model.depth} on {config.dataset}: full backbone "
          f"{costs.full_macs:.3e} MACs, policy head {costs.policy_macs} MACs; batch-1 latency of "
          f"the cond executor (skipped blocks do not run) vs all blocks, {len(images)} test images")
    print(report.format_table(rows, COLUMNS), flush=True)
    for r in rows:
        if "oracle_mixture_accuracy" in r:  # static_baseline's per-image look at the routing
            print(f"{r['point']}: a router between its two sub-nets knowing the labels would score "
                  f"{r['oracle_mixture_accuracy']:.4f}; OFAS runs {r['ofas_block_frac_static_wrong']:.3f}"
                  f" of block MACs on the images the sub-net below gets wrong, "
                  f"{r['ofas_block_frac_static_right']:.3f} on those it gets right; right where it is "
                  f"wrong {r['ofas_only_right']:.4f}, wrong where it is right {r['static_only_right']:.4f}",
                  flush=True)
        if r.get("static") == "cascade":
            versus = (f"{r['cascade_minus_static_mixture_accuracy']:+.4f} against the static mixture "
                      f"at its MACs, " if "cascade_minus_static_mixture_accuracy" in r else "")
            print(f"{r['point']}: the sub-net below escalates {r['escalated_share']:.3f} of the test "
                  f"images (target {r['escalation_target_share']:.3f}, threshold {r['threshold']:.3f} "
                  f"set on {r['calibration_examples']} unseen training images) to the full backbone: "
                  f"{r['test_accuracy']:.4f} at {r['test_macs']:.3e} MACs; {versus}"
                  f"{r['cascade_minus_random_mixture_accuracy']:+.4f} against the same two networks "
                  f"mixed at random", flush=True)
    summary = {"model": f"ofas_resnet{config.model.depth}", "dataset": config.dataset,
               "init_from": config.init_from, "full_macs": costs.full_macs,
               "policy_macs": costs.policy_macs,
               "start_plan": None if start_plan is None else [bool(b) for b in start_plan],
               "points": rows}
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot = plot_curve(rows, costs.full_macs, os.path.join(workdir, "curve.png"),
                      f"OFAS ResNet-{config.model.depth} on {config.dataset}")
    print(f"report: {os.path.join(workdir, 'report.json')}, plot: {plot}")
    if zoo_name:
        point = next(r for r in rows if r.get("penalty") == zoo_penalty)  # checked up front
        static = next((r for r in rows if r["point"] == f"static @{zoo_penalty:g}"), None)
        mixture = next((r for r in rows if r["point"] == f"static mix @{zoo_penalty:g}"), None)
        save_to_zoo(zoo_name, config, graphdef, states[zoo_penalty], point, static, test_split,
                    command, zoo_dir, mixture)
    return rows


PLAN_STATISTICS = ("distinct_plans", "macs_mean", "macs_std", "macs_cv", "block_macs_frac_mean",
                   "blocks_mean", "blocks_std")


def cached_greedy_static_plan(config, stage_a, train_split, costs, max_macs: float,
                              workdir: str):
    """`ofas.greedy_static_plan` under `max_macs` on the last rl.static_heldout_examples training
    images, with the backbone of `stage_a`. The search costs minutes (a forward pass of those
    images per candidate block and step), and its path does not depend on the budget until it
    stops, so one path serves every budget of the run (each penalty's static sub-net, the head's
    start): WORKDIR/static_search/greedy_path.json keeps the longest path searched; a budget the
    path has passed is read off it, a lower one continues it; journal.jsonl beside it keeps every
    plan evaluated, so an interrupted search resumes. Returns (plan, path to the plan)."""
    n = config.rl.static_heldout_examples
    key = {"heldout_examples": n, "backbone_sha256": ofas.backbone_digest(stage_a["state"])}
    cache = os.path.join(workdir, "static_search", "greedy_path.json")
    path = []
    if os.path.exists(cache):
        with open(cache) as f:
            cached = json.load(f)
        if cached["key"] == key:
            path = cached["path"]
    if path and path[-1]["macs"] <= max_macs:
        stop = next(i for i, step in enumerate(path) if step["macs"] <= max_macs)
        return tuple(path[stop]["plan"]), path[:stop + 1]
    heldout = datasets.Split(train_split.images[-n:], train_split.labels[-n:], train_split.num_classes)
    plan, more = ofas.greedy_static_plan(stage_a["graphdef"], stage_a["state"], heldout,
                                         config.dataset, costs, max_macs, config.eval_batch_size,
                                         start=path[-1]["plan"] if path else None,
                                         journal=os.path.join(os.path.dirname(cache), "journal.jsonl"))
    path = path + more[1:] if path else more  # (a continued search starts at the path's end)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache + ".tmp", "w") as f:
        json.dump({"key": key, "path": path}, f)
    os.replace(cache + ".tmp", cache)
    return plan, path


def start_state(config, stage_a, train_split, costs, workdir):
    """Stage B's starting state: stage A's, with `policy.start="static_plan"` its head set so
    that every image runs the greedy static sub-net of `policy.start_block_share` of the block
    MACs (read off the static baseline's greedy path, `cached_greedy_static_plan`)."""
    if config.policy.start == "on":
        return stage_a["state"], None
    max_macs = (costs.base_macs + costs.policy_macs
                + config.policy.start_block_share * sum(costs.run_macs))
    plan, _ = cached_greedy_static_plan(config, stage_a, train_split, costs, max_macs, workdir)
    return ofas.start_at_plan(stage_a["graphdef"], stage_a["state"], plan,
                              config.policy.start_margin), plan


def static_run_dir(b_config, stage_a, plan, workdir) -> str:
    """The fine-tuning run of the static sub-net `plan`: rl.static_dir (default WORKDIR/static)
    holds one run per plan, named by its blocks (1 runs, 0 skips), tied by `run_key.json` to the
    plan, the backbone it starts from and its recipe (`ofas.static_run_key`). A static sub-net does
    not depend on the policy, so penalties that land on one plan share its run, and so may OFAS
    runs from one backbone and recipe given one rl.static_dir; any other run there is refused."""
    static_dir = b_config.rl.static_dir or os.path.join(workdir, "static")
    name = "".join("1" if b else "0" for b in plan)
    return claim_run_dir(os.path.join(static_dir, name),
                         ofas.static_run_key(b_config, stage_a["state"], plan))


def static_baseline(b_config, stage_a, ofas_row, data, costs, workdir, ofas_state,
                    latency_images) -> list[dict]:
    """The best static sub-net at the OFAS point's mean MACs: chosen greedily on held-out training
    images (the last rl.static_heldout_examples), fine-tuned with stage B's schedule and steps.

    Whole blocks are coarse (a ResNet-32 block is ~7 % of its MACs), so the greedy sub-net under
    the point's MACs is usually cheaper than it. With rl.static_mixture the sub-net one step back
    on the greedy path (one block more, above the point's MACs) is fine-tuned alike, and the two
    are mixed at exactly the point's MACs: running the one above on a share w of the images and
    the one below on the rest costs the OFAS point's mean MACs and scores, in expectation, the
    interpolated accuracy. That is the best these two do at equal MACs without looking at the
    image: what adaptivity has to beat (docs/ofas.md). Per test image, the mixture's row also
    says what a router between the two could score knowing the labels, and how OFAS (state
    `ofas_state`) spends its blocks on the images the sub-net below gets wrong
    (`ofas.routing_statistics`). With rl.static_cascade, the sub-net below escalating its least
    sure images to the full backbone at the point's MACs (`static_cascade`). Returns the rows:
    below, then (with rl.static_mixture, when the point is under the full backbone's MACs) above
    and the mixture, then the cascade."""
    penalty = f"{ofas_row['penalty']:g}"
    plan, path = cached_greedy_static_plan(b_config, stage_a, data[0], costs,
                                           ofas_row["macs_mean"], workdir)

    test_split, correct, trained, test_logits = data[1], {}, {}, {}

    def fine_tuned(point, kind, plan):
        run_dir = static_run_dir(b_config, stage_a, plan, workdir)
        result = train_and_evaluate(b_config, run_dir, data, ofas.static_plan_task(plan, stage_a["state"]))
        test_logits[kind] = loop.test_outputs(result["graphdef"], result["state"], test_split,
                                              b_config.dataset, lambda model, x: model.predict(x),
                                              b_config.eval_batch_size)
        correct[kind] = test_logits[kind].argmax(-1) == np.asarray(test_split.labels)
        trained[kind] = result
        return {"point": point, "static": kind,
                **{k: v for k, v in result.items() if k not in ("state", "graphdef")},
                "static_plan": [bool(b) for b in plan], "distinct_plans": 1, "macs_cv": 0.0,
                "macs_mean": result["test_macs"], "train_time_s": recorded_train_time(run_dir)}

    below = fine_tuned(f"static @{penalty}", "below", plan)
    below.update(greedy_path=path,
                 ofas_minus_static_accuracy=ofas_row["test_accuracy"] - below["test_accuracy"])
    rows = [below]
    if b_config.rl.static_mixture and len(path) >= 2:  # (at the full MACs nothing is above)
        above = fine_tuned(f"static above @{penalty}", "above", tuple(path[-2]["plan"]))
        mixture = ofas.static_mixture(below, above, ofas_row["macs_mean"])
        mixture.update(point=f"static mix @{penalty}", static="mixture",
                       ofas_minus_static_mixture_accuracy=ofas_row["test_accuracy"] - mixture["test_accuracy"])
        graphdef = stage_a["graphdef"]
        plans = loop.test_plans(graphdef, ofas_state, test_split, b_config.dataset, b_config.eval_batch_size)
        mixture.update(ofas.routing_statistics(
            loop.test_correct(graphdef, ofas_state, test_split, b_config.dataset, b_config.eval_batch_size),
            costs.block_fraction(plans), correct["below"], correct["above"], mixture["share_above"]))
        rows += [above, mixture]
    if b_config.rl.static_cascade:
        rows.append(static_cascade(b_config, stage_a, ofas_row, data, costs, below, trained["below"],
                                   test_logits["below"], rows[1] if len(rows) > 1 else None,
                                   latency_images))
    return rows


def static_cascade(b_config, stage_a, ofas_row, data, costs, below, small, small_logits, above,
                   latency_images) -> dict:
    """The static sub-net below the point (`small`: its fine-tuned run; `small_logits` on the test
    set) escalating the images it is
    least sure of to the full backbone (stage A's), as many as the point's MACs allow
    (`methods.cascade`): the threshold is set on the training images no fine-tune saw (those after
    num_train_examples), so the test set's share, and so its MACs, are measured, not set. At its
    measured MACs it is compared with the static mixture of the sub-nets below and `above`
    (when they bracket those MACs) and with the same two networks mixed at random at its
    escalated share (what routing by confidence adds), and timed at batch 1 and in batches of up
    to 64 (the cascade, the full backbone, the sub-net alone: interleaved)."""
    from adaptive_jax.execution.predict import pure_predict
    from adaptive_jax.methods import cascade
    from adaptive_jax.train import search

    test_split = data[1]

    def sub_net_call(model, images):  # a FixedPlanNet: only its blocks run
        return model.predict(images)

    def backbone_call(model, images):  # an OFASNet: its backbone, every block
        return model.backbone(images)

    def sub_net_logits(split):
        return loop.test_outputs(small["graphdef"], small["state"], split, b_config.dataset,
                                 sub_net_call, b_config.eval_batch_size)

    unseen = loop.unseen_training_images(b_config)
    share = cascade.share_for_cost(ofas_row["macs_mean"], below["test_macs"], costs.full_macs)
    threshold = cascade.threshold_for_share(cascade.confidence(sub_net_logits(unseen)), share)
    large_logits = loop.test_outputs(stage_a["graphdef"], stage_a["state"], test_split,
                                     b_config.dataset, backbone_call, b_config.eval_batch_size)
    stats = cascade.statistics(small_logits, large_logits, test_split.labels, threshold,
                               below["test_macs"], costs.full_macs)
    stats["macs_mean"], stats["macs_cv"] = stats.pop("cost_mean"), stats.pop("cost_cv")
    large_accuracy = float(np.mean(large_logits.argmax(-1) == np.asarray(test_split.labels)))
    random_mixture = ((1 - stats["escalated_share"]) * below["test_accuracy"]
                      + stats["escalated_share"] * large_accuracy)
    row = {"point": f"cascade @{ofas_row['penalty']:g}", "static": "cascade", **stats,
           "test_macs": stats["macs_mean"], "distinct_plans": 2,
           "test_block_macs_frac": (stats["macs_mean"] - costs.base_macs) / sum(costs.run_macs),
           "escalation_target_share": share, "calibration_examples": len(unseen),
           "full_backbone_accuracy": large_accuracy,
           "cascade_minus_random_mixture_accuracy": stats["test_accuracy"] - random_mixture,
           "ofas_minus_cascade_accuracy": ofas_row["test_accuracy"] - stats["test_accuracy"]}
    if above is not None and below["test_macs"] <= stats["macs_mean"] <= above["test_macs"]:
        mixed = search.mixture_at(below, above, stats["macs_mean"], "test_macs", ("test_accuracy",))
        row["cascade_minus_static_mixture_accuracy"] = stats["test_accuracy"] - mixed["test_accuracy"]

    sub_net = pure_predict(small["graphdef"], sub_net_call)
    backbone = pure_predict(stage_a["graphdef"], backbone_call)
    sub_state = (small["state"].params, small["state"].batch_stats)
    full_state = (stage_a["state"].params, stage_a["state"].batch_stats)
    cascaded = cascade.predictor(sub_net, backbone, threshold)
    full_jit, sub_jit = jax.jit(backbone), jax.jit(sub_net)
    runs = {"cascade": cascaded, "full": lambda s, f, x: full_jit(*f, x),
            "sub-net": lambda s, f, x: sub_jit(*s, x)}
    cascade_ms, full_ms, sub_ms = latency.interleaved_batch1_ms(
        tuple(runs.values()), (sub_state, full_state), latency_images)
    row.update(latency_b1_ms=cascade_ms, full_latency_b1_ms=full_ms, speedup_b1=full_ms / cascade_ms,
               static_latency_b1_ms=sub_ms)
    # In batches: the backbone on the escalated rows only; 4 test batches of up to 64 (the first
    # images), whole batches only, each call timed, the three taking turns.
    mean, std = datasets.CHANNEL_MEAN[b_config.dataset], datasets.CHANNEL_STD[b_config.dataset]
    batch = min(64, len(test_split) // 8 * 8)
    images = np.asarray(normalize(test_split.images[:4 * batch], mean, std), np.float32)
    batch_ms = latency.interleaved_batch_ms(
        runs, (sub_state, full_state), [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)])
    row.update(throughput_batch=batch, batch_ms=batch_ms["cascade"],
               full_batch_ms=batch_ms["full"], static_batch_ms=batch_ms["sub-net"],
               speedup_batch=batch_ms["full"] / batch_ms["cascade"])
    return row


def save_to_zoo(name, config, graphdef, state, point, static, test_split, command, zoo_dir=None,
                mixture=None):
    from adaptive_jax import zoo

    metrics = {k: point[k] for k in PLAN_STATISTICS}
    metrics.update({"penalty": point["penalty"], "test_block_macs_frac": point["test_block_macs_frac"]})
    if static is not None:  # the comparison the entry stands on, kept with it
        metrics["static_subnet"] = {"plan": static["static_plan"], "macs": static["test_macs"],
                                    "test_accuracy": static["test_accuracy"]}
    if mixture is not None:
        metrics["static_mixture"] = {"plans": mixture["static_plans"], "macs": mixture["test_macs"],
                                     "share_above": mixture["share_above"],
                                     "test_accuracy": mixture["test_accuracy"]}
    record = zoo.save_entry(name, graphdef, state, dataset=config.dataset,
                            test_accuracy=point["test_accuracy"],
                            num_test_examples=point["test_examples"], recipe=config.to_dict(),
                            command=command, test_split=test_split,
                            train_time_s=point.get("train_time_s"),
                            metrics=metrics, zoo_dir=zoo_dir)
    print(zoo.format_records([record]), flush=True)


def plot_curve(rows, full_macs: int, out_path: str, title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["test_macs"] / 1e6 for r in rows], [r["test_accuracy"] for r in rows], "o-")
    for r in rows:
        ax.annotate(r["point"], (r["test_macs"] / 1e6, r["test_accuracy"]), fontsize=7)
    ax.axvline(full_macs / 1e6, color="gray", lw=0.8, ls="--", label="full backbone")
    ax.set_xlabel("MACs per image (millions, policy included)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def main(argv):
    command = common.start(argv, "experiments.ofas.main")
    run(FLAGS.config, FLAGS.workdir, FLAGS.latency_images, FLAGS.zoo_name, FLAGS.zoo_penalty,
        command, FLAGS.zoo_dir)


if __name__ == "__main__":
    app.run(main)
