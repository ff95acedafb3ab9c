"""Metrics written as JSON lines: one object per event, easy to read back, plot or grep."""

from __future__ import annotations

import json
import os
import time

import numpy as np


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return value


class MetricsWriter:
    """Appends `{"step": s, "time": t, **metrics}` lines to `path`."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, step: int, **metrics) -> dict:
        record = {"step": int(step), "time": time.time(),
                  **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return record


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def recorded_train_time(workdir: str) -> float | None:
    """Training time of a finished run, from its metrics (a resumed, finished run trains nothing,
    so the time it reports is not its training time)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    times = [r["train_time_s"] for r in read_metrics(path) if "train_time_s" in r]
    return times[-1] if times else None
