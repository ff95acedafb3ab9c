"""Does the conv lowering change what training reaches? The same recipe, per lowering and seed.

    taskset -c 1 python -m benchmarks.lowering_accuracy --workdir_root=runs/lowering

Trains `experiments/baseline` config `--variant` (default: the demo recipe, 2 epochs x 12,800
images) once per (conv lowering, seed) and reports test accuracy per run, mean and standard
deviation per lowering. The lowerings compute the same gradients up to float32 rounding
(tests/test_conv.py), so their runs diverge only as two seeds of one recipe do; the gap of the
means against the seed-to-seed spread is the figure. Finished runs in the workdirs are restored
and re-evaluated instead of retrained, so an interrupted sweep continues.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from adaptive_jax import report
from adaptive_jax.train import loop, train_and_evaluate
from benchmarks import common
from experiments.baseline.configs.default import get_config

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir_root", None, "One workdir per run is made under this directory.")
flags.DEFINE_string("variant", "demo", "Config variant of experiments/baseline/configs/default.py.")
flags.DEFINE_list("lowerings", ["auto", "xla"], "Conv lowerings to compare.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (initialisation, data order, augmentation).")
flags.mark_flags_as_required(["workdir_root"])


def _train_seconds(workdir: str) -> float | None:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "train_time_s" in r]
    return evals[-1]["train_time_s"] if evals else None


def main(argv):
    del argv
    rows, figures, accuracy = [], [], {}
    data = loop.load_data(get_config(FLAGS.variant))  # decoded once for every run
    for lowering in FLAGS.lowerings:
        for seed in (int(s) for s in FLAGS.seeds):
            config = get_config(FLAGS.variant)
            config.seed = seed
            config.model.conv_lowering = lowering
            config.progress_bar = False
            workdir = os.path.join(FLAGS.workdir_root, f"{FLAGS.variant}_{lowering}_s{seed}")
            result = train_and_evaluate(config, workdir, data=data)
            acc = float(result["test_accuracy"])
            accuracy.setdefault(lowering, []).append(acc)
            rows.append({"lowering": lowering, "seed": str(seed), "acc": acc,
                         "train_s": _train_seconds(workdir)})
            figures.append({"metric": "lowering_test_accuracy", "value": round(acc, 4),
                            "unit": "fraction", "model": f"resnet{config.model.depth}",
                            "conv_lowering": lowering, "seed": seed, "variant": FLAGS.variant})
    for lowering, accs in accuracy.items():
        rows.append({"lowering": lowering, "seed": "mean", "acc": float(np.mean(accs)),
                     "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else float("nan")})
    table = report.format_table(rows, [
        ("lowering", "conv lowering", "s"), ("seed", "seed", "s"), ("acc", "top-1", ".4f"),
        ("std", "std over seeds", ".4f"), ("train_s", "train s", ".0f")])
    if len(accuracy) == 2:
        (a, accs_a), (b, accs_b) = accuracy.items()
        gap = float(np.mean(accs_a) - np.mean(accs_b))
        table += f"\n\nmean top-1 {a} - {b}: {gap:+.4f}"
        figures.append({"metric": "lowering_accuracy_gap", "value": round(gap, 4), "unit": "fraction",
                        "model": f"resnet{config.model.depth}", "variant": FLAGS.variant,
                        "note": f"mean over seeds {FLAGS.seeds}: {a} minus {b}"})
    print(table)
    common.append_results("lowering_accuracy", figures, table,
                          notes=f"config variant {FLAGS.variant}, seeds {','.join(FLAGS.seeds)}")


if __name__ == "__main__":
    app.run(main)
