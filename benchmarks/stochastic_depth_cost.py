"""Does a block dropped by stochastic depth save its training time? Side by side.

    taskset -c 0 python -m benchmarks.stochastic_depth_cost [--depth=32] [--final_drop=0.5]

Steps of the same ResNet, batch and optimiser, timed in interleaved rounds after compilation: the
plain supervised step; the same step with stochastic depth (`model.stochastic_depth`: block l of
L dropped for the batch with probability (l / L) * final_drop, `CifarResNet.drop_blocks`), each
step drawing its own blocks, so its median is over many draws; a step with every block kept and
one with every block dropped, each through the same conds (the pattern read at run time, as a
draw is: what the conds cost a kept block, and what a dropped block still costs); and the floor,
no block at all (stem, projection shortcuts, classifier, loss and update only). If a dropped
block saves its share of the time, the stochastic-depth step takes floor + (plain - floor) x the
expected share of block MACs that runs (`cost.block_costs`); `sd_time_saved_over_ideal` is the
time saved over that ideal saving (1.0: in proportion). A reference that multiplies dropped
blocks by zero saves nothing (0.0).

Part 2 (`--conv_in_cond`, default on): the conv input gradient, XLA's transposed form against
`nn.conv`'s flipped-kernel form, at the top level and inside a `lax.cond` branch (the 3x3 convs
of the first stage and of its stride-2 transition, batch 128): why the CPU lowering changed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from adaptive_jax import cost, report
from adaptive_jax.data import datasets
from adaptive_jax.models.resnet import survival_probabilities
from adaptive_jax.nn import conv
from adaptive_jax.train import loop, steps
from benchmarks import common
from benchmarks.runners import fixed_keep_step

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 32, "CIFAR ResNet depth.")
flags.DEFINE_float("final_drop", 0.5, "Drop probability of the last block (Huang et al.: 0.5).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("steps_per_round", 10, "Timed steps per variant per round.")
flags.DEFINE_bool("conv_in_cond", True, "Part 2: the conv input gradient in and out of lax.cond.")

# (height/width, in channels, out channels, stride) of the 3x3 convs part 2 times.
COND_SHAPES = [(32, 16, 16, 1), (32, 16, 32, 2)]


def input_grad_ms(batch: int, hw: int, cin: int, cout: int, stride: int) -> dict:
    """Median ms of each input-gradient form, plain and as the taken branch of a `lax.cond`."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32))
    out = (hw + stride - 1) // stride
    dy = jnp.asarray(rng.standard_normal((batch, out, out, cout), np.float32))
    shape, strides, padding = (batch, hw, hw, cin), (stride, stride), ((1, 1), (1, 1))
    taken = jnp.asarray(True)
    times = {}
    for name, grad in (("xla", conv.xla_input_grad), ("flipped", conv.flipped_kernel_input_grad)):
        run = lambda dy, w, grad=grad: grad(dy, w, shape, strides, padding)
        plain = jax.jit(run)
        branch = jax.jit(lambda p, dy, w, run=run: jax.lax.cond(
            p, run, lambda dy, w: jnp.zeros(shape, dy.dtype), dy, w))
        for where, fn in (("top", lambda: plain(dy, w)), ("cond", lambda: branch(taken, dy, w))):
            jax.block_until_ready(fn())
            times[f"{name}_{where}"] = common.median_call_ms(lambda: jax.block_until_ready(fn()), 5)
    return times


