"""Records the zoo's entries re-evaluated on the test set (`experiments.zoo.evaluate`) as
benchmark figures: one `benchmark: zoo, metric: test_accuracy` record per entry, with the top-1
its manifest records, and the table to RESULTS.md.

    python -m benchmarks.record_zoo                       # every entry, all 10,000 test images
    python -m benchmarks.record_zoo --names=resnet32
"""

from __future__ import annotations

from absl import app, flags

from adaptive_jax import report
from benchmarks.common import append_results
from experiments.zoo.evaluate import COLUMNS, evaluate  # and its flags: --names, --num_examples,
                                                         # --zoo_dir

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rows = evaluate(tuple(FLAGS.names), FLAGS.num_examples, FLAGS.zoo_dir)
    table = report.format_table(rows, COLUMNS)
    print(table)
    append_results("zoo", [{"metric": "test_accuracy", "value": r["reproduced"],
                            "unit": "fraction", "model": r["name"], "test_images": r["examples"],
                            "recorded": r["recorded"]} for r in rows], table)


if __name__ == "__main__":
    app.run(main)
