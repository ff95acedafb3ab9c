"""Train and evaluate a baseline CIFAR ResNet, then print accuracy, MACs and measured latency.

    python -m experiments.baseline.main --workdir=/tmp/baseline \
        --config=experiments/baseline/configs/default.py:cpu

Re-running with the same --workdir resumes from its latest checkpoint.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from adaptive_jax import report
from adaptive_jax.train import default_config, train_and_evaluate
from experiments import common

FLAGS = flags.FLAGS
if __name__ == "__main__":
    common.exit_on_bad_overrides(default_config())
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the report.")
flags.DEFINE_list("latency_batch_sizes", ["1", "128"], "Batch sizes to time inference at.")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def run(config, workdir: str, latency_batch_sizes=(1, 128)) -> dict:
    result = train_and_evaluate(config, workdir)
    state, graphdef = result.pop("state"), result.pop("graphdef")
    image_shape = state_image_shape(config)
    row = {"model": f"resnet{config.model.depth}", **result,
           **report.measure_model(graphdef, state, image_shape, latency_batch_sizes)}
    columns = [c for c in report.CLASSIFIER_COLUMNS if not c[0].startswith("latency_b")]
    columns[-1:-1] = [(f"latency_b{b}_ms", f"b{b} ms", ".2f") for b in latency_batch_sizes]
    print(report.format_table([row], columns), flush=True)
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(row, f, indent=2)
    plot = report.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                              os.path.join(workdir, "curves.png"),
                              f"{row['model']} on {config.dataset}")
    print(f"report: {os.path.join(workdir, 'report.json')}, plot: {plot}")
    return row


def state_image_shape(config) -> tuple[int, int, int]:
    return (28, 28, 1) if config.dataset == "fashion_mnist" else (32, 32, 3)


def main(argv):
    common.start(argv, "experiments.baseline.main")
    run(FLAGS.config, FLAGS.workdir, tuple(int(b) for b in FLAGS.latency_batch_sizes))


if __name__ == "__main__":
    app.run(main)
