"""What does each way of training a slimmable ResNet cost per step? Measured side by side.

    taskset -c 0 python -m benchmarks.slimmable_train_cost

The train step of every mode (`adaptive_jax.train.slimmable`: multi_path = every width each
step, single_path = one width per step, sandwich = largest + smallest + one between, and each
width alone) on the same ResNet-20 and batch, timed in interleaved rounds after compilation, so
a machine that slows down mid-way slows every mode alike. single_path's time is the mean over
its widths (each step runs one, drawn at random), measured by pinning each draw; progressive's
is the mean of its phases (the full width, then the 2, 3, ... widest trained together).
Figures: s/step and the ratio to training the full width alone, as `slimmable_step_time`.
"""

from __future__ import annotations

import copy

import numpy as np
from absl import app, flags

from adaptive_jax import report
from adaptive_jax.data import datasets
from adaptive_jax.train import loop, slimmable, steps
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 20, "CIFAR ResNet depth.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("steps_per_round", 3, "Timed steps per variant per round.")


def make_step(config):
    model = slimmable.build_model(config, 10, 3)
    tx, _ = loop.make_tx(config, 100, 1000)
    graphdef, state = steps.create_train_state(model, tx, config.seed)
    mean, std = datasets.CHANNEL_MEAN["cifar10"], datasets.CHANNEL_STD["cifar10"]
    step = slimmable.make_train_step(graphdef, tx, config, num_classes=10, mean=mean, std=std,
                                     steps_per_epoch=100)
    return step, state


def main(argv):
    del argv
    base = slimmable.default_config()
    base.model.depth = FLAGS.depth
    widths = tuple(base.slim.widths)
    variants = {}
    for mode in ("multi_path", "sandwich"):
        c = copy.deepcopy(base)
        c.slim.mode = mode
        variants[mode] = c
    for w in widths:  # alone at w = single_path's step when it draws w
        c = copy.deepcopy(base)
        c.slim.mode, c.slim.width = "alone", w
        variants[f"w{w:g}"] = c
    for k in range(1, len(widths) - 1):  # progressive's middle phases: the k + 1 widest widths
        c = copy.deepcopy(base)
        c.slim.mode, c.slim.widths = "multi_path", widths[-(k + 1):]
        variants[f"phase{k}"] = c
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (FLAGS.batch_size,)).astype(np.int32)
    runs = {}
    for name, config in variants.items():
        runs[name] = list(make_step(config))
    med = common.interleaved_step_seconds(runs, images, labels, FLAGS.rounds,
                                          FLAGS.steps_per_round)
    med["single_path"] = float(np.mean([med[f"w{w:g}"] for w in widths]))
    # progressive spends an equal share of the schedule in each phase: full width alone, then
    # the 2, 3, ... widest, the last phase being multi_path
    phases = [med[f"w{widths[-1]:g}"]] + [med[f"phase{k}"] for k in range(1, len(widths) - 1)]
    med["progressive"] = float(np.mean(phases + [med["multi_path"]]))
    ref = med[f"w{widths[-1]:g}"]
    order = ["multi_path", "single_path", "progressive", "sandwich"] + [f"w{w:g}" for w in widths]
    rows = [{"mode": n if not n.startswith("w") else f"alone {n}", "s_per_step": med[n],
             "ratio": med[n] / ref} for n in order]
    text = report.format_table(rows, [("mode", "mode", "s"), ("s_per_step", "s / step", ".3f"),
                                      ("ratio", "x full width alone", ".2f")])
    print(text)
    model = f"slimmable_resnet{FLAGS.depth}_b{FLAGS.batch_size}"
    figures = [{"metric": "slimmable_step_time", "value": round(r["s_per_step"], 4), "unit": "s",
                "model": model, "mode": r["mode"], "ratio_to_full_alone": round(r["ratio"], 3)}
               for r in rows]
    common.append_results("slimmable_train_cost", figures, text,
                          notes="single_path = mean of the per-width steps it draws from; "
                                "progressive = mean of its phases' steps (equal shares)")


if __name__ == "__main__":
    app.run(main)
