"""Records a finished OFAS run (experiments/ofas: WORKDIR/report.json) as benchmark figures.

    python -m benchmarks.record_ofas --workdir=runs/ofas \
        --run_command="python -m experiments.ofas.main --workdir=runs/ofas --config=...:demo" \
        --baseline_accuracy=0.5027 --baseline_macs=40813184 --baseline="resnet20 demo recipe"

Appends one `ofas_test_accuracy` and one `ofas_mean_block_macs_frac` record per point of the
curve (stage A and each penalty) to results.jsonl, and the table to RESULTS.md, with the static
baseline it is compared with: the best point at no more than the baseline's MACs against the
baseline's accuracy. Points measured over the test set also give `ofas_distinct_plans` and
`ofas_macs_cv`; a run with `rl.static_baseline` gives `ofas_minus_static_subnet_accuracy` per
penalty (OFAS top-1 minus the greedy static sub-net's under the same MACs, fine-tuned alike), and
with `rl.static_mixture` `ofas_minus_static_mixture_accuracy` (minus the two greedy sub-nets that
bracket the point's MACs, mixed at exactly those MACs) and `ofas_static_router_oracle_accuracy`
(the two sub-nets routed per image knowing the labels at the mixture's share, with where OFAS
spends its blocks: `ofas.routing_statistics`); with `rl.static_cascade`, the cascade's
comparisons (`ofas_cascade_minus_static_mixture_accuracy`, `..._random_mixture_accuracy`,
`ofas_minus_cascade_accuracy`).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from adaptive_jax import report
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The OFAS run's workdir (holding report.json).")
flags.DEFINE_string("run_command", None, "The command that trained the run.")
flags.DEFINE_float("baseline_accuracy", None, "Test accuracy of the static baseline.")
flags.DEFINE_integer("baseline_macs", None, "MACs per image of the static baseline.")
flags.DEFINE_string("baseline", "", "The static baseline, in words.")
flags.DEFINE_string("note", "", "Anything a reader must know.")
flags.mark_flags_as_required(["workdir", "run_command"])


# `ofas.routing_statistics`, kept with the oracle figure
ROUTING_KEYS = ("static_above_only_right", "static_below_only_right",
                "ofas_block_frac_static_wrong", "ofas_block_frac_static_right",
                "ofas_only_right", "static_only_right")


# a cascade row's comparisons (experiments/ofas/main.py, static_cascade)
CASCADE_METRICS = {"cascade_minus_static_mixture_accuracy": "ofas_cascade_minus_static_mixture_accuracy",
                   "cascade_minus_random_mixture_accuracy": "ofas_cascade_minus_random_mixture_accuracy",
                   "ofas_minus_cascade_accuracy": "ofas_minus_cascade_accuracy"}


def is_static(point: dict) -> bool:
    """A static sub-net or mixture row (`static`: below / above / mixture; before the key was
    written, the one static row carried `ofas_minus_static_accuracy`)."""
    return "static" in point or "ofas_minus_static_accuracy" in point


def main(argv):
    del argv
    with open(os.path.join(FLAGS.workdir, "report.json")) as f:
        run = json.load(f)
    figures, rows = [], []
    for point in run["points"]:
        if is_static(point):  # a static sub-net or mixture: recorded below
            rows.append(point)
            continue
        context = {"model": run["model"], "point": point["point"], "penalty": point.get("penalty"),
                   "macs": int(point["test_macs"]), "latency_b1_ms": round(point["latency_b1_ms"], 3),
                   "full_latency_b1_ms": round(point["full_latency_b1_ms"], 3),
                   "run_command": FLAGS.run_command}
        figures.append({"metric": "ofas_test_accuracy", "value": round(point["test_accuracy"], 4),
                        "unit": "fraction", **context})
        figures.append({"metric": "ofas_mean_block_macs_frac",
                        "value": round(point["test_block_macs_frac"], 4), "unit": "fraction",
                        **context})
        if "macs_cv" in point:
            figures.append({"metric": "ofas_distinct_plans", "value": point["distinct_plans"],
                            "unit": "plans", **context})
            figures.append({"metric": "ofas_macs_cv", "value": round(point["macs_cv"], 4),
                            "unit": "ratio", **context})
        rows.append(point)
    for mixture in (p for p in run["points"] if "ofas_minus_static_mixture_accuracy" in p):
        figures.append({"metric": "ofas_minus_static_mixture_accuracy",
                        "value": round(mixture["ofas_minus_static_mixture_accuracy"], 4),
                        "unit": "fraction", "model": run["model"], "point": mixture["point"],
                        "static_accuracy": round(mixture["test_accuracy"], 4),
                        "macs": int(mixture["test_macs"]),
                        "share_above": round(mixture["share_above"], 4),
                        "static_plans": mixture["static_plans"], "run_command": FLAGS.run_command})
        if "oracle_mixture_accuracy" in mixture:  # what routing between the two could buy
            figures.append({"metric": "ofas_static_router_oracle_accuracy",
                            "value": round(mixture["oracle_mixture_accuracy"], 4),
                            "unit": "fraction", "model": run["model"], "point": mixture["point"],
                            "static_accuracy": round(mixture["test_accuracy"], 4),
                            **{k: round(mixture[k], 4) for k in ROUTING_KEYS},
                            "run_command": FLAGS.run_command})
    for cascade in (p for p in run["points"] if p.get("static") == "cascade"):
        context = {"model": run["model"], "point": cascade["point"],
                   "cascade_accuracy": round(cascade["test_accuracy"], 4),
                   "macs": int(cascade["test_macs"]),
                   "escalated_share": round(cascade["escalated_share"], 4),
                   "latency_b1_ms": round(cascade["latency_b1_ms"], 3),
                   "full_latency_b1_ms": round(cascade["full_latency_b1_ms"], 3),
                   **{k: round(cascade[k], 3) for k in ("throughput_batch", "batch_ms", "full_batch_ms")
                      if k in cascade},
                   "run_command": FLAGS.run_command}
        for key, metric in CASCADE_METRICS.items():
            if key in cascade:  # (against the static mixture: when it brackets the MACs)
                figures.append({"metric": metric, "value": round(cascade[key], 4),
                                "unit": "fraction", **context})
    for static in (p for p in run["points"] if "ofas_minus_static_accuracy" in p):
        figures.append({"metric": "ofas_minus_static_subnet_accuracy",
                        "value": round(static["ofas_minus_static_accuracy"], 4), "unit": "fraction",
                        "model": run["model"], "point": static["point"],
                        "static_accuracy": round(static["test_accuracy"], 4),
                        "static_macs": int(static["test_macs"]), "static_plan": static["static_plan"],
                        "run_command": FLAGS.run_command})
    verdict = ""
    if FLAGS.baseline_accuracy is not None and FLAGS.baseline_macs is not None:
        within = [p for p in run["points"] if p["test_macs"] <= FLAGS.baseline_macs
                  and not is_static(p)]  # OFAS points, not static sub-nets
        best = max(within, key=lambda p: p["test_accuracy"]) if within else None
        verdict = (f"static baseline ({FLAGS.baseline}): {FLAGS.baseline_accuracy:.4f} at "
                   f"{FLAGS.baseline_macs:.3e} MACs; best OFAS point within those MACs: "
                   + (f"{best['point']} {best['test_accuracy']:.4f} at {best['test_macs']:.3e}"
                      if best else "none"))
        figures.append({"metric": "ofas_minus_baseline_accuracy_at_baseline_macs",
                        "value": round(best["test_accuracy"] - FLAGS.baseline_accuracy, 4) if best else None,
                        "unit": "fraction", "model": run["model"], "baseline": FLAGS.baseline,
                        "run_command": FLAGS.run_command})
        for cascade in (p for p in run["points"] if p.get("static") == "cascade"
                        and p["test_macs"] <= FLAGS.baseline_macs):
            verdict += (f"; {cascade['point']} {cascade['test_accuracy']:.4f} at "
                        f"{cascade['test_macs']:.3e}")
            figures.append({"metric": "ofas_cascade_minus_baseline_accuracy_at_baseline_macs",
                            "value": round(cascade["test_accuracy"] - FLAGS.baseline_accuracy, 4),
                            "unit": "fraction", "model": run["model"], "point": cascade["point"],
                            "macs": int(cascade["test_macs"]), "baseline": FLAGS.baseline,
                            "run_command": FLAGS.run_command})
    table = report.format_table(rows, [
        ("point", "point", "s"), ("test_accuracy", "top-1", ".4f"),
        ("test_block_macs_frac", "block MACs", ".3f"), ("test_macs", "MACs/img", ".3e"),
        ("latency_b1_ms", "b1 ms", ".2f"), ("speedup_b1", "b1 speedup", ".2f"),
        ("distinct_plans", "plans", "d"), ("macs_cv", "MACs CV", ".3f")])
    print(table)
    if verdict:
        print(verdict)
    common.append_results("ofas_curve", figures, table + ("\n" + verdict if verdict else ""),
                          command=FLAGS.run_command, notes=FLAGS.note)


if __name__ == "__main__":
    app.run(main)
