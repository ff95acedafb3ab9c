"""Train a slimmable ResNet (one set of weights, nested widths), then print each width's top-1,
MACs and measured latency (each width served from its own executable, `SubnetExecutor`), and
save the latency table.

    python -m experiments.dynamic_dnn.main --workdir=/tmp/slim \
        --config=experiments/dynamic_dnn/configs/default.py:demo --config.slim.mode=single_path

Writes WORKDIR/report.json and WORKDIR/latency_table.json (`adaptive_jax.latency.LatencyTable`:
loading it on another device warns). Re-running with the same --workdir resumes.
"""

import json
import os

from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from adaptive_jax import cost, latency, report
from adaptive_jax.execution import SubnetExecutor
from adaptive_jax.models.slimmable import WidthSubnet, extract_subnet
from adaptive_jax.train import slimmable, train_and_evaluate
from experiments import common

FLAGS = flags.FLAGS
if __name__ == "__main__":
    common.exit_on_bad_overrides(slimmable.default_config())
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report and latency table.")
flags.DEFINE_list("latency_batch_sizes", ["1"], "Batch sizes of the latency table.")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def run(config, workdir: str, latency_batch_sizes=(1,)) -> list[dict]:
    result = train_and_evaluate(config, workdir, task=slimmable.task())
    state, graphdef = result.pop("state"), result.pop("graphdef")
    widths = [config.slim.width] if config.slim.mode == "alone" else list(config.slim.widths)
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    model.eval()
    # served as the runtime manager serves them: each width its own executable on sliced weights
    executor = SubnetExecutor(model, max_executables=len(widths) * len(latency_batch_sizes))
    table = latency.subnet_latency_table(executor, widths, latency_batch_sizes)
    table.save(os.path.join(workdir, "latency_table.json"))
    rows = []
    for w in widths:
        name = WidthSubnet.of(w).name
        row = {"width": f"{w:g}", "test_accuracy": result[f"test_accuracy_w{w:g}"],
               "macs": cost.model_cost(extract_subnet(model, w)).macs}
        for b in latency_batch_sizes:
            row[f"latency_b{b}_ms"] = table.median_ms(name, b)
        rows.append(row)
    full = rows[-1]
    for row in rows:
        row["macs_ratio"] = row["macs"] / full["macs"]
        row["latency_ratio"] = row[f"latency_b{latency_batch_sizes[0]}_ms"] / full[f"latency_b{latency_batch_sizes[0]}_ms"]
    columns = [("width", "width", "s"), ("test_accuracy", "top-1", ".4f"), ("macs", "MACs", ".3e"),
               ("macs_ratio", "MACs ratio", ".3f")]
    columns += [(f"latency_b{b}_ms", f"b{b} ms", ".3f") for b in latency_batch_sizes]
    columns += [("latency_ratio", "latency ratio", ".3f")]
    print(f"slimmable ResNet-{config.model.depth}, mode {config.slim.mode}, "
          f"{result.get('train_time_s', float('nan')):.0f} s of training")
    print(report.format_table(rows, columns), flush=True)
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump({"model": f"slimmable_resnet{config.model.depth}", "mode": config.slim.mode,
                   "train_time_s": result.get("train_time_s"), "widths": rows}, f, indent=2)
    return rows


def main(argv):
    common.start(argv, "experiments.dynamic_dnn.main")
    run(FLAGS.config, FLAGS.workdir, tuple(int(b) for b in FLAGS.latency_batch_sizes))


if __name__ == "__main__":
    app.run(main)
