"""How much does ordering channels by importance give the prefix sub-nets of a net trained at
full width only (OFA's first step, before it trains the narrower widths)?

    python -m experiments.dynamic_dnn.shrink --workdir=runs/slim_alone_1 \
        --config=experiments/dynamic_dnn/configs/default.py:demo \
        --config.slim.mode=alone --config.slim.width=1.0

Restores the run in --workdir (trained with `--config.slim.mode=alone --config.slim.width=1.0`),
then for two channel orders, the trained one and `sort_channels_by_importance`, starts every
narrower width's BN from the full width's prefix, recalibrates it on `--calibration_batches`
training batches (exact means, `recalibrate_batch_norm`) and reports each width's test top-1.
No weight is trained here: the table measures what the order alone keeps in each prefix.
"""

from __future__ import annotations

import copy
import json
import os
import types

import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from adaptive_jax import report
from adaptive_jax.data import datasets
from adaptive_jax.data.augment import normalize
from adaptive_jax.models.slimmable import (inherit_batch_norm_from_full_width,
                                           sort_channels_by_importance)
from adaptive_jax.nn.slim import recalibrate_batch_norm
from adaptive_jax.train import loop, sharding, slimmable, train_and_evaluate
from experiments import common

FLAGS = flags.FLAGS
if __name__ == "__main__":
    common.exit_on_bad_overrides(slimmable.default_config())
flags.DEFINE_string("workdir", None, "A finished full-width run (slim.mode=alone, slim.width=1.0).")
flags.DEFINE_integer("calibration_batches", 20, "Training batches for each width's BN statistics.")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "The run's training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def width_accuracies(model, config, train_split, test_split, eval_step, num_batches: int) -> dict:
    """Recalibrates every narrower width's BN on training batches, then each width's test top-1
    (`eval_step`: the slimmable eval step over every width)."""
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]
    rng = np.random.default_rng(config.seed)
    batches = [normalize(train_split.images[rng.choice(len(train_split), config.batch_size, replace=False)],
                         mean, std) for _ in range(num_batches)]
    widths = tuple(config.slim.widths)
    for w in widths[:-1]:  # the full width keeps its trained statistics
        recalibrate_batch_norm(model, lambda m, x, w=w: m(x, w), batches)
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = types.SimpleNamespace(params=params, batch_stats=stats)
    result = loop.evaluate(eval_step, state, test_split, config.eval_batch_size,
                           sharding.data_mesh(1))
    return {w: result[f"test_accuracy_w{w:g}"] for w in widths}


def run(config, workdir: str, calibration_batches: int = 20, data=None) -> list[dict]:
    """`data` (train, test) bypasses TFDS, as in `train_and_evaluate`."""
    if config.slim.mode != "alone" or config.slim.width != 1.0:
        raise ValueError("shrink reads a run trained at full width only: pass "
                         "--config.slim.mode=alone --config.slim.width=1.0 (as it was trained)")
    loop.validate_config(config, slimmable.task())  # before the data loads
    train_split, test_split = data if data is not None else loop.load_data(config)
    # restores the finished run; trains nothing
    trained = train_and_evaluate(config, workdir, (train_split, test_split), slimmable.task())
    graphdef = trained["graphdef"]
    every_width = copy.deepcopy(config)
    every_width.slim.mode = "multi_path"  # its eval step reports every width
    eval_step = slimmable.make_eval_step(
        graphdef, every_width, num_classes=train_split.num_classes,
        mean=datasets.CHANNEL_MEAN[config.dataset], std=datasets.CHANNEL_STD[config.dataset])
    rows = {}
    for order in ("trained", "sorted"):
        model = nnx.merge(graphdef, trained["state"].params, trained["state"].batch_stats,
                          copy=True)  # each order from the trained weights, which stay as they are
        if order == "sorted":
            sort_channels_by_importance(model)  # also starts narrow BNs from the full prefix
        else:
            inherit_batch_norm_from_full_width(model)
        accuracy = width_accuracies(model, config, train_split, test_split, eval_step,
                                    calibration_batches)
        for w, a in accuracy.items():
            rows.setdefault(w, {"width": f"{w:g}"})[f"{order}_accuracy"] = a
    rows = list(rows.values())
    print(f"prefix sub-nets of a full-width ResNet-{config.model.depth} ({workdir}), BN recalibrated "
          f"on {calibration_batches} x {config.batch_size} training images, no weight trained")
    print(report.format_table(rows, [("width", "width", "s"),
                                     ("trained_accuracy", "top-1, trained order", ".4f"),
                                     ("sorted_accuracy", "top-1, sorted by L1", ".4f")]), flush=True)
    with open(os.path.join(workdir, "shrink.json"), "w") as f:
        json.dump({"calibration_batches": calibration_batches, "widths": rows}, f, indent=2)
    return rows


def main(argv):
    common.start(argv, "experiments.dynamic_dnn.shrink")
    run(FLAGS.config, FLAGS.workdir, FLAGS.calibration_batches)


if __name__ == "__main__":
    app.run(main)
