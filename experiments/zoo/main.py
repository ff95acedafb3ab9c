"""Train and evaluate a zoo backbone, then write its zoo entry (weights file + manifest record).

    python -m experiments.zoo.main --workdir=/tmp/zoo_resnet20 \
        --config=experiments/zoo/configs/default.py:cpu --config.model.depth=20

Re-running with the same --workdir resumes from its latest checkpoint (a finished run is restored
and re-evaluated, not retrained), so a background run that was killed loses minutes, not hours.
At the end the weights and BN statistics go to the zoo (`--zoo_dir`, default the package's own
`adaptive_jax/zoo/`) as `resnet<depth>`, with the test accuracy, MACs, the recipe, this exact
command, the device, the software versions and the file's sha256 (docs/zoo.md).
"""

import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from adaptive_jax.config import check_override_flags
from adaptive_jax.train import default_config, loop, read_metrics, train_and_evaluate

FLAGS = flags.FLAGS
if __name__ == "__main__":
    try:
        check_override_flags(sys.argv, default_config())
    except ValueError as e:
        sys.exit(f"error: {e}")
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_string("name", None, "Zoo entry name (default: resnet<depth>).")
flags.DEFINE_string("zoo_dir", None, "Zoo directory to write to (default: the package's zoo).")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def run(config, workdir: str, name: str | None = None, zoo_dir: str | None = None,
        command: str = "") -> dict:
    loop.validate_config(config)  # before the data loads
    train, test = loop.load_data(config)
    result = train_and_evaluate(config, workdir, data=(train, test))
    from adaptive_jax import zoo  # imported late: a background run picks up the zoo code at its end

    history = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    train_time = [r["train_time_s"] for r in history if "train_time_s" in r]
    record = zoo.save_entry(
        name or f"resnet{config.model.depth}", result["graphdef"], result["state"],
        dataset=config.dataset, test_accuracy=result["test_accuracy"],
        num_test_examples=result["test_examples"],
        recipe=config.to_dict(), command=command, test_split=test,
        train_time_s=train_time[-1] if train_time else None, zoo_dir=zoo_dir)
    print(zoo.format_records([record]), flush=True)
    return record


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    command = "python -m experiments.zoo.main " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run(FLAGS.config, FLAGS.workdir, FLAGS.name, FLAGS.zoo_dir, command)


if __name__ == "__main__":
    app.run(main)
