"""What each DFS option costs in wall-clock time here (issue 14): per block kind and option, batch 1
and 64, side by side in one process; and whether a 0-bit decision saves what skipping saves.

    taskset -c 0 python -m benchmarks.dfs_options            # 5 rounds
    taskset -c 0 python -m benchmarks.dfs_options --quick    # 3 rounds, fewer calls

1. Kernels: for every conv shape of a CIFAR ResNet and each batch size, the 8-bit option's conv
   (quantise, convolve, dequantise) in float on the dequantised grid and by the two integer
   kernels (`models.quantized.quantized_conv`); the fastest is what the executor runs
   (`latency.fastest_int8_kernels` makes that choice; `Bitwidths(kernels=...)` takes it).
2. Blocks: each block kind (stage 1, the two transitions, stages 2 and 3) under every option of
   the menu, the 8-bit one with the chosen kernels; speedup = the float block's ms / the option's.
   An option with no faster kernel computes in float on its grid: its speedup says what that
   costs. Kernels quantised once (`DFSNet.prepare_weights`), as inference runs them.
3. 0 bits vs skip: ResNet-32, every other block at option 0 (the rest float) through the cond
   executor on the quantised net, against the same blocks skipped by a block plan on the plain
   backbone; saved fraction = (full - 0-bit) / (full - skipped).

Weights are random (timing does not depend on them); ranges calibrated by one training forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from adaptive_jax import execution, latency, report
from adaptive_jax.methods.dfs import DFSNet
from adaptive_jax.models.options import Bitwidths
from adaptive_jax.models.resnet import resnet
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
flags.DEFINE_bool("quick", False, "3 rounds.")
flags.DEFINE_integer("depth", 32, "ResNet depth (6n+2).")
flags.DEFINE_bool("record", True, "Append to benchmarks/RESULTS.md and results.jsonl.")

BATCHES = (1, 64)
BLOCK_KINDS = ("stage 1 (32x32x16)", "transition 16->32", "stage 2 (16x16x32)",
               "transition 32->64", "stage 3 (8x8x64)")


def calibrated_model(depth: int) -> DFSNet:
    model = DFSNet(resnet(depth), rngs=nnx.Rngs(0))
    model.train()
    model.forward(jax.random.normal(jax.random.key(0), (16, 32, 32, 3)))
    model.eval()
    return model


def block_inputs(model: DFSNet, batch: int) -> dict[str, tuple[int, jax.Array]]:
    """Each block kind's first unit index and a batch of its input features."""
    n = model.spec.blocks_per_stage
    picks = dict(zip((0, n, n + 1, 2 * n, 2 * n + 1), BLOCK_KINDS))
    x = model.backbone.stem(jax.random.normal(jax.random.key(1), (batch, 32, 32, 3)))
    inputs = {}
    for index, block in enumerate(model.backbone.units()):
        if index in picks:
            inputs[picks[index]] = (index, x)
        x = block(x)
    return inputs


def block_ms(model: DFSNet, batch: int, menu: Bitwidths, rounds: int) -> dict[tuple[str, str], float]:
    """ms of each block kind under each option (0: its shortcut only), interleaved rounds."""
    graphdef, state = nnx.split(model)
    state = (state, model.prepare_weights())  # arguments, as the float block's weights are
    fns, args = {}, {}
    for kind, (index, x) in block_inputs(model, batch).items():
        for k in range(menu.num_options):
            def run(state, x, k=k, index=index):
                state, weights = state
                qblock = nnx.merge(graphdef, state).quantized(weights).units()[index]
                shortcut = qblock.shortcut(x)
                return shortcut if k == 0 else menu.apply(qblock, x, k, shortcut)
            fns[(kind, menu.names[k])] = jax.jit(run)
            args[(kind, menu.names[k])] = x
    for key, fn in fns.items():  # compile, not timed
        jax.block_until_ready(fn(state, args[key]))
    times = {key: [] for key in fns}
    calls = 20 if batch == 1 else 3
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(common.median_call_ms(
                lambda: jax.block_until_ready(fn(state, args[key])), calls))
    return {key: float(np.median(t)) for key, t in times.items()}


