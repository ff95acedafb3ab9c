"""Activation ranges per bitwidth against the reference's one shared range (issue 14), measured on a
trained DFS model: both calibrated afresh on the same training batches (the model's own
decisions), then evaluated on the test set.

    taskset -c 0 python -m benchmarks.dfs_ranges --workdir=RUN/dfs/target_40 \
        --config=experiments/dfs/configs/default.py --target=40

Figure: `dfs_ranges_per_bitwidth_minus_shared_accuracy` (test top-1, per-bitwidth minus shared).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from adaptive_jax import report
from adaptive_jax.data import datasets
from adaptive_jax.train import dfs, loop, sharding, train_and_evaluate
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished joint step's workdir (WORKDIR/dfs/target_T).")
flags.DEFINE_float("target", 40.0, "Its target (the joint step's config).")
flags.DEFINE_integer("calibration_batches", 20, "Training batches the ranges are measured on.")
config_flags.DEFINE_config_file("config", None, "The run's configuration.", lock_config=False)
flags.mark_flags_as_required(["workdir", "config"])


def main(argv):
    del argv
    config = dfs.step_config(FLAGS.config, "joint", FLAGS.target)
    train, test = data = loop.load_data(config)
    restored = train_and_evaluate(config, FLAGS.workdir, data, dfs.task("joint"))  # restores
    batches = [images for images, _ in zip(
        (train.images[i:i + config.batch_size]
         for i in range(0, len(train), config.batch_size)), range(FLAGS.calibration_batches))]
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]
    mesh = sharding.data_mesh(1)
    rows = []
    for per_bitwidth in (True, False):
        graphdef, state = dfs.calibrate_ranges(restored["graphdef"], restored["state"], batches,
                                               config.dataset, per_bitwidth)
        eval_step = dfs.make_eval_step(graphdef, config, num_classes=train.num_classes,
                                       mean=mean, std=std)
        result = loop.evaluate(eval_step, state, test, config.eval_batch_size, mesh)
        rows.append({"ranges": "per bitwidth" if per_bitwidth else "shared (reference)",
                     "top1": result["test_accuracy"], "comp": result["test_computation_pct"]})
    diff = rows[0]["top1"] - rows[1]["top1"]
    text = report.format_table(rows, [("ranges", "activation ranges", "s"), ("top1", "top-1", ".4f"),
                                      ("comp", "comp %", ".1f")])
    print(text)
    common.append_results("dfs_ranges", [{
        "metric": "dfs_ranges_per_bitwidth_minus_shared_accuracy", "value": round(diff, 4),
        "unit": "fraction", "model": f"dfs_resnet{config.model.depth}", "target_pct": FLAGS.target,
        "per_bitwidth_accuracy": rows[0]["top1"], "shared_accuracy": rows[1]["top1"],
        "calibration_batches": FLAGS.calibration_batches}], text,
        notes=f"the trained joint step at {FLAGS.target:g} %, ranges re-measured from zero on "
              f"{FLAGS.calibration_batches} training batches both ways, then the test set")


if __name__ == "__main__":
    app.run(main)
