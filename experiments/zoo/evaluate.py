"""Re-evaluate zoo entries on the test set: recorded top-1 against reproduced, per entry.

    python -m experiments.zoo.evaluate                          # every entry, all 10,000 images
    python -m experiments.zoo.evaluate --names=resnet20 --num_examples=1000

With --num_examples=1000 the recorded figure compared is the entry's top-1 on those first 1,000
images (`metrics.test_accuracy_first_1000`), which is what the test suite checks.
`python -m benchmarks.record_zoo` runs the same and records the figures.
"""

from absl import app, flags

from adaptive_jax import report, zoo
from adaptive_jax.data import datasets
from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list("names", [], "Entries to evaluate (default: all).")
flags.DEFINE_integer("num_examples", 0, "First this-many test images (0: all).")
flags.DEFINE_string("zoo_dir", None, "Zoo directory (default: the package's).")

COLUMNS = [("name", "name", "s"), ("examples", "images", "d"), ("recorded", "recorded", ".4f"),
           ("reproduced", "reproduced", ".4f"), ("difference", "diff", "+.4f")]


def evaluate(names=(), num_examples: int = 0, zoo_dir: str | None = None) -> list[dict]:
    rows, splits = [], {}
    for rec in zoo.list(zoo_dir):
        if names and rec.name not in names:
            continue
        if rec.dataset not in splits:
            splits[rec.dataset] = datasets.load_split(rec.dataset, "test", download=True)
        split = splits[rec.dataset]
        n = num_examples or len(split)
        if n == len(split):
            recorded = rec.test_accuracy
        else:
            recorded = rec.metrics.get(f"test_accuracy_first_{n}")
            if recorded is None:
                raise ValueError(f"{rec.name} records top-1 on the whole test set and on the first "
                                 f"{zoo.SMOKE_EXAMPLES} images, not on {n}; pass --num_examples=0 "
                                 f"or {zoo.SMOKE_EXAMPLES}")
        model, _ = zoo.load(rec.name, zoo_dir)
        got = zoo.evaluate(model, split.images[:n], split.labels[:n], rec.dataset)
        rows.append({"name": rec.name, "examples": n, "recorded": recorded,
                     "reproduced": got["accuracy"], "difference": got["accuracy"] - recorded})
    missing = set(names) - {r["name"] for r in rows}
    if missing:
        raise ValueError(f"no zoo entries {sorted(missing)}; the zoo has {[r.name for r in zoo.list(zoo_dir)]}")
    return rows


def main(argv):
    common.start(argv, "experiments.zoo.evaluate")
    rows = evaluate(tuple(FLAGS.names), FLAGS.num_examples, FLAGS.zoo_dir)
    print(report.format_table(rows, COLUMNS))


if __name__ == "__main__":
    app.run(main)
