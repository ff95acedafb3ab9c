"""Does the runtime manager keep requests within a changing latency budget on a loaded machine?

    taskset -c 0 python -m benchmarks.runtime_manager            # 6,000 requests
    taskset -c 0 python -m benchmarks.runtime_manager --quick    # 1,500 requests (< 5 minutes)
    ... --slim_report=runs/slim/report.json     # rank the widths by their measured accuracy
    ... --points=block_plans                    # block plans of a ResNet instead of widths

Operating points (`--points`): the width sub-nets (0.25 / 0.5 / 0.75 / 1.0) of a slimmable ResNet,
each served from its own executable on its own sliced weights (`SubnetExecutor`), or static
block plans of one ResNet (25 / 50 / 75 / 100 % of the blocks, evenly spread; `StaticExecutor`);
all compiled during warm-up. Their latency table is measured first
(`adaptive_jax.latency.measure_table`). Latency does not depend on the weights' values, so the
nets are initialised, not trained; the manager ranks points by accuracy, from a training run's
report when given, else by size. Then a trace: the
budget changes every `segment` requests (a budget that admits each level with 15 % room, in a
fixed order), and in some segments a background thread loads the same core with matmuls (numpy
releases the GIL). Every request is timed; the manager records it and may switch.

Reports: the share of requests within the budget in force, the misses a switch could have
avoided (those served while a faster point existed; the others were already at the fastest
point, where a thread time-slicing the core stretches single requests past any budget set from
the median), switches, the decision + switch overhead (time spent in `record` and in picking the
next executable, per request), and compilations after warm-up. The manager only sees (name,
latency, accuracy, key); it runs with the p98 of a 50-request slowdown window (`--quantile`,
`--window`). Appends to RESULTS.md / results.jsonl; the LAST line is one JSON object with
`within_budget_frac`, `switch_overhead_us`, `compiles_after_warmup`.
"""

from __future__ import annotations

import json
import threading
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from adaptive_jax import report
from adaptive_jax.execution import StaticExecutor, SubnetExecutor
from adaptive_jax.latency import measure_table
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.models.slimmable import SlimmableResNet, SlimmableSpec, WidthSubnet
from adaptive_jax.plans import BlockLayout, StaticBlockPlan
from adaptive_jax.runtime import OperatingPoint, RuntimeManager
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 56, "ResNet depth of the sub-nets.")
flags.DEFINE_integer("requests", 6000, "Requests in the trace.")
flags.DEFINE_integer("segment", 250, "Requests between budget / load changes.")
flags.DEFINE_integer("window", 50, "Manager: slowdown window (and warm-up) in requests.")
flags.DEFINE_float("hysteresis", 0.15, "Manager: step up only under (1 - h) x budget.")
flags.DEFINE_float("room", 0.15, "Budget = a level's table latency x (1 + room) x load factor.")
flags.DEFINE_float("quantile", 0.98, "Manager: compare this quantile of the window (0: its mean).")
flags.DEFINE_bool("quick", False, "1,500 requests.")
flags.DEFINE_enum("points", "widths", ["widths", "block_plans"],
                  "Operating points: a slimmable ResNet's width sub-nets, or block plans of a ResNet.")
flags.DEFINE_integer("batch", 1, "Images per request.")
flags.DEFINE_string("trace_out", None, "Write every request (budget, level, latency, slowdown) "
                    "to this CSV file.")
flags.DEFINE_string("slim_report", None,
                    "A dynamic_dnn run's report.json: the widths' measured accuracies rank the "
                    "points (without it, wider ranks higher).")

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def spread_plan(num_blocks: int, fraction: float) -> np.ndarray:
    keep = np.zeros(num_blocks, bool)
    keep[np.round(np.linspace(0, num_blocks - 1, max(1, round(fraction * num_blocks)))).astype(int)] = True
    return keep


class BackgroundLoad:
    """A thread multiplying matrices while `on` is set: it shares the pinned core with serving."""

    def __init__(self):
        self.on = threading.Event()
        self.stop = threading.Event()
        a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
        def work():
            while not self.stop.is_set():
                if self.on.wait(0.01):
                    a @ a
        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()