def expected_block_share(model, final_drop: float) -> float:
    """The expected share of the blocks' MACs a stochastic-depth step runs (a dropped
    projection block still runs its shortcut)."""
    costs = cost.block_costs(model)
    survival = survival_probabilities(costs.num_units, final_drop)
    run = np.asarray(costs.run_macs, float)
    skip = np.asarray(costs.skip_macs, float)
    return float((survival * run + (1 - survival) * skip).sum() / run.sum())


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
    every = np.ones(model.spec.num_blocks, bool)
    runs = {"plain": [steps.make_train_step(graphdef, tx, **args), copy()],
            "sd": [steps.make_train_step(graphdef, tx, stochastic_depth=FLAGS.final_drop, **args),
                   copy()],
            "kept": [fixed_keep_step(graphdef, tx, every, through_conds=True, **args), copy()],
            "dropped": [fixed_keep_step(graphdef, tx, ~every, through_conds=True, **args),
                        copy()],
            "floor": [fixed_keep_step(graphdef, tx, ~every, through_conds=False, **args),
                      copy()]}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (FLAGS.batch_size,)).astype(np.int32)
    med = common.interleaved_step_seconds(runs, images, labels, FLAGS.rounds, FLAGS.steps_per_round)
    plain, sd, kept, dropped, floor = (med[k] for k in ("plain", "sd", "kept", "dropped", "floor"))
    ideal = floor + (plain - floor) * share
    efficiency = (plain - sd) / (plain - ideal)
    # Where the missing saving goes: a kept block costs its share of (kept - dropped) over what
    # the same block costs dropped, a dropped block its share of (dropped - floor): stochastic
    # depth would take dropped + (kept - dropped) x share.
    expected_from_conds = dropped + (kept - dropped) * share
    rows = [{"step": "plain", "s": plain, "ratio": 1.0},
            {"step": f"stochastic depth {FLAGS.final_drop:g}", "s": sd, "ratio": sd / plain},
            {"step": "  ideal (time in proportion to block MACs)", "s": ideal, "ratio": ideal / plain},
            {"step": "  expected from the two cond rows", "s": expected_from_conds,
             "ratio": expected_from_conds / plain},
            {"step": "every block kept, through the conds", "s": kept, "ratio": kept / plain},
            {"step": "every block dropped, through the conds", "s": dropped,
             "ratio": dropped / plain},
            {"step": "no block at all (the floor)", "s": floor, "ratio": floor / plain}]
    text = report.format_table(rows, [("step", "train step", "s"), ("s", "s / step", ".3f"),
                                      ("ratio", "x plain", ".3f")])
    text += (f"\nexpected share of block MACs run: {share:.3f}; "
             f"time saved / ideal saving: {efficiency:.2f}")
    print(text)
    model_name = f"resnet{FLAGS.depth}_b{FLAGS.batch_size}"
    extra = {"final_drop": FLAGS.final_drop, "plain_s": round(plain, 4), "sd_s": round(sd, 4),
             "kept_s": round(kept, 4), "dropped_s": round(dropped, 4), "floor_s": round(floor, 4),
             "expected_block_share": round(share, 4)}
    figures = [{"metric": "sd_train_step_over_plain", "value": round(sd / plain, 4), "unit": "ratio",
                "model": model_name, **extra},
               {"metric": "sd_time_saved_over_ideal", "value": round(efficiency, 4),
                "unit": "ratio", "model": model_name, **extra},
               {"metric": "sd_kept_all_step_over_plain", "value": round(kept / plain, 4),
                "unit": "ratio", "model": model_name, **extra},
               {"metric": "sd_dropped_all_step_over_plain", "value": round(dropped / plain, 4),
                "unit": "ratio", "model": model_name, **extra}]
    if FLAGS.conv_in_cond:
        conv_rows = []
        for hw, cin, cout, stride in COND_SHAPES:
            t = input_grad_ms(FLAGS.batch_size, hw, cin, cout, stride)
            conv_rows.append({"shape": f"{hw}x{hw}x{cin}->{cout} s{stride}", **t})
            figures.append({"metric": "conv_input_grad_cond_over_top_xla",
                            "value": round(t["xla_cond"] / t["xla_top"], 3), "unit": "ratio",
                            "model": f"conv3x3_{hw}x{hw}x{cin}_{cout}_s{stride}_b{FLAGS.batch_size}",
                            **{k: round(v, 2) for k, v in t.items()}})
        part2 = report.format_table(conv_rows, [
            ("shape", "3x3 conv input gradient", "s"), ("xla_top", "XLA ms", ".1f"),
            ("xla_cond", "XLA in cond ms", ".1f"), ("flipped_top", "flipped ms", ".1f"),
            ("flipped_cond", "flipped in cond ms", ".1f")])
        print(part2)
        text += "\n\n" + part2
    common.append_results("stochastic_depth_cost", figures, text,
                          notes=f"{FLAGS.rounds} rounds x {FLAGS.steps_per_round} steps, medians")


if __name__ == "__main__":
    app.run(main)
