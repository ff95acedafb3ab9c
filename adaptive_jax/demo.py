"""The demo: the zoo's adaptive models against the zoo's static ResNets, all measured here.

    from adaptive_jax import demo
    summary = demo.run("runs/demo")      # what `make demo` and notebooks/demo.ipynb show

(`python -m experiments.ofas.demo` is its command line.)

On the whole CIFAR-10 test set: top-1, mean MACs per image and their spread, distinct plans, and
on this machine batch-1 latency (full network vs the cond executor running each image's own plan)
and batch-64 throughput (full network vs the model's plans through the fastest exact executor
measured here: bucketed or masked, `latency.fastest_exact`), for the OFAS model and every
static zoo ResNet. The OFAS model's decision threshold is swept to draw its accuracy / MACs curve
(one trained policy, several operating points). Beside it, a cascade of two static zoo
backbones (`methods.cascade`: the shallow one answers, its least sure images go on to the deep
one; docs/zoo.md), at the MACs of a static entry and at a few other shares, its threshold set
two-fold on the test images' confidences (`cascade.two_fold_statistics`); its main point is timed
in batches of 64 answered one by one, and over 8 batches answered together, the escalated
images pooled into full batches (`cascade.pooled_predictor`); the plot also sweeps its share
escalated from none to all (`cascade_curve`). Writes `demo.json`,
`accuracy_vs_macs.png` and `least_most_compute.png` (the test images the policy spends least and
most on) into --out.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from adaptive_jax import latency, report, zoo
from adaptive_jax.data import datasets, normalize, pipeline
from adaptive_jax import execution
from adaptive_jax.execution.predict import pure_predict
from adaptive_jax.methods import cascade
from adaptive_jax.methods.ofas import make_predictors
from adaptive_jax.train import ofas

COLUMNS = [("model", "model", "s"), ("threshold", "thr", "s"), ("test_accuracy", "top-1", ".4f"),
           ("macs_mean", "MACs/img", ".3e"), ("macs_std", "MACs std", ".2e"),
           ("macs_cv", "MACs CV", ".3f"), ("distinct_plans", "plans", "d"),
           ("latency_b1_ms", "b1 ms", ".2f"), ("throughput_b64", "b64 img/s", ".0f"),
           ("batch_executor", "b64 via", "s")]


def evaluate_ofas(model, split, dataset: str, thresholds, batch_size: int = 512) -> dict:
    """{threshold: (plans (N, L), correct (N,))} of the OFAS model at each decision threshold.
    One compiled step serves every threshold (it is an argument, not a constant). The bucketed
    executor (the same numbers as masked or cond, tested) runs only the planned blocks, so it
    costs less than masked, which runs every block for every row."""
    graphdef, state = nnx.split(model)
    mean, std = datasets.CHANNEL_MEAN[dataset], datasets.CHANNEL_STD[dataset]
    executor = execution.bucketed(math.gcd(batch_size, execution.executors.DEFAULT_BUCKETS))

    @jax.jit
    def step(state, images_u8, labels, threshold):
        m = nnx.merge(graphdef, state)
        features = m.backbone.stem(normalize(images_u8, mean, std))
        plan = m.execute_probs(features) >= threshold
        logits = m.backbone.classify(executor.run_units(m.backbone, features, plan))
        return plan, logits.argmax(-1) == labels

    results = {}
    for t in thresholds:
        plans, correct = [], []
        for images, labels, mask in pipeline.eval_batches(split, batch_size):
            p, c = step(state, images, labels, np.float32(t))
            keep = mask > 0
            plans.append(np.asarray(p)[keep])
            correct.append(np.asarray(c)[keep])
        results[t] = (np.concatenate(plans), np.concatenate(correct))
    return results


def _test_images(split, dataset: str, count: int) -> np.ndarray:
    mean, std = datasets.CHANNEL_MEAN[dataset], datasets.CHANNEL_STD[dataset]
    return np.asarray(normalize(split.images[:count], mean, std), np.float32)


def measure_side_by_side(batch1: dict, batch64: dict, images, batches) -> dict:
    """{name: (batch-1 ms, batch-64 img/s)} of named `fn(images)` predictors, all measured in one
    interleaved pass each (image by image at batch 1, batch by batch at 64), so every row of the
    table saw the same machine. Timed one after another on a shared machine, one architecture
    once read 6.94 ms as the OFAS model's full backbone and 4.34 ms as the zoo ResNet-32
    (docs/ofas.md)."""
    b1 = dict(zip(batch1, latency.interleaved_batch1_ms(tuple(batch1.values()), (), images)))
    b64 = latency.interleaved_batch_ms(batch64, (), batches)
    return {name: (b1[name], 64e3 / b64[name]) for name in batch1}


def _bound(fn, *args):
    """fn(*args, images) as a function of the images alone (the weights stay jit arguments)."""
    return lambda images: fn(*args, images)


BATCH_EXECUTORS = ("bucketed", "masked")  # the exact ways to run per-image plans in a batch


def ofas_predictors(model, batches) -> tuple[dict, dict, dict]:
    """The OFAS model's own plans (cond executor at batch 1; in batches, the fastest of
    `BATCH_EXECUTORS` measured here on `batches`, `latency.fastest_exact`) and its full
    backbone, as named predictors for `measure_side_by_side`; and the batch choice
    {"executor": name, "ms": {name: ms per batch}}."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    planned, full = make_predictors(graphdef, "cond")
    args = (params, batch_stats)
    in_batches = {name: make_predictors(graphdef, name)[0] for name in BATCH_EXECUTORS}
    chosen, ms = latency.fastest_exact(in_batches, args, batches)
    return ({"planned": _bound(planned, *args), "full": _bound(full, *args)},
            {"planned": _bound(in_batches[chosen], *args), "full": _bound(full, *args)},
            {"executor": chosen, "ms": ms})


