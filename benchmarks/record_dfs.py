"""Records a finished DFS run (experiments/dfs: WORKDIR/report.json) as benchmark figures.

    python -m benchmarks.record_dfs --workdir=runs/dfs \
        --run_command="python -m experiments.dfs.main --workdir=runs/dfs --config=..."

Per DFS target: `dfs_test_accuracy`, `dfs_computation_pct`, `dfs_bitops` (per image), and
against the baselines at that target `dfs_minus_skip_only_accuracy` (skip-only trained alike at
the same target) and `dfs_minus_static_accuracy` (the greedy static allocation at the point's
BitOPs, fine-tuned alike unless the run set dfs.static_finetune=False: `static_finetuned`), and
with dfs.static_mixture `dfs_minus_static_mixture_accuracy` (that allocation and the greedy step
above it, mixed at exactly the point's BitOPs); with dfs.static_cascade, per target, the cascade
of the cheapest fine-tuned static allocation into the search's uniform start plan
(`dfs_static_cascade_test_accuracy`, `dfs_static_cascade_bitops`,
`dfs_minus_static_cascade_accuracy`, and, where two fine-tuned static plans bracket its measured
BitOPs, `dfs_static_cascade_minus_static_mixture_accuracy`); the table goes to RESULTS.md.

`--static_from=OTHER_WORKDIR`: a run without static baselines of its own, compared with another
run's fine-tuned static plans (both from the same warm-up: say so in `--note`), mixed at each
point's BitOPs where two of them bracket it (`dfs_minus_static_mixture_accuracy`, with
`static_from` in the figure).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from adaptive_jax import report
from adaptive_jax.train import search
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The DFS run's workdir (holding report.json).")
flags.DEFINE_string("run_command", None, "The command that trained the run.")
flags.DEFINE_string("note", "", "Anything a reader must know.")
flags.DEFINE_string("static_from", "", "Another run's workdir whose fine-tuned static plans this "
                    "run's DFS points are compared with (same warm-up), where its own has none.")
flags.mark_flags_as_required(["workdir", "run_command"])

COLUMNS = [("point", "point", "s"), ("test_accuracy", "top-1", ".4f"),
           ("test_computation_pct", "comp %", ".1f"), ("test_bitops", "BitOPs/img", ".3e"),
           ("test_macs", "MACs/img", ".3e"), ("skip_frac", "skip", ".2f"),
           ("bits8_frac", "8 bit", ".2f"), ("float_frac", "float", ".2f"),
           ("distinct_plans", "plans", "d"), ("bitops_cv", "BitOPs CV", ".3f"),
           ("dfs_minus_skip_only_accuracy", "- skip-only", "+.4f"),
           ("dfs_minus_static_accuracy", "- static", "+.4f"),
           ("dfs_minus_static_mixture_accuracy", "- static mix", "+.4f"),
           ("dfs_minus_static_cascade_accuracy", "- cascade", "+.4f"),
           ("cascade_minus_static_mixture_accuracy", "cascade - static mix", "+.4f"),
           ("untuned_test_accuracy", "static before fine-tuning", ".4f")]


def main(argv):
    del argv
    with open(os.path.join(FLAGS.workdir, "report.json")) as f:
        run = json.load(f)
    model = run["model"]
    static = {p["target"]: p for p in run["points"] if p["menu"] == "static"}
    mixture = {p["target"]: p for p in run["points"] if p["menu"] == "static_mix"}
    cascades = {p["target"]: p for p in run["points"] if p["menu"] == "static_cascade"}
    if FLAGS.static_from:
        mixture.update(static_mixtures_from(FLAGS.static_from, run["points"], set(mixture)))
    figures, rows = [], []
    for point in run["points"]:
        row = dict(point)
        if point["menu"] == "dfs" and point["target"] in static:
            row["dfs_minus_static_accuracy"] = static[point["target"]]["dfs_minus_static_accuracy"]
        if point["menu"] == "dfs" and point["target"] in mixture:
            row["dfs_minus_static_mixture_accuracy"] = \
                mixture[point["target"]]["dfs_minus_static_mixture_accuracy"]
        if point["menu"] == "dfs" and point["target"] in cascades:
            row["dfs_minus_static_cascade_accuracy"] = \
                cascades[point["target"]]["dfs_minus_static_cascade_accuracy"]
        rows.append(row)
        if point["menu"] != "dfs":
            continue
        common_keys = {"unit": "", "model": model, "target_pct": point["target"],
                       "gate": run.get("gate"), "init_from": run.get("init_from"),
                       "estimator": run.get("estimator", "one_path"),
                       # dfs.gate_start (reports from before it was written: inferred)
                       "gate_start": run.get("gate_start") or (
                           "static_plan" if "gate_start_plan" in point else "warmup"),
                       "static_finetuned": "untuned_test_accuracy" in static.get(point["target"], {}),
                       "run_command": FLAGS.run_command}
        figures.append({**common_keys, "metric": "dfs_test_accuracy", "unit": "fraction",
                        "value": round(point["test_accuracy"], 4)})
        figures.append({**common_keys, "metric": "dfs_computation_pct", "unit": "percent",
                        "value": round(point["test_computation_pct"], 2)})
        figures.append({**common_keys, "metric": "dfs_bitops", "unit": "BitOPs/image",
                        "value": round(point["test_bitops"])})
        if point.get("distinct_plans") is not None:  # (runs before the plan statistics lack it)
            figures.append({**common_keys, "metric": "dfs_distinct_plans", "unit": "plans",
                            "value": point["distinct_plans"]})
            figures.append({**common_keys, "metric": "dfs_bitops_cv", "unit": "ratio",
                            "value": round(point["bitops_cv"], 4)})
        for key in ("dfs_minus_skip_only_accuracy", "dfs_minus_static_accuracy",
                    "dfs_minus_static_mixture_accuracy", "dfs_minus_static_cascade_accuracy"):
            if row.get(key) is not None:
                source = mixture.get(point["target"], {}).get("static_from")
                where = {"static_from": source} if source and key.endswith("mixture_accuracy") else {}
                figures.append({**common_keys, "metric": key, "unit": "fraction",
                                "value": round(row[key], 4), **where})
        chain = cascades.get(point["target"])
        if chain is not None:  # the static allocation escalating its least sure images
            cascade_keys = {**common_keys, "static_plans": chain["static_plans"],
                            "escalated_share": round(chain["escalated_share"], 4)}
            figures.append({**cascade_keys, "metric": "dfs_static_cascade_test_accuracy",
                            "unit": "fraction", "value": round(chain["test_accuracy"], 4)})
            figures.append({**cascade_keys, "metric": "dfs_static_cascade_bitops",
                            "unit": "BitOPs/image", "value": round(chain["test_bitops"])})
            if "cascade_minus_static_mixture_accuracy" in chain:
                figures.append({**cascade_keys, "unit": "fraction",
                                "metric": "dfs_static_cascade_minus_static_mixture_accuracy",
                                "value": round(chain["cascade_minus_static_mixture_accuracy"], 4)})
    table = report.format_table(rows, COLUMNS)
    print(table)
    common.append_results("dfs_curve", figures, table, notes=FLAGS.note)


def static_mixtures_from(workdir: str, points: list[dict], targets_done: set) -> dict:
    """{target: mixture row} for this run's DFS points (those not in `targets_done`) against the
    fine-tuned static plans of the run in `workdir`, where two of them bracket the point's
    BitOPs (`search.bracketing_mixture`)."""
    with open(os.path.join(workdir, "report.json")) as f:
        statics = [p for p in json.load(f)["points"] if p["menu"] in ("static", "static_above")]
    if not statics:
        raise ValueError(f"{workdir}/report.json has no static plans to compare with")
    out = {}
    for point in points:
        if point["menu"] != "dfs" or point["target"] in targets_done:
            continue
        mixed = search.bracketing_mixture(statics, point["test_bitops"], "test_bitops",
                                          ("test_accuracy",))
        if mixed is not None:
            out[point["target"]] = {
                "static_from": workdir, "test_accuracy": mixed["test_accuracy"],
                "static_mixture_plans": [mixed["below"]["static_plan"], mixed["above"]["static_plan"]],
                "dfs_minus_static_mixture_accuracy": point["test_accuracy"] - mixed["test_accuracy"]}
    return out


if __name__ == "__main__":
    app.run(main)