def block_plan_points(depth: int, image):
    """Static sub-nets of one ResNet (25 / 50 / 75 / 100 % of the blocks, evenly spread)."""
    model = CifarResNet(ResNetSpec(depth), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    layout = BlockLayout.of(model.spec)
    plans = {f"{f:.0%} blocks": StaticBlockPlan.from_array(spread_plan(layout.num_blocks, f), layout)
             for f in FRACTIONS}
    executor = StaticExecutor(graphdef, params, stats, max_executables=len(plans))
    executor.warm_up(plans.values(), batch_sizes=(image.shape[0],))
    # accuracy proxy: more blocks, more accurate (untrained weights; the ranking is what matters)
    return executor, [(name, plan, f) for (name, plan), f in zip(plans.items(), FRACTIONS)]


def width_points(depth: int, image, report_path: str | None):
    """Width sub-nets of a slimmable ResNet, each from its own executable (`SubnetExecutor`)."""
    model = SlimmableResNet(SlimmableSpec(depth), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    model.eval()
    widths = model.spec.widths
    accuracy = {w: w for w in widths}  # proxy without a report: wider, more accurate
    if report_path:
        with open(report_path) as f:
            accuracy = {float(r["width"]): r["test_accuracy"] for r in json.load(f)["widths"]}
    executor = SubnetExecutor(model, max_executables=len(widths))
    executor.warm_up(widths, batch_sizes=(image.shape[0],))
    return executor, [(WidthSubnet.of(w).name, WidthSubnet.of(w), accuracy[w]) for w in widths]


def replay(manager, log, executor, images_shape, segment) -> tuple[list[float], list[float]]:
    """The decision cost without the injected load: the trace's latencies fed again, in order,
    to a fresh manager (which makes the same decisions: it is deterministic), each `record` timed
    with the executable lookup that follows it. Returns (all, switching) in microseconds."""
    every, switching = [], []
    for i, _, budget, _, ms, _, _ in log:
        if i % segment == 0:
            manager.set_constraints(budget)
        t = time.perf_counter()
        switch = manager.record(ms)
        executor.executable(manager.current.key, images_shape)
        spent = (time.perf_counter() - t) * 1e6
        every.append(spent)
        if switch is not None:
            switching.append(spent)
    return every, switching


def main(argv):
    del argv
    requests = 1500 if FLAGS.quick else FLAGS.requests
    image = np.zeros((FLAGS.batch, 32, 32, 3), np.float32)
    t0 = time.perf_counter()
    if FLAGS.points == "widths":
        executor, menu = width_points(FLAGS.depth, image, FLAGS.slim_report)
        model_name = f"slimmable_resnet{FLAGS.depth}_widths_b{FLAGS.batch}"
    else:
        executor, menu = block_plan_points(FLAGS.depth, image)
        model_name = f"resnet{FLAGS.depth}_block_plans_b{FLAGS.batch}"
    warmup_s = time.perf_counter() - t0
    compiled = executor.stats()["compilations"]
    table = measure_table({name: (lambda b, k=key: (lambda: executor(image, k))) for name, key, _ in menu},
                          batch_sizes=(FLAGS.batch,), warmup=3, repeats=30, rounds=3)
    points = [OperatingPoint(name, table.median_ms(name, FLAGS.batch), accuracy=acc, key=key)
              for name, key, acc in menu]

    # The trace: (budget level, load on?) per segment, a fixed pseudo-random order.
    rng = np.random.default_rng(1)
    segments = [(int(rng.integers(0, len(points))), bool(rng.random() < 0.4))
                for _ in range(-(-requests // FLAGS.segment))]
    load = BackgroundLoad()
    # Load slows serving; measure the fastest point under it once, so budgets under load stay
    # reachable by that point. (Until 2026-11-23 this measured the slowest point's slowdown and
    # applied it to the fastest; short requests slow more under a time-sliced neighbour, so the
    # loaded floor was below the fastest point's own loaded median: no manager could meet it.)
    load.on.set()
    time.sleep(0.05)
    loaded = common.median_call_ms(lambda: jax.block_until_ready(executor(image, points[0].key)), 30)
    load.on.clear()
    slowdown = loaded / points[0].latency_ms

    def new_manager():
        return RuntimeManager(points, points[0].latency_ms * (1 + FLAGS.room),
                              window=FLAGS.window, warmup=FLAGS.window,
                              hysteresis=FLAGS.hysteresis, quantile=FLAGS.quantile or None)

    manager = new_manager()
    within = 0
    missed = {True: 0, False: 0}  # by loaded segment
    missed_at_fastest = 0  # misses no switch could have avoided: already at the fastest point
    requests_by_load = {True: 0, False: 0}
    overhead_s, switch_overhead_s = [], []
    served = {p.name: 0 for p in points}
    log = []  # per request, for --trace_out
    for i in range(requests):
        if i % FLAGS.segment == 0:
            level, loaded_segment = segments[i // FLAGS.segment]
            # a budget that level meets with `room` to spare; under load, one the fastest point
            # can still meet (the trace stays feasible: the manager has to find the point)
            budget = points[level].latency_ms * (1 + FLAGS.room)
            if loaded_segment:
                budget = max(budget, points[0].latency_ms * slowdown * (1 + FLAGS.room))
            (load.on.set if loaded_segment else load.on.clear)()
            t = time.perf_counter()
            manager.set_constraints(budget)
            overhead_s.append(time.perf_counter() - t)
        served_point = manager.current
        key = served_point.key
        start = time.perf_counter()
        jax.block_until_ready(executor(image, key))
        ms = (time.perf_counter() - start) * 1e3
        served[manager.current.name] += 1
        ok = ms <= manager.latency_budget_ms
        within += ok
        missed[loaded_segment] += not ok
        missed_at_fastest += (not ok) and manager.current is points[0]
        requests_by_load[loaded_segment] += 1
        t = time.perf_counter()
        switch = manager.record(ms)
        spent = time.perf_counter() - t
        overhead_s.append(spent)
        if switch is not None:
            switch_overhead_s.append(spent)
        log.append((i, loaded_segment, budget, manager.points.index(served_point), ms,
                    manager.slowdown, switch is not None))
    load.stop.set()
    replay_us, replay_switch_us = replay(new_manager(), log, executor, image.shape, FLAGS.segment)
    if FLAGS.trace_out:
        with open(FLAGS.trace_out, "w") as f:
            f.write("request,loaded,budget_ms,level,latency_ms,slowdown,switched\n")
            f.writelines(f"{i},{int(ld)},{b:.3f},{lv},{ms:.3f},{sd:.3f},{int(sw)}\n"
                         for i, ld, b, lv, ms, sd, sw in log)
    compiles_after = executor.stats()["compilations"] - compiled
    within_frac = within / requests
    decision_us = float(np.median(overhead_s) * 1e6)
    switch_us = float(np.max(switch_overhead_s) * 1e6) if switch_overhead_s else 0.0
    switch_median_us = float(np.median(switch_overhead_s) * 1e6) if switch_overhead_s else 0.0
    quiet_decision_us = float(np.median(replay_us))
    quiet_switch_us = float(np.median(replay_switch_us)) if replay_switch_us else 0.0
    quiet_switch_max_us = float(np.max(replay_switch_us)) if replay_switch_us else 0.0
    rows = [{"point": p.name, "table_ms": p.latency_ms, "served": served[p.name]} for p in points]
    text = report.format_table(rows, [("point", "point", "s"), ("table_ms", f"table b{FLAGS.batch} ms", ".2f"),
                                      ("served", "requests", "d")])
    summary = (f"requests {requests}, segments of {FLAGS.segment}, background load slows serving "
               f"{slowdown:.2f}x; within budget {within_frac:.4f} (misses: {missed[False]} of "
               f"{requests_by_load[False]} unloaded, {missed[True]} of {requests_by_load[True]} "
               f"loaded; {missed_at_fastest} while at the fastest point); switches {len(manager.switches)}; "
               f"in the trace (sharing the core with the load): decision median {decision_us:.1f} us, "
               f"switching decisions median {switch_median_us:.1f} us, slowest {switch_us:.1f} us; "
               f"replayed without load (decision + executable lookup): median {quiet_decision_us:.1f} us, "
               f"switching median {quiet_switch_us:.1f} us, slowest {quiet_switch_max_us:.1f} us; "
               f"compilations after warm-up {compiles_after} (warm-up {warmup_s:.1f} s)")
    print(text)
    print(summary)
    figures = [
        {"metric": "within_budget_frac", "value": round(within_frac, 4), "unit": "fraction",
         "model": model_name, "requests": requests, "load_slowdown": round(slowdown, 2)},
        {"metric": "switch_overhead_us", "value": round(quiet_switch_us, 1), "unit": "us",
         "model": model_name, "slowest_us": round(quiet_switch_max_us, 1),
         "note": "median record() + executable lookup of the requests that switched, replayed "
                 "without the injected load"},
        {"metric": "switch_overhead_in_trace_us", "value": round(switch_median_us, 1), "unit": "us",
         "model": model_name, "slowest_us": round(switch_us, 1),
         "note": "the same in the trace, sharing the core with the load thread"},
        {"metric": "decision_overhead_median_us", "value": round(decision_us, 2), "unit": "us",
         "model": model_name},
        {"metric": "compiles_after_warmup", "value": compiles_after, "unit": "count",
         "model": model_name},
        {"metric": "avoidable_misses", "value": missed[True] + missed[False] - missed_at_fastest,
         "unit": "count", "model": model_name, "requests": requests,
         "note": "misses while a faster point existed (the rest were at the fastest point)"},
        {"metric": "switch_overhead_median_us", "value": round(switch_median_us, 1), "unit": "us",
         "model": model_name},
    ]
    common.append_results("runtime_manager", figures, text + "\n" + summary,
                          notes=f"window {FLAGS.window}, hysteresis {FLAGS.hysteresis}, room {FLAGS.room}, "
                                f"statistic {'p%g' % (100 * FLAGS.quantile) if FLAGS.quantile else 'mean'}")
    print(json.dumps({"within_budget_frac": round(within_frac, 4),
                      "switch_overhead_us": round(quiet_switch_us, 1),
                      "compiles_after_warmup": compiles_after,
                      "avoidable_misses": missed[True] + missed[False] - missed_at_fastest,
                      "switches": len(manager.switches)}))


if __name__ == "__main__":
    app.run(main)
