"""Records finished slimmable runs (experiments/dynamic_dnn: WORKDIR/report.json) against the
same widths trained alone, with realized latency from a latency table, and plots them.

    python -m benchmarks.record_slimmable \
        --runs=multi_path=runs/slim_multi_path,single_path=runs/slim_single_path,sandwich=runs/slim_sandwich \
        --alone=0.25=runs/slim_alone_0.25,0.5=runs/slim_alone_0.5,0.75=runs/slim_alone_0.75,1.0=runs/slim_alone_1 \
        --latency_table=runs/latency_r20.json --run_command="..."

Per width: MACs ratio, top-1 of each training mode and of the width trained alone (metrics
`slim_test_accuracy`, `alone_test_accuracy`), and the measured latency ratio at each batch size
of the table (`experiments.dynamic_dnn.latency_table`: each width from its own executable).
Each run's wall-clock training time is recorded with it. Plot: top-1 against MACs and against
batch-1 latency.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from adaptive_jax import report
from adaptive_jax.latency import LatencyTable
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "mode=workdir of slimmable runs.")
flags.DEFINE_list("alone", [], "width=workdir of runs that trained one width alone.")
flags.DEFINE_string("latency_table", None, "A latency table of the uniform widths.")
flags.DEFINE_string("plot", "benchmarks/plots/slimmable_resnet20_demo.png", "Where to save the plot.")
flags.DEFINE_string("run_command", "", "How the runs were trained.")
flags.DEFINE_string("note", "", "Anything a reader must know.")
flags.mark_flags_as_required(["latency_table"])


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=workdir, got {item!r}")
        out[key] = path
    return out


def _report(workdir: str) -> dict:
    with open(os.path.join(workdir, "report.json")) as f:
        return json.load(f)


def main(argv):
    del argv
    runs = {mode: _report(path) for mode, path in _pairs(FLAGS.runs).items()}
    alone = {float(w): _report(path) for w, path in _pairs(FLAGS.alone).items()}
    table = LatencyTable.load(FLAGS.latency_table)
    batches = sorted(next(iter(table.entries.values())))
    widths = sorted({float(r["width"]) for run in runs.values() for r in run["widths"]})
    macs = {float(r["width"]): r["macs"] for run in runs.values() for r in run["widths"]}
    full = f"w{max(widths):g}"
    rows, figures = [], []
    for w in widths:
        row = {"width": f"{w:g}", "macs_ratio": macs[w] / macs[max(widths)]}
        for mode, run in runs.items():
            acc = {float(r["width"]): r["test_accuracy"] for r in run["widths"]}[w]
            row[mode] = acc
            figures.append({"metric": "slim_test_accuracy", "value": round(acc, 4), "unit": "fraction",
                            "model": run["model"], "mode": mode, "width": f"{w:g}",
                            "train_time_s": round(run["train_time_s"], 1)})
        if w in alone:
            acc = alone[w]["widths"][0]["test_accuracy"]
            row["alone"] = acc
            figures.append({"metric": "alone_test_accuracy", "value": round(acc, 4), "unit": "fraction",
                            "model": alone[w]["model"], "width": f"{w:g}",
                            "train_time_s": round(alone[w]["train_time_s"], 1)})
        for b in batches:
            ratio = table.median_ms(f"w{w:g}", b) / table.median_ms(full, b)
            row[f"lat_b{b}"] = ratio
            figures.append({"metric": "realized_latency_ratio", "value": round(ratio, 3), "unit": "ratio",
                            "model": "slimmable_resnet20", "width": f"{w:g}", "batch": b,
                            "macs_ratio": round(row["macs_ratio"], 4),
                            "latency_ms": round(table.median_ms(f"w{w:g}", b), 3)})
        rows.append(row)
    columns = [("width", "width", "s"), ("macs_ratio", "MACs ratio", ".3f")]
    columns += [(m, m, ".4f") for m in runs] + [("alone", "alone", ".4f")]
    columns += [(f"lat_b{b}", f"latency ratio b{b}", ".3f") for b in batches]
    text = report.format_table(rows, columns)
    times = ", ".join(f"{m} {run['train_time_s']:.0f} s" for m, run in runs.items())
    times += "; alone " + ", ".join(f"{w:g}: {r['train_time_s']:.0f} s" for w, r in sorted(alone.items()))
    text += f"\ntraining wall-clock: {times}"
    print(text)
    plot(rows, runs, batches, table, full)
    common.append_results("slimmable_widths", figures, text, command=FLAGS.run_command or None,
                          notes=(FLAGS.note + f" Latency: {FLAGS.latency_table} "
                                 f"({table.signature.get('host_cpu')}, {table.created}).").strip())


def plot(rows, runs, batches, table, full) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    b1 = batches[0]
    for key, label in [(m, m) for m in runs] + [("alone", "alone")]:
        pts = [r for r in rows if key in r]
        axes[0].plot([r["macs_ratio"] for r in pts], [r[key] for r in pts], "o-", label=label)
        axes[1].plot([table.median_ms(f"w{r['width']}", b1) for r in pts], [r[key] for r in pts],
                     "o-", label=label)
    axes[0].set_xlabel("MACs / full width")
    axes[1].set_xlabel(f"measured latency, batch {b1} (ms)")
    axes[0].set_ylabel("CIFAR-10 top-1")
    axes[0].legend(fontsize=8)
    fig.suptitle("slimmable ResNet-20, widths 0.25 / 0.5 / 0.75 / 1.0")
    fig.tight_layout()
    os.makedirs(os.path.dirname(FLAGS.plot) or ".", exist_ok=True)
    fig.savefig(FLAGS.plot, dpi=120)
    print(f"plot: {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
