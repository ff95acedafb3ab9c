"""Training throughput against PyTorch, per model, and where the time goes per conv shape.

    taskset -c 0 python -m benchmarks.train_throughput            # one core pinned
    python -m benchmarks.train_throughput --depths=20              # all visible cores

Part 1: img/s of adaptive_jax's train step (as shipped, and with XLA's own conv gradients: the
before) and of PyTorch eager (NCHW and channels-last) on the same ResNets, variants interleaved
in rounds; medians and [min, max].
Part 2: for every 3x3 / 1x1 conv shape the CIFAR ResNets use, the forward, input-gradient and
weight-gradient time of JAX (XLA's weight gradient and adaptive_jax's) and of PyTorch, side by
side (medians), at the training batch size.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from absl import app, flags

from adaptive_jax import report
from adaptive_jax.nn import conv2d
from benchmarks import common
from benchmarks.runners import train_throughput

FLAGS = flags.FLAGS
flags.DEFINE_list("depths", ["20", "32", "110"], "ResNet depths for part 1.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("steps_per_round", 2, "Timed steps per variant per round.")
flags.DEFINE_bool("shapes", True, "Run part 2 (per conv shape).")

# (spatial size of the input, in channels, out channels, kernel, stride) of the CIFAR ResNets.
CONV_SHAPES = [(32, 3, 16, 3, 1), (32, 16, 16, 3, 1), (32, 16, 32, 3, 2), (16, 32, 32, 3, 1),
               (32, 16, 32, 1, 2), (16, 32, 64, 3, 2), (8, 64, 64, 3, 1), (16, 32, 64, 1, 2)]


def _median_ms(fn, rounds: int = 5) -> float:
    fn()  # warm-up
    return common.median_call_ms(fn, rounds)


def jax_conv_times(batch: int, hw: int, cin: int, cout: int, k: int, stride: int) -> dict:
    pad = k // 2
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, hw, hw, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout)) * 0.1

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def ours(x, w):
        return conv2d(x, w, (stride, stride), ((pad, pad), (pad, pad)))

    dy = jnp.ones_like(conv(x, w))
    fwd = jax.jit(conv)
    igrad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    wgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    wgrad_ours = jax.jit(lambda x, w, dy: jax.vjp(lambda w: ours(x, w), w)[1](dy)[0])
    return {"forward": _median_ms(lambda: jax.block_until_ready(fwd(x, w))),
            "input_grad": _median_ms(lambda: jax.block_until_ready(igrad(x, w, dy))),
            "weight_grad_xla": _median_ms(lambda: jax.block_until_ready(wgrad(x, w, dy))),
            "weight_grad": _median_ms(lambda: jax.block_until_ready(wgrad_ours(x, w, dy)))}


def torch_conv_times(batch: int, hw: int, cin: int, cout: int, k: int, stride: int) -> dict:
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    pad = k // 2
    x = torch.randn(batch, cin, hw, hw)
    w = torch.randn(cout, cin, k, k) * 0.1
    dy = torch.ones_like(torch.nn.functional.conv2d(x, w, stride=stride, padding=pad))
    grad = torch.nn.grad
    return {
        "forward": _median_ms(lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)),
        "input_grad": _median_ms(lambda: grad.conv2d_input(x.shape, w, dy, stride=stride, padding=pad)),
        "weight_grad": _median_ms(lambda: grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=pad)),
    }


def main(argv):
    del argv
    threads = len(os.sched_getaffinity(0))
    rows, figures = [], []
    for depth in (int(d) for d in FLAGS.depths):
        stats = train_throughput(depth, FLAGS.batch_size, FLAGS.rounds, FLAGS.steps_per_round)
        medians = {name: s[0] for name, s in stats.items()}
        for name, (median, low, high) in stats.items():
            rows.append({"what": f"train img/s {name}", "model": f"resnet{depth}",
                         "value": f"{median:.1f} [{low:.1f}, {high:.1f}]"})
        ratio = medians["adaptive_jax"] / max(medians["torch_eager"], medians["torch_channels_last"])
        speedup = medians["adaptive_jax"] / medians["adaptive_jax_xla_conv"]
        rows.append({"what": "train_throughput_vs_torch", "model": f"resnet{depth}", "value": f"{ratio:.3f}"})
        rows.append({"what": "speedup over XLA conv gradients", "model": f"resnet{depth}",
                     "value": f"{speedup:.3f}"})
        common_fields = {"model": f"resnet{depth}", "threads": threads, "batch_size": FLAGS.batch_size}
        figures.append({"metric": "train_throughput_vs_torch", "value": round(ratio, 3), "unit": "ratio",
                        **common_fields, **{f"{k}_img_s": round(v, 1) for k, v in medians.items()}})
        figures.append({"metric": "train_speedup_vs_xla_conv_grad", "value": round(speedup, 3),
                        "unit": "ratio", **common_fields})
    table = report.format_table(rows, [("what", "measure", "s"), ("model", "model", "s"),
                                       ("value", "median [min, max]", "s")])
    print(table)
    if FLAGS.shapes:
        shape_rows = []
        for shape in CONV_SHAPES:
            hw, cin, cout, k, stride = shape
            ours = jax_conv_times(FLAGS.batch_size, *shape)
            peer = torch_conv_times(FLAGS.batch_size, *shape)
            for part in ("forward", "input_grad", "weight_grad_xla", "weight_grad"):
                peer_ms = peer[part.removesuffix("_xla")]
                shape_rows.append({"shape": f"{hw}x{hw} {cin}->{cout} k{k} s{stride}", "part": part,
                                   "jax_ms": ours[part], "torch_ms": peer_ms,
                                   "ratio": ours[part] / peer_ms})
                figures.append({"metric": f"conv_{part}_ms", "value": round(ours[part], 2), "unit": "ms",
                                "model": f"conv{hw}x{hw}_{cin}to{cout}_k{k}_s{stride}",
                                "torch_ms": round(peer_ms, 2), "threads": threads,
                                "batch_size": FLAGS.batch_size})
        shape_table = report.format_table(shape_rows, [
            ("shape", "conv (NHWC in)", "s"), ("part", "part", "s"), ("jax_ms", "JAX ms", ".1f"),
            ("torch_ms", "torch ms", ".1f"), ("ratio", "JAX / torch", ".2f")])
        print(shape_table)
        table += "\n\n" + shape_table
    common.append_results("train_throughput", figures, table,
                          notes=f"batch {FLAGS.batch_size}, {threads} thread(s), rounds {FLAGS.rounds}")


if __name__ == "__main__":
    app.run(main)
