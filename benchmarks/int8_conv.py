"""Does an 8-bit convolution run faster than float32 here? Every 3x3 conv shape of the CIFAR
ResNets, batch 1 and 64, side by side in one process (issue 14: DFS's 8-bit option).

    taskset -c 0 python -m benchmarks.int8_conv            # 7 rounds
    taskset -c 0 python -m benchmarks.int8_conv --quick    # 3 rounds

Variants per shape: float32 `lax.conv` (what the models run going forward), int8 x int8 -> int32
by XLA's integer convolution (`nn.quant.int_conv2d(lowering="xla")`), and by one int8 matmul over
the nine taps' inputs (`lowering="patches"`); every variant jit-compiled, compiled before timing,
taking turns in rounds; medians. speedup = float32 ms / int8 ms. Quantisation and dequantisation
are not in the timed call (an executor keeps activations in int8 between layers only where that
pays; this table says where the conv itself does).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from adaptive_jax import report
from adaptive_jax.nn import quant
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
flags.DEFINE_integer("calls", 20, "Timed calls per variant per round (batch 1; batch 64 uses 1/4).")
flags.DEFINE_bool("quick", False, "3 rounds.")
flags.DEFINE_bool("record", True, "Append to benchmarks/RESULTS.md and results.jsonl.")

# (height = width, input channels, output channels, stride): the 3x3 convs of stages 1-3,
# including the strided first conv of stages 2 and 3.
SHAPES = [(32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (16, 32, 64, 2), (8, 64, 64, 1)]
BATCHES = (1, 64)


def variants(batch: int, size: int, cin: int, cout: int, stride: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    xq, _ = quant.quantize_symmetric(x, 8, quant.symmetric_scale(x, 8, axis=(0, 1, 2, 3)))
    wq, _ = quant.quantize_symmetric(w, 8)
    pad = ((1, 1), (1, 1))
    f32 = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")))
    fns = {"float32": (f32, x, w)}
    for lowering in quant.INT_LOWERINGS:
        fn = jax.jit(lambda x, w, lowering=lowering: quant.int_conv2d(x, w, (stride, stride), pad,
                                                                      lowering))
        fns[f"int8 {lowering}"] = (fn, xq, wq)
    for fn, *args in fns.values():  # compile and warm up, not timed
        jax.block_until_ready(fn(*args))
    return fns


def time_shape(batch: int, shape, rounds: int, calls: int) -> dict[str, float]:
    fns = variants(batch, *shape)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (fn, *args) in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
    del argv
    rounds = 3 if FLAGS.quick else FLAGS.rounds
    rows, figures = [], []
    for batch in BATCHES:
        calls = FLAGS.calls if batch == 1 else max(1, FLAGS.calls // 4)
        for shape in SHAPES:
            ms = time_shape(batch, shape, rounds, calls)
            size, cin, cout, stride = shape
            name = f"{size}x{size}x{cin}->{cout} s{stride}"
            best = min((k for k in ms if k != "float32"), key=ms.get)
            rows.append({"batch": batch, "shape": name, "float32": ms["float32"],
                         "int8 xla": ms["int8 xla"], "int8 patches": ms["int8 patches"],
                         "best": best, "speedup": ms["float32"] / ms[best]})
            for lowering in quant.INT_LOWERINGS:
                figures.append({"metric": "int8_conv_speedup",
                                "value": round(ms["float32"] / ms[f"int8 {lowering}"], 4),
                                "unit": "ratio", "model": "cifar_resnet_conv", "batch": batch,
                                "shape": name, "lowering": lowering,
                                "float32_ms": round(ms["float32"], 4),
                                "int8_ms": round(ms[f"int8 {lowering}"], 4)})
    table = report.format_table(rows, [("batch", "batch", "d"), ("shape", "conv", "s"),
                                       ("float32", "float32 ms", ".4f"),
                                       ("int8 xla", "int8 xla ms", ".4f"),
                                       ("int8 patches", "int8 patches ms", ".4f"),
                                       ("best", "best int8", "s"),
                                       ("speedup", "float32 / best", ".2f")])
    print(table)
    if FLAGS.record:
        common.append_results("int8_conv", figures, table,
                              notes=f"{rounds} interleaved rounds; medians; conv only "
                                    "(no quantise / dequantise)")


if __name__ == "__main__":
    app.run(main)
