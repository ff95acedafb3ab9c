"""Where a training step's time goes on this machine: the compiled step's ops, each timed.

    taskset -c 0 python -m benchmarks.step_profile [--depth=20] [--conv_lowering=auto]

Runs adaptive_jax's supervised train step of a CIFAR ResNet (the step `benchmarks.train_throughput`
times) under `jax.profiler.trace`, reads the trace's events (one per op the compiled executable
ran: fusions, convolutions, dots, named as in the optimised HLO), joins each with its output shape
from that HLO, and prints the milliseconds per step of each kind of op (the name without its
number: `convolution`, `dot_general`, `transpose_copy_fusion`, `ynn_fusion` ...) and of each kind
and output shape, largest first. The wall-clock step is timed too, so the table shows how much of
it the ops account for.

Why a per-op table: what a step spends its time on changes with the CPU and the XLA version (XLA:CPU
hands a convolution to YNNPACK or to its own kernel by its channel count, a dot by its operands'
layout), and the lowering of the conv gradients (`adaptive_jax/nn/conv.py`) was chosen from such a
table. Nothing here needs more than jax: the trace's events are read from the JSON it writes.
"""

from __future__ import annotations

import os
import tempfile

import jax
from absl import app, flags

from adaptive_jax import report
from benchmarks import common
from benchmarks.op_profile import hlo_output_shapes, summarise, traced_op_microseconds
from benchmarks.runners import jax_train_step

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 20, "CIFAR ResNet depth.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_enum("conv_lowering", "auto", ["auto", "xla", "cpu"],
                  "Conv gradient lowering of the model (adaptive_jax.nn.conv).")
flags.DEFINE_integer("steps", 3, "Steps traced (and steps timed, after as many warm-up steps).")
flags.DEFINE_integer("top", 20, "Rows of the (kind, shape) table.")


def main(argv):
    del argv
    step, state, images, labels = jax_train_step(FLAGS.depth, FLAGS.batch_size, FLAGS.conv_lowering)
    # One executable, compiled once: the one timed, traced, and whose HLO names the trace's ops.
    compiled = step.lower(state, images, labels).compile()
    shapes = hlo_output_shapes(compiled.as_text())
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], images, labels)
        jax.block_until_ready(metrics)

    for _ in range(FLAGS.steps):  # warm up
        one_step()
    step_ms = common.median_call_ms(one_step, FLAGS.steps)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(FLAGS.steps):
                one_step()
        op_us = traced_op_microseconds(trace_dir, shapes.keys())
    kind_rows, shape_rows = summarise(op_us, shapes, FLAGS.steps)
    ops_ms = sum(r["ms"] for r in kind_rows)
    model = f"resnet{FLAGS.depth}"
    print(f"{model}, batch {FLAGS.batch_size}, conv lowering {FLAGS.conv_lowering}: step "
          f"{step_ms:.1f} ms (median of {FLAGS.steps}), {ops_ms:.1f} ms of it in the ops below")
    kind_table = report.format_table(kind_rows, [
        ("kind", "op kind", "s"), ("ops", "ops", "d"), ("ms", "ms / step", ".1f"),
        ("share", "share", ".3f")])
    shape_table = report.format_table(shape_rows[:FLAGS.top], [
        ("kind", "op kind", "s"), ("shape", "output", "s"), ("ops", "ops", "d"),
        ("ms", "ms / step", ".1f"), ("each", "ms each", ".2f"), ("share", "share", ".3f")])
    print(kind_table)
    print(shape_table)
    context = {"model": model, "batch_size": FLAGS.batch_size, "conv_lowering": FLAGS.conv_lowering,
               "threads": len(os.sched_getaffinity(0))}
    figures = [{"metric": "train_step_ms", "value": round(step_ms, 1), "unit": "ms", **context},
               {"metric": "train_step_ops_ms", "value": round(ops_ms, 1), "unit": "ms", **context}]
    figures += [{"metric": "train_step_op_kind_ms", "value": round(r["ms"], 2), "unit": "ms",
                 "op_kind": r["kind"], **context} for r in kind_rows if r["share"] >= 0.02]
    common.append_results("step_profile", figures, kind_table + "\n\n" + shape_table,
                          notes=f"{model}, batch {FLAGS.batch_size}, conv lowering "
                                f"{FLAGS.conv_lowering}, step {step_ms:.1f} ms, "
                                f"ops {ops_ms:.1f} ms")


if __name__ == "__main__":
    app.run(main)
