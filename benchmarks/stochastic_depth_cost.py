"""Does a block dropped by stochastic depth save its training time? Side by side.

    taskset -c 0 python -m benchmarks.stochastic_depth_cost [--depth=32] [--final_drop=0.5]

Three steps of the same ResNet, batch and optimiser, timed in interleaved rounds after
compilation: the plain supervised step; the same step with stochastic depth
(`model.stochastic_depth`: block l of L dropped for the batch with probability
(l / L) * final_drop, `CifarResNet.drop_blocks`), each step drawing its own blocks, so its median
is over many draws; and a step with every block dropped (stem, projection shortcuts, classifier,
loss and update only: the floor). If a dropped block saves its share of the time, the
stochastic-depth step takes floor + (plain - floor) x the expected share of block MACs that runs
(`cost.block_costs`); `sd_time_saved_over_ideal` is the time saved over that ideal saving (1.0:
in proportion). A reference that multiplies dropped blocks by zero saves nothing (0.0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from adaptive_jax import cost, report
from adaptive_jax.data import datasets
from adaptive_jax.models.resnet import survival_probabilities
from adaptive_jax.train import loop, steps
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 32, "CIFAR ResNet depth.")
flags.DEFINE_float("final_drop", 0.5, "Drop probability of the last block (Huang et al.: 0.5).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("steps_per_round", 10, "Timed steps per variant per round.")


def expected_block_share(model, final_drop: float) -> float:
    """The expected share of the blocks' MACs a stochastic-depth step runs (a dropped
    projection block still runs its shortcut)."""
    costs = cost.block_costs(model)
    survival = survival_probabilities(costs.num_units, final_drop)
    run = np.asarray(costs.run_macs, float)
    skip = np.asarray(costs.skip_macs, float)
    return float((survival * run + (1 - survival) * skip).sum() / run.sum())


def every_block_dropped_step(graphdef, tx, num_blocks: int, **args):
    """The supervised step with no block running: what no drop pattern can go under."""
    keep, survival = jnp.zeros(num_blocks, bool), jnp.ones(num_blocks)

    def loss(model, images, labels, key, step):
        logits = model.drop_blocks(images, keep, survival)
        value = steps.cross_entropy(logits, labels, args["num_classes"]).mean()
        return value, {"loss": value}

    return jax.jit(steps.make_step(graphdef, tx, loss, mean=args["mean"], std=args["std"]),
                   donate_argnums=0)


def main(argv):
    del argv
    config = loop.default_config()
    config.model.depth = FLAGS.depth
    mean, std = datasets.CHANNEL_MEAN["cifar10"], datasets.CHANNEL_STD["cifar10"]
    model = loop.build_model(config, 10, 3)
    share = expected_block_share(model, FLAGS.final_drop)
    tx, _ = loop.make_tx(config, 100, 1000)
    graphdef, state = steps.create_train_state(model, tx, 0)
    args = dict(num_classes=10, mean=mean, std=std)
    copy = lambda: jax.tree.map(jnp.copy, state)  # each step donates its own state
    runs = {"plain": [steps.make_train_step(graphdef, tx, **args), copy()],
            "sd": [steps.make_train_step(graphdef, tx, stochastic_depth=FLAGS.final_drop, **args),
                   copy()],
            "floor": [every_block_dropped_step(graphdef, tx, model.spec.num_blocks, **args), copy()]}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (FLAGS.batch_size,)).astype(np.int32)
    med = common.interleaved_step_seconds(runs, images, labels, FLAGS.rounds, FLAGS.steps_per_round)
    plain, sd, floor = med["plain"], med["sd"], med["floor"]
    ideal = floor + (plain - floor) * share
    efficiency = (plain - sd) / (plain - ideal)
    rows = [{"step": "plain", "s": plain, "ratio": 1.0},
            {"step": f"stochastic depth {FLAGS.final_drop:g}", "s": sd, "ratio": sd / plain},
            {"step": "  ideal (time in proportion to block MACs)", "s": ideal, "ratio": ideal / plain},
            {"step": "every block dropped (floor)", "s": floor, "ratio": floor / plain}]
    text = report.format_table(rows, [("step", "train step", "s"), ("s", "s / step", ".3f"),
                                      ("ratio", "x plain", ".3f")])
    text += (f"\nexpected share of block MACs run: {share:.3f}; "
             f"time saved / ideal saving: {efficiency:.2f}")
    print(text)
    model_name = f"resnet{FLAGS.depth}_b{FLAGS.batch_size}"
    extra = {"final_drop": FLAGS.final_drop, "plain_s": round(plain, 4), "sd_s": round(sd, 4),
             "floor_s": round(floor, 4), "expected_block_share": round(share, 4)}
    figures = [{"metric": "sd_train_step_over_plain", "value": round(sd / plain, 4), "unit": "ratio",
                "model": model_name, **extra},
               {"metric": "sd_time_saved_over_ideal", "value": round(efficiency, 4),
                "unit": "ratio", "model": model_name, **extra}]
    common.append_results("stochastic_depth_cost", figures, text,
                          notes=f"{FLAGS.rounds} rounds x {FLAGS.steps_per_round} steps, medians")


if __name__ == "__main__":
    app.run(main)