class Static(NamedTuple):
    """A static zoo model in the demo: its table row, batch predictor `predict(images)`, logits on
    the test split, and its pure network `net(params, batch_stats, images)` with `state`."""

    row: dict
    predict: Callable
    logits: np.ndarray
    net: Callable
    state: tuple


def static_row(name: str, split, dataset: str) -> Static:
    """A static zoo model's row (accuracy on `split`, its MACs), predictors and logits."""
    model, rec = zoo.load(name)
    logits = zoo.logits(model, split.images, dataset)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    predict = _bound(execution.make_predict_fn(graphdef), params, batch_stats)
    row = {"model": name, "kind": "static", "threshold": "-",
           "test_accuracy": float(np.mean(logits.argmax(-1) == split.labels)),
           "recorded_accuracy": rec.test_accuracy, "macs_mean": float(rec.macs), "macs_std": 0.0,
           "macs_cv": 0.0, "distinct_plans": 1}
    return Static(row, predict, logits, pure_predict(graphdef), (params, batch_stats))


def cascade_rows(small: str, large: str, at: str | None, shares, logits: dict, macs: dict,
                 labels) -> list[dict]:
    """The cascade `small` -> `large` at `at`'s MACs (first row) and at `shares` escalated."""
    matched = [cascade.share_for_cost(macs[at], macs[small], macs[large])] if at else []
    rows = []
    for share in [*matched, *sorted(set(shares) - set(matched))]:
        stats = cascade.two_fold_statistics(logits[small], logits[large], labels, share,
                                            macs[small], macs[large])
        escalated = stats.pop("escalated")
        per_image = macs[small] + escalated * float(macs[large])
        rows.append({"model": f"{small} -> {large} (cascade)", "kind": "cascade",
                     "threshold": f"{stats['threshold']:.3f}",
                     "test_accuracy": stats["test_accuracy"],
                     "macs_mean": stats["cost_mean"], "macs_std": float(per_image.std()),
                     "macs_cv": stats["cost_cv"], "distinct_plans": 2,
                     "escalated_share": stats["escalated_share"],
                     "escalation_threshold": stats["threshold"],  # the two halves' mean
                     **({"matches": at} if share in matched else {})})
    return rows


CURVE_SHARES = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def cascade_curve(small: str, large: str, logits: dict, macs: dict, labels,
                  shares=CURVE_SHARES) -> list[dict]:
    """The cascade's accuracy and mean MACs at each escalated share, two-fold as `cascade_rows`
    (for the plot: from the small network alone to every image escalated)."""
    points = []
    for share in shares:
        stats = cascade.two_fold_statistics(logits[small], logits[large], labels, share,
                                            macs[small], macs[large])
        points.append({"escalated_share": stats["escalated_share"],
                       "test_accuracy": stats["test_accuracy"], "macs_mean": stats["cost_mean"]})
    return points


