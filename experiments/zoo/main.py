"""Train and evaluate a zoo backbone, then write its zoo entry (weights file + manifest record).

    python -m experiments.zoo.main --workdir=/tmp/zoo_resnet20 \
        --config=experiments/zoo/configs/default.py:cpu --config.model.depth=20

Re-running with the same --workdir resumes from its latest checkpoint (a finished run is restored
and re-evaluated, not retrained), so a background run that was killed loses minutes, not hours.
At the end the weights and BN statistics go to the zoo (`--zoo_dir`, default the package's own
`adaptive_jax/zoo/`) as `resnet<depth>`, with the test accuracy, MACs, the recipe, this exact
command, the device, the software versions and the file's sha256 (docs/zoo.md).

With --time_budget_s the run fits its epoch count to a wall-clock budget
(experiments/zoo/budget.py); the manifest keeps the fixed-epoch command that reproduces the entry.
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from adaptive_jax.train import default_config, loop, read_metrics, train_and_evaluate
from experiments.zoo import budget
from experiments import common

START = time.time()  # the budget counts from here: data loading and compiling included
FLAGS = flags.FLAGS
if __name__ == "__main__":
    common.exit_on_bad_overrides(default_config())
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_string("name", None, "Zoo entry name (default: resnet<depth>).")
flags.DEFINE_string("zoo_dir", None, "Zoo directory to write to (default: the package's zoo).")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.", lock_config=True)
flags.DEFINE_float("time_budget_s", 0.0, "> 0: fit num_epochs to end within this many seconds "
                   "of the start (compile and evaluation included); 0: train config.num_epochs.")
flags.DEFINE_string("sync_dir", None, "With --time_budget_s and several runs side by side: a "
                    "directory shared by them; each times its step only once all have compiled.")
flags.DEFINE_integer("sync_count", 1, "How many runs share --sync_dir.")
flags.mark_flags_as_required(["workdir"])


def run(config, workdir: str, name: str | None = None, zoo_dir: str | None = None,
        command: str = "", time_budget_s: float = 0.0, sync=None, argv=()) -> dict:
    loop.validate_config(config)  # before the data loads
    if time_budget_s > 0:
        budget.check_fresh_workdir(workdir)
    train, test = loop.load_data(config)
    if time_budget_s > 0:
        compile_s, step_s = budget.measure_train_step(config, train, sync=sync)
        steps_per_epoch = len(train) // config.batch_size
        left = time_budget_s - (time.time() - START)
        config.num_epochs = budget.epochs_within(left, compile_s, step_s, steps_per_epoch,
                                                 config.num_epochs)
        command = budget.fixed_epoch_command(list(argv), config.num_epochs)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "command.txt"), "w") as f:
            f.write(command + "\n")
        print(f"time budget: {left:.0f} s left, compile {compile_s:.1f} s, "
              f"{step_s * 1e3:.2f} ms per step: {config.num_epochs} epochs", flush=True)
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
    command = common.start(argv, "experiments.zoo.main")
    sync = None
    if FLAGS.sync_dir:
        sync = lambda: budget.wait_for_each_other(FLAGS.sync_dir, FLAGS.sync_count)  # noqa: E731
    run(FLAGS.config, FLAGS.workdir, FLAGS.name, FLAGS.zoo_dir, command,
        time_budget_s=FLAGS.time_budget_s, sync=sync, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