def zero_bit_vs_skip(model: DFSNet, batch: int, rounds: int) -> dict:
    """ms of the full net, every other block at 0 bits (cond on the quantised net) and the same
    blocks skipped (cond on the plain backbone)."""
    menu = model.options
    graphdef, state = nnx.split(model)
    num_units = model.backbone.layout.num_blocks
    off = np.arange(num_units) % 2 == 1
    option_plan = jnp.asarray(np.where(off, 0, menu.num_options - 1), jnp.int32)
    block_plan = jnp.asarray(~off)
    full_plan = jnp.full((num_units,), menu.num_options - 1, jnp.int32)

    def quantised(state, images, plan):
        m = nnx.merge(graphdef, state)
        return execution.cond(menu).forward(m.quantized(), images, plan)

    def plain(state, images, plan):
        m = nnx.merge(graphdef, state)
        return execution.cond().forward(m.backbone, images, plan)

    images = jax.random.normal(jax.random.key(2), (batch, 32, 32, 3))
    q, p = jax.jit(quantised), jax.jit(plain)
    fns = {"full": (q, full_plan), "0-bit": (q, option_plan), "skipped": (p, block_plan),
           "full plain": (p, jnp.ones((num_units,), bool))}
    ms = latency.interleaved_batch_ms(
        {name: (lambda state, images, fn=fn, plan=plan: fn(state, images, plan))
         for name, (fn, plan) in fns.items()}, (state,), [images] * (10 if batch == 1 else 8),
        rounds)
    saved_skip = ms["full plain"] - ms["skipped"]
    return {**ms, "saved_fraction": (ms["full"] - ms["0-bit"]) / saved_skip}


def main(argv):
    del argv
    rounds = 3 if FLAGS.quick else FLAGS.rounds
    model = calibrated_model(FLAGS.depth)
    kernel_rows, block_rows, skip_rows, figures = [], [], [], []
    for batch in BATCHES:
        kernels, kernel_ms = latency.fastest_int8_kernels(model.backbone, batch, rounds)
        for shape, ms in kernel_ms.items():
            kernel_rows.append({"batch": batch, "conv": "%dx%d s%d" % shape, **ms,
                                "chosen": dict(kernels).get(shape, "float")})
        menu = Bitwidths(model.options.widths, kernels=kernels)
        ms = block_ms(model, batch, menu, rounds)
        for kind in BLOCK_KINDS:
            full = ms[(kind, "float")]
            for name in menu.names:
                row = {"batch": batch, "block": kind, "option": name, "ms": ms[(kind, name)],
                       "speedup": full / ms[(kind, name)]}
                block_rows.append(row)
                figures.append({"metric": "dfs_option_speedup", "value": round(row["speedup"], 4),
                                "unit": "ratio", "model": f"resnet{FLAGS.depth}_block",
                                "batch": batch, "block": kind, "option": name,
                                "ms": round(row["ms"], 4), "float_ms": round(full, 4)})
        result = zero_bit_vs_skip(model, batch, rounds)
        skip_rows.append({"batch": batch, **result})
        figures.append({"metric": "dfs_zero_bit_saved_over_skip_saved",
                        "value": round(result["saved_fraction"], 4), "unit": "ratio",
                        "model": f"resnet{FLAGS.depth}", "batch": batch,
                        **{f"{k.replace(' ', '_').replace('-', '')}_ms": round(v, 4)
                           for k, v in result.items() if k != "saved_fraction"}})
    tables = "\n\n".join([
        report.format_table(kernel_rows, [("batch", "batch", "d"), ("conv", "conv (in x out, stride)", "s"),
                                          ("float", "float ms", ".3f"), ("xla", "int8 xla ms", ".3f"),
                                          ("patches", "int8 patches ms", ".3f"), ("chosen", "chosen", "s")]),
        report.format_table(block_rows, [("batch", "batch", "d"), ("block", "block", "s"),
                                         ("option", "option", "s"), ("ms", "ms", ".3f"),
                                         ("speedup", "float / option", ".2f")]),
        report.format_table(skip_rows, [("batch", "batch", "d"), ("full plain", "plain ms", ".2f"),
                                        ("skipped", "skipped ms", ".2f"), ("full", "float opt ms", ".2f"),
                                        ("0-bit", "0-bit ms", ".2f"),
                                        ("saved_fraction", "0-bit saved / skip saved", ".2f")])])
    print(tables)
    if FLAGS.record:
        common.append_results("dfs_options", figures, tables,
                              notes=f"{rounds} interleaved rounds; medians; random weights, ranges "
                                    "calibrated; 8-bit kernels chosen per conv shape and batch")


if __name__ == "__main__":
    app.run(main)
