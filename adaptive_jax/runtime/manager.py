"""Operating points, `choose` (one constraint, one answer), and `RuntimeManager` (follow the
machine).

`choose(points, latency_budget_ms, accuracy_floor)`: the most accurate point within the budget
and above the floor. The latency budget is the hard constraint: when no point meets both, the most
accurate point within the budget is returned flagged `meets_accuracy=False`; when none is within
the budget, the fastest point, flagged `meets_latency=False`. Never a silent miss.

`RuntimeManager`: the Dynamic-OFA ladder. Points sorted by table latency; after every request the
caller reports the measured latency. Once `warmup` samples are in, the mean of the last `window`
(samples >= `outlier_ms` ignored; or a quantile of them, `quantile=0.9`, when the budget is per
request and the machine's latency is jittery) is compared with the budget: above it, step down a level (the
machine slowed); when the next level up is at least as accurate and, predicted from the current
mean scaled by the table's latency ratio, fits under `(1 - hysteresis) * budget`, step up (the
machine freed up). Every switch starts a fresh window. A step down
right after a step up pins the lower level until the budget changes (the oscillation guard). A
switch only changes which pre-compiled executable the caller runs: nothing compiles.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Hashable, Sequence


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """One way to serve: what to run (`key`: a sub-net spec, a plan, ...), its measured latency
    and its accuracy (None when unknown: it then meets no accuracy floor)."""

    name: str
    latency_ms: float
    accuracy: float | None = None
    key: Hashable = None

    def __post_init__(self):
        if not (self.latency_ms > 0 and math.isfinite(self.latency_ms)):
            raise ValueError(f"operating point {self.name!r}: latency_ms must be a positive number, "
                             f"got {self.latency_ms}")


@dataclasses.dataclass(frozen=True)
class Choice:
    point: OperatingPoint
    index: int
    meets_latency: bool
    meets_accuracy: bool

    @property
    def feasible(self) -> bool:
        return self.meets_latency and self.meets_accuracy


def _check_points(points: Sequence[OperatingPoint]) -> None:
    if not points:
        raise ValueError("no operating points to choose from")
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"operating point names must be unique, got {names}")


def _accuracy(point: OperatingPoint) -> float:
    return -math.inf if point.accuracy is None else point.accuracy


def choose(points: Sequence[OperatingPoint], latency_budget_ms: float | None = None,
           accuracy_floor: float | None = None, latency_scale: float = 1.0) -> Choice:
    """The best point for the constraints; `latency_scale` multiplies every table latency (the
    observed slowdown of this machine against the table)."""
    _check_points(points)
    def latency(p):
        return p.latency_ms * latency_scale

    def fits(p):
        return latency_budget_ms is None or latency(p) <= latency_budget_ms

    def accurate(p):
        return accuracy_floor is None or _accuracy(p) >= accuracy_floor

    within = [i for i, p in enumerate(points) if fits(p)]
    if not within:
        i = min(range(len(points)), key=lambda i: latency(points[i]))
        return Choice(points[i], i, False, accurate(points[i]))
    good = [i for i in within if accurate(points[i])] or within
    # most accurate; among equals, the fastest
    i = max(good, key=lambda i: (_accuracy(points[i]), -latency(points[i])))
    return Choice(points[i], i, True, accurate(points[i]))


@dataclasses.dataclass(frozen=True)
class Switch:
    """A level change: from / to indices into the manager's points, and why."""

    old: int
    new: int
    reason: str
    mean_ms: float


class RuntimeManager:
    def __init__(self, points: Sequence[OperatingPoint], latency_budget_ms: float,
                 accuracy_floor: float | None = None, *, window: int = 20, warmup: int = 20,
                 outlier_ms: float | None = None, hysteresis: float = 0.1,
                 quantile: float | None = None, start: str | None = None):
        _check_points(points)
        if window < 1 or warmup < 1:
            raise ValueError(f"window and warmup must be at least 1, got {window}, {warmup}")
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if quantile is not None and not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.quantile = quantile
        self.points = sorted(points, key=lambda p: p.latency_ms)  # levels: fastest first
        self.window, self.warmup, self.outlier_ms = window, warmup, outlier_ms
        self.hysteresis = hysteresis
        self._samples: collections.deque = collections.deque(maxlen=window)
        self._seen = 0
        self._last_switch: Switch | None = None
        self.pinned = False
        self.switches: list[Switch] = []
        self.set_constraints(latency_budget_ms, accuracy_floor)
        if start is not None:
            names = [p.name for p in self.points]
            if start not in names:
                raise ValueError(f"unknown start point {start!r}; expected one of {names}")
            self.level = names.index(start)

    @property
    def current(self) -> OperatingPoint:
        return self.points[self.level]

    def set_constraints(self, latency_budget_ms: float, accuracy_floor: float | None = None) -> Choice:
        """New constraints (a budget trace changes over time): re-choose from the table, scaled by
        the slowdown observed at the current level, and start a fresh window."""
        if not latency_budget_ms > 0:
            raise ValueError(f"latency budget must be positive, got {latency_budget_ms} ms")
        self.latency_budget_ms, self.accuracy_floor = latency_budget_ms, accuracy_floor
        scale = self._slowdown() if hasattr(self, "level") else 1.0
        self.choice = choose(self.points, latency_budget_ms, accuracy_floor, scale)
        old = getattr(self, "level", None)
        self.level = self.choice.index
        if old is not None and old != self.level:
            self._switched(Switch(old, self.level, "constraints changed", self._mean()))
        self.pinned = False
        self._restart()
        return self.choice

    def _restart(self) -> None:
        self._samples.clear()
        self._seen = 0

    def _mean(self) -> float:
        """The window's statistic: its mean, or its `quantile` when one was given."""
        if not self._samples:
            return math.nan
        if self.quantile is None:
            return sum(self._samples) / len(self._samples)
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)]

    def _slowdown(self) -> float:
        if len(self._samples) < max(1, min(self.warmup, self.window)):
            return 1.0
        return self._mean() / self.current.latency_ms

    def _switched(self, switch: Switch) -> None:
        self.switches.append(switch)
        self._last_switch = switch

    def record(self, latency_ms: float) -> Switch | None:
        """Reports one request's latency; returns the switch it caused, if any."""
        self._seen += 1
        if self.outlier_ms is not None and latency_ms >= self.outlier_ms:
            return None
        self._samples.append(latency_ms)
        if self._seen < self.warmup or len(self._samples) < min(self.window, self.warmup):
            return None
        mean = self._mean()
        budget = self.latency_budget_ms
        switch = None
        if mean > budget and self.level > 0:
            switch = Switch(self.level, self.level - 1, "over budget", mean)
            if self._last_switch is not None and self._last_switch.new > self._last_switch.old \
                    and self._last_switch.new == self.level:
                self.pinned = True  # stepped up, then straight back down: stay low
        elif not self.pinned and self.level + 1 < len(self.points):
            up = self.points[self.level + 1]
            predicted = mean * up.latency_ms / self.current.latency_ms
            if predicted <= (1.0 - self.hysteresis) * budget and _accuracy(up) >= _accuracy(self.current):
                switch = Switch(self.level, self.level + 1, "room under budget", mean)
        if switch is not None:
            self.level = switch.new
            self._switched(switch)
            self._restart()
        return switch

    @property
    def mean_ms(self) -> float:
        """Mean of the current window (NaN before the first sample at this level)."""
        return self._mean()
