"""Records a finished training run (its workdir's metrics.jsonl) as benchmark figures.

    python -m benchmarks.record_training --workdir=runs/cpu_recipe --model=resnet20 \
        --run_command="python -m experiments.baseline.main --workdir=runs/cpu_recipe --config=...:cpu" \
        --device="2 vCPU"

Appends the final test accuracy (and training time) to results.jsonl, and the accuracy curve
to RESULTS.md. Runs made elsewhere (a GPU machine) are recorded from their copied metrics file.
"""

from __future__ import annotations

import json

from absl import app, flags

from adaptive_jax import report
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("metrics", None, "Path of the run's metrics.jsonl.")
flags.DEFINE_string("model", "resnet20", "Model name for the record.")
flags.DEFINE_string("run_command", None, "The command that trained the run.")
flags.DEFINE_string("device", None, "Where it trained, in words (e.g. 'NVIDIA H100, jax 0.11.2').")
flags.DEFINE_string("note", "", "Anything a reader must know (e.g. an unfinished run).")
flags.mark_flags_as_required(["metrics", "run_command", "device"])


def main(argv):
    del argv
    with open(FLAGS.metrics) as f:
        records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if "test_accuracy" in r]
    if not evals:
        raise SystemExit(f"{FLAGS.metrics} holds no evaluation (test_accuracy) records")
    last = evals[-1]
    base = {"model": FLAGS.model, "device": FLAGS.device, "epoch": last.get("epoch"),
            "run_command": FLAGS.run_command}
    if FLAGS.note:
        base["note"] = FLAGS.note
    figures = [{"metric": "test_accuracy", "value": round(last["test_accuracy"], 4),
                "unit": "fraction", **base}]
    if "train_time_s" in last:
        figures.append({"metric": "train_time", "value": round(last["train_time_s"], 1),
                        "unit": "s", **base})
    rows = [{"epoch": r.get("epoch"), "test_accuracy": r["test_accuracy"],
             "test_loss": r["test_loss"], "train_time_s": r.get("train_time_s")} for r in evals]
    table = report.format_table(rows, [("epoch", "epoch", "d"), ("test_accuracy", "top-1", ".4f"),
                                       ("test_loss", "test loss", ".4f"),
                                       ("train_time_s", "train s", ".0f")])
    print(table)
    common.append_results("train", figures, table, command=FLAGS.run_command,
                          notes=FLAGS.note, machine_info={"device": FLAGS.device})


if __name__ == "__main__":
    app.run(main)
