"""Why training unrolls each stage's `lax.scan`: gradient time with the stages scanned vs unrolled.

    taskset -c 0 python -m benchmarks.stage_scan

Times one jit-compiled gradient of the training loss (batch statistics moving) of the same ResNet
with its stages scanned and unrolled, interleaved in one process; medians, with compile times.
(Inference always scans; `unroll_training` does not touch it.)
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from adaptive_jax import report
from adaptive_jax.models import CifarResNet, ResNetSpec
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 20, "ResNet depth.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("rounds", 5, "Interleaved timed rounds.")


def compiled(unroll: bool, batch: int, depth: int):
    model = CifarResNet(ResNetSpec(depth, unroll_training=unroll), rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = jax.random.normal(jax.random.PRNGKey(0), (batch, 32, 32, 3))

    def loss(params, stats, images):
        stats = jax.tree.map(lambda x: x, stats)  # owned by this trace (see train/steps.py)
        m = nnx.merge(graphdef, params, stats)
        m.train()
        return m(images).sum()

    fn = jax.jit(jax.grad(loss))
    start = time.perf_counter()
    jax.block_until_ready(fn(params, stats, images))
    return time.perf_counter() - start, lambda: jax.block_until_ready(fn(params, stats, images))


def main(argv):
    del argv
    variants = {"scanned": compiled(False, FLAGS.batch_size, FLAGS.depth),
                "unrolled": compiled(True, FLAGS.batch_size, FLAGS.depth)}
    times = {v: [] for v in variants}
    for _ in range(FLAGS.rounds):
        for v, (_, run) in variants.items():
            start = time.perf_counter()
            run()
            times[v].append(time.perf_counter() - start)
    rows, figures = [], []
    model = f"resnet{FLAGS.depth}"
    for v, ts in times.items():
        ms = float(np.median(ts) * 1e3)
        rows.append({"what": "gradient", "stages": v, "ms": ms, "compile_s": variants[v][0]})
        figures.append({"metric": f"gradient_ms_{v}", "value": round(ms, 2), "unit": "ms",
                        "model": model, "batch_size": FLAGS.batch_size})
    ratio = float(np.median(times["scanned"]) / np.median(times["unrolled"]))
    figures.append({"metric": "gradient_scanned_over_unrolled", "value": round(ratio, 2),
                    "unit": "ratio", "model": model, "batch_size": FLAGS.batch_size})
    rows.append({"what": "gradient scanned / unrolled", "stages": "", "ms": ratio, "compile_s": None})
    table = report.format_table(rows, [("what", "measure", "s"), ("stages", "stages", "s"),
                                       ("ms", "median ms (or ratio)", ".2f"),
                                       ("compile_s", "first call s", ".1f")])
    print(table)
    common.append_results("stage_scan", figures, table, notes=f"batch {FLAGS.batch_size}")


if __name__ == "__main__":
    app.run(main)
