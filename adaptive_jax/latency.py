"""Measured latency: warm-up, many timed calls, robust statistics. Milliseconds throughout."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    min_ms: float
    cv: float          # coefficient of variation (std / mean) of the timed calls
    repeats: int


def measure_latency(fn: Callable, *args, warmup: int = 3, repeats: int = 20,
                    min_time_s: float = 0.0) -> LatencyStats:
    """Times `fn(*args)` to completion (`block_until_ready`) after `warmup` untimed calls.

    Runs at least `repeats` calls, and more until `min_time_s` has passed.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return LatencyStats(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()),
                        float(ms.std() / ms.mean()), len(ms))
