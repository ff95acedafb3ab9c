"""What experiments print and draw: a measured accuracy / compute / latency table and curves."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from adaptive_jax import cost, execution, latency


def measure_model(graphdef, state, image_shape: tuple[int, int, int],
                  batch_sizes=(1, 128), repeats: int = 20) -> dict:
    """MACs, parameters and measured inference latency of a trained model, per batch size."""
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    model_cost = cost.model_cost(model, (1,) + tuple(image_shape))
    predict = execution.make_predict_fn(graphdef)
    row = {"macs": model_cost.macs, "flops": model_cost.flops, "params": model_cost.params,
           "device": jax.devices()[0].device_kind}
    for b in batch_sizes:
        images = np.zeros((b,) + tuple(image_shape), np.float32)
        stats = latency.measure_latency(predict, state.params, state.batch_stats, images,
                                        repeats=repeats if b == 1 else max(3, repeats // 4))
        row[f"latency_b{b}_ms"] = stats.median_ms
        row[f"latency_b{b}_cv"] = stats.cv
    return row


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table. columns: (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([format(row[k], f) if row.get(k) is not None else "-" for k, _, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


CLASSIFIER_COLUMNS = [
    ("model", "model", "s"), ("test_accuracy", "top-1", ".4f"), ("macs", "MACs", ".3e"),
    ("params", "params", ",d"), ("latency_b1_ms", "b1 ms", ".2f"),
    ("latency_b128_ms", "b128 ms", ".2f"), ("train_time_s", "train s", ".0f"),
]


def plot_curves(metrics_path: str, out_path: str, title: str = "") -> str:
    """Training loss and test accuracy against step, from a metrics.jsonl; writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    test = [(r["step"], r["test_accuracy"]) for r in records if "test_accuracy" in r]
    fig, ax_loss = plt.subplots(figsize=(6, 3.5))
    if train:
        ax_loss.plot(*zip(*train), color="tab:blue", lw=1, label="train loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss", color="tab:blue")
    ax_acc = ax_loss.twinx()
    if test:
        ax_acc.plot(*zip(*test), "o-", color="tab:red", label="test accuracy")
    ax_acc.set_ylabel("test accuracy", color="tab:red")
    ax_loss.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
