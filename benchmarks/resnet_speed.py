"""Training throughput and inference latency of the CIFAR ResNets, with PyTorch side by side.

    taskset -c 0 python -m benchmarks.resnet_speed            # one core pinned
    python -m benchmarks.resnet_speed --quick                 # fewer rounds, ResNet-20 only

Training: images per second of one full train step at batch 128 (forward, backward, SGD with
momentum and weight decay, batch-norm statistics): adaptive_jax's compiled step (which also
augments on device) and PyTorch eager on the identical ResNet-20, channels-first and
channels-last. The variants run interleaved in rounds, so machine noise hits them alike;
figures are medians over rounds, with the spread. Inference: median batch-1 and batch-128 latency
of the jit-compiled predict function. PyTorch uses as many threads as this process may run on.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from adaptive_jax import execution, report
from adaptive_jax.latency import measure_latency
from adaptive_jax.models import resnet
from adaptive_jax.train import create_train_state, make_optimizer
from benchmarks import common
from benchmarks.runners import train_throughput

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Fewer rounds and only ResNet-20 (under 5 minutes).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds of timed training steps.")
flags.DEFINE_integer("steps_per_round", 3, "Timed training steps per variant per round.")
flags.DEFINE_list("latency_depths", ["20", "56", "110"], "ResNet depths to time inference for.")
flags.DEFINE_bool("torch", True, "Time PyTorch alongside (needs the benchmark extra).")

def inference_latency(depth: int) -> dict:
    model = resnet(depth)
    graphdef, state = create_train_state(model, make_optimizer(learning_rate=0.1), seed=0)
    predict = execution.make_predict_fn(graphdef)
    out = {}
    for batch, repeats in ((1, 50), (128, 5)):
        images = np.zeros((batch, 32, 32, 3), np.float32)
        out[batch] = measure_latency(predict, state.params, state.batch_stats, images,
                                     repeats=repeats)
    return out


def main(argv):
    del argv
    depths = [20] if FLAGS.quick else [int(d) for d in FLAGS.latency_depths]
    rounds = 3 if FLAGS.quick else FLAGS.rounds
    threads = len(os.sched_getaffinity(0))
    figures, rows = [], []

    train = train_throughput(20, FLAGS.batch_size, rounds, FLAGS.steps_per_round, FLAGS.torch)
    jax_rate = train["adaptive_jax"][0]
    for name, (median, low, high) in train.items():
        rows.append({"what": f"train img/s, {name}", "model": "resnet20",
                     "value": f"{median:.1f} [{low:.1f}, {high:.1f}]",
                     "ratio": f"{jax_rate / median:.2f}" if name != "adaptive_jax" else ""})
        figures.append({"metric": "train_throughput", "value": round(median, 2), "unit": "img/s",
                        "model": "resnet20", "framework": name, "threads": threads,
                        "batch_size": FLAGS.batch_size})
    if "torch_eager" in train:
        best_torch = max(train["torch_eager"][0], train["torch_channels_last"][0])
        figures.append({"metric": "train_throughput_vs_torch", "value": round(jax_rate / best_torch, 3),
                        "unit": "ratio", "model": "resnet20", "threads": threads,
                        "batch_size": FLAGS.batch_size,
                        "note": "adaptive_jax img/s over the faster PyTorch eager layout"})

    for depth in depths:
        for batch, stats in inference_latency(depth).items():
            rows.append({"what": f"inference latency b{batch} ms", "model": f"resnet{depth}",
                         "value": f"{stats.median_ms:.2f} (cv {stats.cv:.2f})", "ratio": ""})
            figures.append({"metric": f"latency_b{batch}", "value": round(stats.median_ms, 3),
                            "unit": "ms", "model": f"resnet{depth}", "threads": threads,
                            "cv": round(stats.cv, 3)})

    table = report.format_table(rows, [("what", "measure", "s"), ("model", "model", "s"),
                                       ("value", "median [min, max]", "s"),
                                       ("ratio", "jax / this", "s")])
    print(table)
    if "torch_eager" in train:
        print(f"train_throughput_vs_torch (resnet20, {threads} thread(s)): "
              f"{figures[len(train)]['value']}")
    common.append_results("resnet_speed", figures, table,
                          notes=f"batch {FLAGS.batch_size}, {threads} thread(s), rounds {rounds}")


if __name__ == "__main__":
    app.run(main)