def pooled_cascade_row(row: dict, small: Static, large: Static, at: tuple[str, Static],
                       images) -> dict:
    """The cascade's `row` answering `images` (whole batches of 64) together, the escalated
    images of every batch pooled into full batches for the large network
    (`cascade.pooled_predictor`), timed side by side with the static entry `at` batch by batch
    over the same images: the row with its batch-64 img/s, and the static entry's in that pass
    (`static_throughput_b64`)."""
    pooled = cascade.pooled_predictor(small.net, large.net, row["escalation_threshold"])
    at_name, static = at
    fns = {"pooled": lambda x: pooled(small.state, large.state, x),
           "static": lambda x: [static.predict(x[i:i + 64]) for i in range(0, len(x), 64)]}
    ms = latency.interleaved_batch_ms(fns, (), [images])
    batches = len(images) // 64
    return {**row, "model": row["model"].replace("(cascade)", "(cascade, pooled)"),
            "kind": "cascade_pooled", "latency_b1_ms": None,  # batch 1 pools nothing
            "throughput_b64": len(images) * 1e3 / ms["pooled"],
            "batch_executor": f"pooled x{batches}", "pooled_batches": batches,
            "static_at": at_name, "static_throughput_b64": len(images) * 1e3 / ms["static"]}


def run(out: str, ofas_name: str = "ofas_resnet32", ofas_zoo_dir: str | None = None,
        static_names=("resnet20", "resnet32_gpu"), thresholds=(0.35, 0.5, 0.65),
        num_examples: int = 0, latency_images: int = 16, throughput_batches: int = 4,
        cascade_pair=("resnet20_gpu", "resnet56"), cascade_at: str | None = "resnet32_gpu",
        cascade_shares=(0.1, 0.4), pooled_batches: int = 8) -> dict:
    """`cascade_pair` (small, large) zoo names, or () for no cascade; `cascade_at`: the static
    entry whose MACs the cascade's main point matches (it joins the static rows);
    `pooled_batches`: batches of 64 test images the cascade's main point also answers together
    (`pooled_cascade_row`; 0: not timed)."""
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    model, rec = zoo.load(ofas_name, ofas_zoo_dir)
    dataset = rec.dataset
    split = datasets.load_split(dataset, "test", download=True)  # offline: the manual dir
    if num_examples:
        split = datasets.Split(split.images[:num_examples], split.labels[:num_examples], split.num_classes)
    costs = model.costs()

    rows, plans_at = [], {}
    for t, (plans, correct) in evaluate_ofas(model, split, dataset, thresholds).items():
        plans_at[t] = plans
        rows.append({"model": ofas_name, "kind": "ofas", "threshold": f"{t:g}",
                     "test_accuracy": float(correct.mean()),
                     **ofas.plan_statistics(plans, costs)})
    main = next((r for r in rows if r["threshold"] == "0.5"), None)
    full_row = {"model": f"{ofas_name} (all blocks)", "kind": "full", "threshold": "-",
                "macs_mean": float(costs.full_macs), "macs_std": 0.0, "macs_cv": 0.0,
                "distinct_plans": 1}
    cascade_names = [*cascade_pair, *([cascade_at] if cascade_pair and cascade_at else [])]
    statics = {name: static_row(name, split, dataset)
               for name in dict.fromkeys([*static_names, *cascade_names])}
    cascades, curve = [], []
    if cascade_pair:
        logits_of = {name: s.logits for name, s in statics.items()}
        macs_of = {name: s.row["macs_mean"] for name, s in statics.items()}
        cascades = cascade_rows(*cascade_pair, cascade_at, cascade_shares, logits_of, macs_of,
                                split.labels)
        curve = cascade_curve(*cascade_pair, logits_of, macs_of, split.labels)
    # Every row's latency in one interleaved pass: the OFAS model's own plans, its full network,
    # the static ResNets and the cascade's main point take turns image by image (batch 1) and
    # batch by batch (64).
    images = _test_images(split, dataset, max(latency_images, 64 * throughput_batches))
    batches = [images[i * 64:(i + 1) * 64] for i in range(throughput_batches)]
    batch1, batch64, batch_choice = ofas_predictors(model, batches)
    for name, static in statics.items():
        batch1[name] = batch64[name] = static.predict
    if cascades:
        small, large = (statics[name] for name in cascade_pair)
        cascaded = cascade.predictor(small.net, large.net, cascades[0]["escalation_threshold"])
        batch1["cascade"] = batch64["cascade"] = lambda images: cascaded(small.state, large.state,
                                                                         images)
    timed = measure_side_by_side(batch1, batch64, images[:latency_images], batches)
    timed_rows = {"full": full_row, **{name: static.row for name, static in statics.items()}}
    if main is not None:
        timed_rows["planned"] = main
        main["batch_executor"] = batch_choice["executor"]
    if cascades:
        timed_rows["cascade"] = cascades[0]
        cascades[0]["batch_executor"] = "per batch"
    for name, row in timed_rows.items():
        row["latency_b1_ms"], row["throughput_b64"] = timed[name]
    pooled_batches = min(pooled_batches, len(split) // 64)
    if cascades and cascade_at and pooled_batches:
        pooled_images = _test_images(split, dataset, 64 * pooled_batches)
        cascades.insert(1, pooled_cascade_row(cascades[0], *(statics[n] for n in cascade_pair),
                                              (cascade_at, statics[cascade_at]), pooled_images))
    rows.append(full_row)
    rows += [static.row for static in statics.values()] + cascades

    print(f"{ofas_name} ({zoo.describe(rec.architecture)}, from {rec.recipe.get('init_from') or 'scratch'})"
          f" on {len(split)} {dataset} test images; latency measured on this machine "
          f"({jax.devices()[0].device_kind})")
    print(report.format_table(rows, COLUMNS), flush=True)
    for row in rows:
        if row.get("kind") == "cascade_pooled":
            print(f"pooled: the cascade over {row['pooled_batches']} batches of 64 "
                  f"answered together, {row['throughput_b64']:.0f} img/s; {row['static_at']} "
                  f"batch by batch over the same images, {row['static_throughput_b64']:.0f} img/s")
    summary = {"ofas": ofas_name, "record_metrics": rec.metrics, "rows": rows,
               "cascade_curve": curve, "batch_executor": batch_choice,
               "seconds": time.perf_counter() - start}
    plots = [plot_accuracy_vs_macs(rows, rec, os.path.join(out, "accuracy_vs_macs.png"), curve),
             plot_least_most(split, plans_at.get(0.5, next(iter(plans_at.values()))), costs,
                             os.path.join(out, "least_most_compute.png"))]
    with open(os.path.join(out, "demo.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"report: {os.path.join(out, 'demo.json')}; plots: {', '.join(plots)}; "
          f"{summary['seconds']:.0f} s")
    return summary


def plot_accuracy_vs_macs(rows, rec, path: str, cascade_points=()) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    curve = sorted((r for r in rows if r.get("kind") == "ofas"), key=lambda r: r["macs_mean"])
    ax.plot([r["macs_mean"] / 1e6 for r in curve], [r["test_accuracy"] for r in curve], "o-",
            label=f"{rec.name} (thresholds)")
    for r in curve:
        ax.annotate(f"t={r['threshold']}", (r["macs_mean"] / 1e6, r["test_accuracy"]), fontsize=7)
    chain = sorted((r for r in rows if r.get("kind") == "cascade"), key=lambda r: r["macs_mean"])
    if cascade_points:  # the threshold swept from the small network alone to every image up
        name = chain[0]["model"] if chain else "(cascade)"
        line, = ax.plot([p["macs_mean"] / 1e6 for p in cascade_points],
                        [p["test_accuracy"] for p in cascade_points], "-", lw=1,
                        label=name.replace("(cascade)", "(cascade, threshold swept)"))
    if chain:
        ax.plot([r["macs_mean"] / 1e6 for r in chain], [r["test_accuracy"] for r in chain], "^",
                color=line.get_color() if cascade_points else None,
                label=chain[0]["model"].replace("(cascade)", "(cascade, table rows)"))
    for r in rows:
        if r.get("kind") == "static":
            ax.plot(r["macs_mean"] / 1e6, r["test_accuracy"], "s", label=f"{r['model']} (static)")
    static_sub = rec.metrics.get("static_subnet")
    if static_sub:
        ax.plot(static_sub["macs"] / 1e6, static_sub["test_accuracy"], "x", color="k",
                label="best static sub-net, fine-tuned alike")
    mixture = rec.metrics.get("static_mixture")
    if mixture:  # the two static sub-nets around the point, mixed at exactly its mean MACs
        ax.plot(mixture["macs"] / 1e6, mixture["test_accuracy"], "+", color="k", markersize=9,
                label="static sub-nets mixed at equal MACs")
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("test top-1")
    ax.set_title("Adaptive (OFAS, cascade) vs static ResNets, CIFAR-10")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_least_most(split, plans, costs, path: str, count: int = 8) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from adaptive_jax.data.cifar_binary import LABEL_NAMES

    macs = costs.plan_macs(plans)
    order = np.argsort(macs, kind="stable")
    fig, axes = plt.subplots(2, count, figsize=(count * 1.2, 3.2))
    for row, (title, idx) in enumerate((("least", order[:count]), ("most", order[::-1][:count]))):
        for ax, i in zip(axes[row], idx):
            ax.imshow(split.images[i])
            ax.set_title(f"{LABEL_NAMES[split.labels[i]]}\n{macs[i] / 1e6:.0f}M", fontsize=6)
            ax.axis("off")
        axes[row][0].text(-8, 16, title, rotation=90, va="center", fontsize=8)
    fig.suptitle("Test images the policy spends least (top) and most (bottom) MACs on", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
