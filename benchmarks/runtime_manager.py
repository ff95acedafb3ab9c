"""Does the runtime manager keep requests within a changing latency budget on a loaded machine?

    taskset -c 0 python -m benchmarks.runtime_manager            # 6,000 requests
    taskset -c 0 python -m benchmarks.runtime_manager --quick    # 1,500 requests (< 5 minutes)

Operating points: static sub-nets of one ResNet (block plans keeping 25 / 50 / 75 / 100 % of the
blocks, evenly spread), served at batch 1 by the static executor, all compiled during warm-up;
their latency table is measured first (`adaptive_jax.latency.measure_table`). Then a trace: the
budget changes every `segment` requests (a budget that admits each level with 15 % room, in a
fixed order), and in some segments a background thread loads the same core with matmuls (numpy
releases the GIL). Every request is timed; the manager records it and may switch.

Reports: the share of requests within the budget in force, switches, the decision + switch
overhead (time spent in `record` and in picking the next executable, per request), and
compilations after warm-up. Until slimmable sub-nets land (issue 5), points are block plans: the
manager only sees (name, latency, key). Appends to RESULTS.md / results.jsonl; the LAST line is
one JSON object with `within_budget_frac`, `switch_overhead_us`, `compiles_after_warmup`.
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
from adaptive_jax.execution import StaticExecutor
from adaptive_jax.latency import measure_table
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.plans import BlockLayout, StaticBlockPlan
from adaptive_jax.runtime import OperatingPoint, RuntimeManager
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 56, "ResNet depth of the sub-nets.")
flags.DEFINE_integer("requests", 6000, "Requests in the trace.")
flags.DEFINE_integer("segment", 250, "Requests between budget / load changes.")
flags.DEFINE_integer("window", 5, "Manager: moving-average window (and warm-up) in requests.")
flags.DEFINE_float("hysteresis", 0.15, "Manager: step up only under (1 - h) x budget.")
flags.DEFINE_float("room", 0.15, "Budget = a level's table latency x (1 + room) x load factor.")
flags.DEFINE_float("quantile", 0.0, "Manager: compare this quantile of the window (0: its mean).")
flags.DEFINE_bool("quick", False, "1,500 requests.")

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


def main(argv):
    del argv
    requests = 1500 if FLAGS.quick else FLAGS.requests
    model = CifarResNet(ResNetSpec(FLAGS.depth), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    layout = BlockLayout.of(model.spec)
    plans = {f"{f:.0%} blocks": StaticBlockPlan.from_array(spread_plan(layout.num_blocks, f), layout)
             for f in FRACTIONS}
    executor = StaticExecutor(graphdef, params, stats, max_executables=len(plans))
    image = np.zeros((1, 32, 32, 3), np.float32)
    t0 = time.perf_counter()
    executor.warm_up(plans.values())
    warmup_s = time.perf_counter() - t0
    compiled = executor.stats()["compilations"]
    table = measure_table({n: (lambda b, p=p: (lambda: executor(image, p))) for n, p in plans.items()},
                          batch_sizes=(1,), warmup=3, repeats=30, rounds=3)
    points = [OperatingPoint(n, table.median_ms(n), accuracy=f, key=plans[n])
              for n, f in zip(plans, FRACTIONS)]  # accuracy proxy: more blocks, more accurate

    # The trace: (budget level, load on?) per segment, a fixed pseudo-random order.
    rng = np.random.default_rng(1)
    segments = [(int(rng.integers(0, len(points))), bool(rng.random() < 0.4))
                for _ in range(-(-requests // FLAGS.segment))]
    load = BackgroundLoad()
    # Load slows serving by some factor; measure it once so budgets under load stay reachable.
    load.on.set()
    time.sleep(0.05)
    loaded = common.median_call_ms(lambda: jax.block_until_ready(executor(image, points[-1].key)), 20)
    load.on.clear()
    slowdown = loaded / points[-1].latency_ms

    manager = RuntimeManager(points, points[0].latency_ms * (1 + FLAGS.room),
                             window=FLAGS.window, warmup=FLAGS.window, hysteresis=FLAGS.hysteresis,
                             quantile=FLAGS.quantile or None)
    within = 0
    missed = {True: 0, False: 0}  # by loaded segment
    requests_by_load = {True: 0, False: 0}
    overhead_s, switch_overhead_s = [], []
    served = {p.name: 0 for p in points}
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
        key = manager.current.key
        start = time.perf_counter()
        jax.block_until_ready(executor(image, key))
        ms = (time.perf_counter() - start) * 1e3
        served[manager.current.name] += 1
        ok = ms <= manager.latency_budget_ms
        within += ok
        missed[loaded_segment] += not ok
        requests_by_load[loaded_segment] += 1
        t = time.perf_counter()
        switch = manager.record(ms)
        spent = time.perf_counter() - t
        overhead_s.append(spent)
        if switch is not None:
            switch_overhead_s.append(spent)
    load.stop.set()
    compiles_after = executor.stats()["compilations"] - compiled
    within_frac = within / requests
    decision_us = float(np.median(overhead_s) * 1e6)
    switch_us = float(np.max(switch_overhead_s) * 1e6) if switch_overhead_s else 0.0
    rows = [{"point": p.name, "table_ms": p.latency_ms, "served": served[p.name]} for p in points]
    text = report.format_table(rows, [("point", "point", "s"), ("table_ms", "table b1 ms", ".2f"),
                                      ("served", "requests", "d")])
    summary = (f"requests {requests}, segments of {FLAGS.segment}, background load slows serving "
               f"{slowdown:.2f}x; within budget {within_frac:.4f} (misses: {missed[False]} of "
               f"{requests_by_load[False]} unloaded, {missed[True]} of {requests_by_load[True]} "
               f"loaded); switches {len(manager.switches)}; "
               f"decision median {decision_us:.1f} us, slowest switching decision {switch_us:.1f} us; "
               f"compilations after warm-up {compiles_after} (warm-up {warmup_s:.1f} s)")
    print(text)
    print(summary)
    model_name = f"resnet{FLAGS.depth}_block_plans"
    figures = [
        {"metric": "within_budget_frac", "value": round(within_frac, 4), "unit": "fraction",
         "model": model_name, "requests": requests, "load_slowdown": round(slowdown, 2)},
        {"metric": "switch_overhead_us", "value": round(switch_us, 1), "unit": "us",
         "model": model_name, "note": "slowest record() call that switched (decision + switch)"},
        {"metric": "decision_overhead_median_us", "value": round(decision_us, 2), "unit": "us",
         "model": model_name},
        {"metric": "compiles_after_warmup", "value": compiles_after, "unit": "count",
         "model": model_name},
    ]
    common.append_results("runtime_manager", figures, text + "\n" + summary,
                          notes=f"window {FLAGS.window}, hysteresis {FLAGS.hysteresis}, room {FLAGS.room}, "
                                f"statistic {'p%g' % (100 * FLAGS.quantile) if FLAGS.quantile else 'mean'}")
    print(json.dumps({"within_budget_frac": round(within_frac, 4),
                      "switch_overhead_us": round(switch_us, 1),
                      "compiles_after_warmup": compiles_after,
                      "switches": len(manager.switches)}))


if __name__ == "__main__":
    app.run(main)
