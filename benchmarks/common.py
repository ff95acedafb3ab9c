"""Shared benchmark plumbing: machine and version facts, and appending results.

Every benchmark run appends a human table to `benchmarks/RESULTS.md` and one JSON object per
figure to `benchmarks/results.jsonl` (keys: benchmark, metric, value, unit, model, date, command,
plus context such as machine and threads).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# ADAPTIVE_JAX_RESULTS_DIR sends the two files elsewhere (a scratch record, the test suite).
RESULTS_DIR = os.environ.get("ADAPTIVE_JAX_RESULTS_DIR") or HERE
RESULTS_MD = os.path.join(RESULTS_DIR, "RESULTS.md")
RESULTS_JSONL = os.path.join(RESULTS_DIR, "results.jsonl")


def median_call_ms(fn, calls: int) -> float:
    """Median wall time of `calls` calls of `fn()` (which must block until done), in ms."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def command_line() -> str:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    prefix = f"taskset -c {','.join(map(str, affinity))} " if affinity and len(affinity) < os.cpu_count() else ""
    return prefix + "python -m " + " ".join(shlex.quote(a) for a in [_module()] + sys.argv[1:])


def _module() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec else os.path.basename(sys.argv[0])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import jax
    info = {"cpu": cpu_model(), "cpus_visible": os.cpu_count(),
            "cpus_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "jax_backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "python": platform.python_version(), "jax": jax.__version__}
    for name in ("flax", "optax", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = module.__version__
    return info


def append_results(benchmark: str, figures: list[dict], table: str, notes: str = "",
                   command: str | None = None, machine_info: dict | None = None) -> None:
    """figures: dicts with metric, value, unit, model (+ any context keys).

    machine_info replaces this machine's facts for figures measured elsewhere.
    """
    date, command = now(), command or command_line()
    context = machine_info or machine()
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(RESULTS_JSONL, "a") as f:
        for fig in figures:
            f.write(json.dumps({"benchmark": benchmark, **fig, "date": date, "command": command,
                                "machine": context}) + "\n")
    versions = ", ".join(f"{k} {v}" for k, v in context.items() if k != "cpu")
    with open(RESULTS_MD, "a") as f:
        f.write(f"\n## {benchmark}: {date}\n\n- command: `{command}`\n"
                f"- machine: {context.get('cpu', '')}; {versions}\n")
        if notes:
            f.write(f"- notes: {notes}\n")
        f.write(f"\n```\n{table}\n```\n")


def interleaved_step_seconds(runs: dict, images, labels, rounds: int, steps_per_round: int) -> dict:
    """Median seconds per train step of each `runs[name] = [step, state]` (compiled first, state
    carried along), the runs taking turns round by round, so a machine that slows down mid-way
    slows every run alike."""
    import jax
    import numpy as np

    for run in runs.values():  # compile
        run[1], metrics = run[0](run[1], images, labels)
        jax.block_until_ready(metrics)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(steps_per_round):
                def call(run=run):
                    run[1], metrics = run[0](run[1], images, labels)
                    jax.block_until_ready(metrics)
                times[name].append(median_call_ms(call, 1))
    return {name: float(np.median(t)) / 1e3 for name, t in times.items()}
