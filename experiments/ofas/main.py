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
from adaptive_jax.train import loop, ofas, train_and_evaluate

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
           ("latency_b1_ms", "b1 ms", ".2f"), ("speedup_b1", "b1 speedup", ".2f"),
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


def batch1_latency(predict, state, images, repeats: int = 10) -> float:
    """Mean over images of each image's median latency (each image runs its own plan)."""
    return float(np.mean([latency.measure_latency(predict, state.params, state.batch_stats,
                                                  image[None], warmup=2, repeats=repeats).median_ms
                          for image in images]))


def run(config, workdir: str, latency_images: int = 16) -> list[dict]:
    train_split, test_split = loop.load_data(config)
    data = (train_split, test_split)
    stage_a = train_and_evaluate(config, os.path.join(workdir, "stage_a"), data, ofas.stage_a_task())
    graphdef = stage_a["graphdef"]
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]
    images = normalize(test_split.images[:latency_images], mean, std)
    images = np.asarray(images, np.float32)
    planned, full = make_predictors(graphdef)
    full_ms = batch1_latency(full, stage_a["state"], images)
    costs = cost.block_costs(nnx.merge(graphdef, stage_a["state"].params, stage_a["state"].batch_stats))

    def row(point, result, extra=None):
        r = {"point": point, **{k: v for k, v in result.items() if k not in ("state", "graphdef")},
             "latency_b1_ms": batch1_latency(planned, result["state"], images),
             "full_latency_b1_ms": full_ms, **(extra or {})}
        r["speedup_b1"] = full_ms / r["latency_b1_ms"]
        return r

    rows = [row("stage A", stage_a)]
    for penalty in config.rl.penalties:
        b_config = ofas.stage_b_config(config, penalty)
        result = train_and_evaluate(b_config, os.path.join(workdir, f"penalty_{penalty:g}"), data,
                                    ofas.stage_b_task(stage_a["state"]))
        rows.append(row(f"penalty {penalty:g}", result, {"penalty": float(penalty)}))

    print(f"OFAS ResNet-{config.model.depth} on {config.dataset}: full backbone "
          f"{costs.full_macs:.3e} MACs, policy head {costs.policy_macs} MACs, "
          f"b1 {full_ms:.2f} ms (cond executor vs all blocks, {len(images)} test images)")
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
