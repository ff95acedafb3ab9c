"""OFAS end to end: stage A, stage B per penalty, then accuracy / MACs / latency per point.

    python -m experiments.ofas.main --workdir=/tmp/ofas \
        --config=experiments/ofas/configs/default.py:demo

Stage A lands in WORKDIR/stage_a, each penalty's stage B in WORKDIR/penalty_<p>; re-running with
the same --workdir resumes (finished stages are restored and re-evaluated, not retrained).
`--config.rl.penalties=1,4` picks the curve's points. Prints one row per point: test accuracy, the
share of block MACs the policy spends, MACs per image (policy included) and the measured batch-1
latency of the cond executor on test images (skipped blocks do not run), against the full net.
"""

import json
import os
import sys

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from adaptive_jax import cost, latency, report
from adaptive_jax.config import check_override_flags
from adaptive_jax.data import datasets, normalize
from adaptive_jax.train import loop, ofas, read_metrics, train_and_evaluate

FLAGS = flags.FLAGS
if __name__ == "__main__":
    try:
        check_override_flags(sys.argv, ofas.default_config())
    except ValueError as e:
        sys.exit(f"error: {e}")
flags.DEFINE_string("workdir", None, "Directory for both stages' checkpoints, metrics and the report.")
flags.DEFINE_integer("latency_images", 16, "Test images timed one by one at batch 1 per point.")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])

COLUMNS = [("point", "point", "s"), ("test_accuracy", "top-1", ".4f"),
           ("test_block_macs_frac", "block MACs", ".3f"), ("test_macs", "MACs/img", ".3e"),
           ("latency_b1_ms", "b1 ms", ".2f"), ("full_latency_b1_ms", "full b1 ms", ".2f"),
           ("speedup_b1", "b1 speedup", ".2f"),
           ("train_time_s", "train s", ".0f")]


def make_predictors(graphdef):
    """jit'd batch-1 predictions: the OFAS plan run by the cond executor, and the full backbone."""

    def planned(params, batch_stats, image):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return model.predict(image, "cond")[0]

    def full(params, batch_stats, image):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return model.backbone(image)

    return jax.jit(planned), jax.jit(full)


def batch1_latency(planned, full, state, images, rounds: int = 3, calls: int = 5):
    """(planned ms, full ms) at batch 1: per image the median of `calls`, averaged over images
    (each image runs its own plan); the two alternate image by image, and the median over
    `rounds` is kept, so a machine that slows down mid-way shifts both alike."""
    args = (state.params, state.batch_stats)
    samples = {planned: [], full: []}
    for _ in range(rounds):
        per_image = {planned: [], full: []}
        for image in images:
            for fn in (planned, full):
                per_image[fn].append(latency.measure_latency(fn, *args, image[None], warmup=2,
                                                             repeats=calls).median_ms)
        for fn, values in per_image.items():
            samples[fn].append(np.mean(values))
    return float(np.median(samples[planned])), float(np.median(samples[full]))


def recorded_train_time(workdir: str) -> float | None:
    """Training time of a finished run, from its metrics (a resumed, finished run trains nothing)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    times = [r["train_time_s"] for r in read_metrics(path) if "train_time_s" in r]
    return times[-1] if times else None


def run(config, workdir: str, latency_images: int = 16) -> list[dict]:
    train_split, test_split = loop.load_data(config)
    data = (train_split, test_split)
    stage_a_dir = os.path.join(workdir, "stage_a")
    stage_a = train_and_evaluate(config, stage_a_dir, data, ofas.stage_a_task())
    graphdef = stage_a["graphdef"]
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]
    images = normalize(test_split.images[:latency_images], mean, std)
    images = np.asarray(images, np.float32)
    planned, full = make_predictors(graphdef)
    costs = cost.block_costs(nnx.merge(graphdef, stage_a["state"].params, stage_a["state"].batch_stats))

    def row(point, result, run_dir, extra=None):
        planned_ms, full_ms = batch1_latency(planned, full, result["state"], images)
        r = {"point": point, **{k: v for k, v in result.items() if k not in ("state", "graphdef")},
             "latency_b1_ms": planned_ms, "full_latency_b1_ms": full_ms,
             "speedup_b1": full_ms / planned_ms, **(extra or {})}
        r.setdefault("train_time_s", recorded_train_time(run_dir))
        return r

    rows = [row("stage A", stage_a, stage_a_dir)]
    for penalty in config.rl.penalties:
        b_config = ofas.stage_b_config(config, penalty)
        run_dir = os.path.join(workdir, f"penalty_{penalty:g}")
        result = train_and_evaluate(b_config, run_dir, data, ofas.stage_b_task(stage_a["state"]))
        rows.append(row(f"penalty {penalty:g}", result, run_dir, {"penalty": float(penalty)}))

    print(f"OFAS ResNet-{config.model.depth} on {config.dataset}: full backbone "
          f"{costs.full_macs:.3e} MACs, policy head {costs.policy_macs} MACs; batch-1 latency of "
          f"the cond executor (skipped blocks do not run) vs all blocks, {len(images)} test images")
    print(report.format_table(rows, COLUMNS), flush=True)
    summary = {"model": f"ofas_resnet{config.model.depth}", "dataset": config.dataset,
               "full_macs": costs.full_macs, "policy_macs": costs.policy_macs, "points": rows}
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot = plot_curve(rows, costs.full_macs, os.path.join(workdir, "curve.png"),
                      f"OFAS ResNet-{config.model.depth} on {config.dataset}")
    print(f"report: {os.path.join(workdir, 'report.json')}, plot: {plot}")
    return rows


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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    run(FLAGS.config, FLAGS.workdir, FLAGS.latency_images)


if __name__ == "__main__":
    app.run(main)
