"""Measure every sub-net of a slimmable ResNet on this device and save the latency table.

    python -m experiments.dynamic_dnn.latency_table --out=latency_table.json
    python -m experiments.dynamic_dnn.latency_table --out=t.json --depth=20 --batch_sizes=1,8,64 \
        --subnets=all            # every per-stage combination (4^3 = 64 for four widths)

Each sub-net is served the way the runtime manager serves it (`SubnetExecutor`: its own
executable on its own sliced weights), compiled before timing; points take turns in rounds
(`adaptive_jax.latency.measure_table`), and each entry keeps the median, p90, min and the spread
(coefficient of variation). The JSON records the device, host CPU and versions: loading it
elsewhere warns (`LatencyTableWarning`). Latency does not depend on the weights' values, so the
net is initialised, not trained; accuracy comes from a training run's report.
Pin a core (`taskset -c 0`) for stable figures.
"""

from __future__ import annotations

import itertools
import time

import jax
from absl import app, flags
from flax import nnx

from adaptive_jax import cost, latency, report
from adaptive_jax.execution import SubnetExecutor
from adaptive_jax.models.slimmable import SlimmableResNet, SlimmableSpec, WidthSubnet, extract_subnet

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Where to write the latency table (JSON).")
flags.DEFINE_integer("depth", 20, "CIFAR ResNet depth (6n+2).")
flags.DEFINE_list("widths", ["0.25", "0.5", "0.75", "1.0"], "The width menu.")
flags.DEFINE_enum("subnets", "uniform", ["uniform", "all"],
                  "uniform: one width for every stage; all: every per-stage combination.")
flags.DEFINE_list("batch_sizes", ["1", "8", "64"], "Batch sizes to measure.")
flags.DEFINE_integer("repeats", 30, "Timed calls per sub-net and batch size.")
flags.mark_flags_as_required(["out"])


def subnet_menu(widths: tuple[float, ...], kind: str) -> list[WidthSubnet]:
    if kind == "uniform":
        return [WidthSubnet.of(w) for w in widths]
    return [WidthSubnet.of(c) for c in itertools.product(widths, repeat=3)]


def build_table(depth: int, widths: tuple[float, ...], kind: str, batch_sizes: tuple[int, ...],
                repeats: int = 30):
    """(table, rows): the latency table and one row per sub-net and batch size for printing."""
    spec = SlimmableSpec(depth, widths=widths)
    model = SlimmableResNet(spec, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    model.eval()
    subnets = subnet_menu(widths, kind)
    executor = SubnetExecutor(model, max_executables=len(subnets) * len(batch_sizes))
    table = latency.subnet_latency_table(executor, subnets, batch_sizes, repeats=repeats)
    full = WidthSubnet.of(1.0).name
    macs = {s.name: cost.model_cost(extract_subnet(model, s)).macs for s in subnets}
    rows = []
    for s in subnets:
        for b in batch_sizes:
            stats = table.entries[s.name][b]
            rows.append({"subnet": s.name, "batch": b, "macs_ratio": macs[s.name] / macs[full],
                         "median_ms": stats.median_ms, "p90_ms": stats.p90_ms, "cv": stats.cv,
                         "latency_ratio": stats.median_ms / table.median_ms(full, b)
                         if full in table.entries else None})
    return table, rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    widths = tuple(float(w) for w in FLAGS.widths)
    batch_sizes = tuple(int(b) for b in FLAGS.batch_sizes)
    start = time.perf_counter()
    table, rows = build_table(FLAGS.depth, widths, FLAGS.subnets, batch_sizes, FLAGS.repeats)
    table.save(FLAGS.out)
    print(report.format_table(rows, [
        ("subnet", "sub-net", "s"), ("batch", "batch", "d"), ("macs_ratio", "MACs ratio", ".3f"),
        ("median_ms", "median ms", ".3f"), ("p90_ms", "p90 ms", ".3f"), ("cv", "cv", ".2f"),
        ("latency_ratio", "latency ratio", ".3f")]))
    print(f"slimmable ResNet-{FLAGS.depth} on {table.signature['device']} "
          f"({table.signature['host_cpu']}), {time.perf_counter() - start:.0f} s; "
          f"saved {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
