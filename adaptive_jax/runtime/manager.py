"""Operating points, `choose` (one constraint, one answer), and `RuntimeManager` (follow the
machine).

`choose(points, latency_budget_ms, accuracy_floor)`: the most accurate point within the budget
and above the floor. The latency budget is the hard constraint: when no point meets both, the most
accurate point within the budget is returned flagged `meets_accuracy=False`; when none is within
the budget, the fastest point, flagged `meets_latency=False`. Never a silent miss.

`RuntimeManager`: the Dynamic-OFA ladder. Points sorted by table latency; after every request the
caller reports the measured latency. The manager keeps the machine's *slowdown*, observed latency
over the served point's table latency, for the last `window` requests (samples >= `outlier_ms`
ignored), and summarises it by their mean (or a `quantile`, e.g. 0.9, when the budget is per
request and latency is jittery). Once `warmup` requests are in, after every request: if the
current point, scaled by the slowdown, is over the budget, jump down to the best point that fits
at that slowdown (the machine slowed); if the next level up is at least as accurate and, scaled,
fits under `(1 - hysteresis) * budget`, step up one level (the machine freed up).

The window holds slowdowns, not milliseconds, so it describes the machine, not one point: it
survives switches and budget changes, and the manager reacts to load from the first slow
request instead of re-learning the machine after every switch. (The first version kept
milliseconds of the current point and restarted the window on every switch; on the benchmark's
trace that left it blind for a window after each budget change: within budget 0.952-0.976.)
A step down right after a step up pins the lower level until the constraints change (the
oscillation guard). An observed latency that is not a finite positive number is refused at
`record` (or dropped and counted, `on_invalid="ignore"`), so one failed timer cannot disable the
manager; budgets, floors and scales are checked wherever they enter. A switch only changes which pre-compiled executable the caller runs:
nothing compiles.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math
import numbers
from collections.abc import Hashable, Sequence

from adaptive_jax.config import check_count

INVALID_ACTIONS = ("raise", "ignore")  # what `RuntimeManager.record` does with a bad latency


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """One way to serve: what to run (`key`: a sub-net spec, a plan, ...), its measured latency
    and its accuracy (None when unknown: it then meets no accuracy floor)."""

    name: str
    latency_ms: float
    accuracy: float | None = None
    key: Hashable = None

    def __post_init__(self):
        if not (_is_real(self.latency_ms) and self.latency_ms > 0 and math.isfinite(self.latency_ms)):
            raise ValueError(f"operating point {self.name!r}: latency_ms must be a positive number, "
                             f"got {self.latency_ms!r}")
        if self.accuracy is not None and not (_is_real(self.accuracy)
                                              and math.isfinite(self.accuracy)):
            raise ValueError(f"operating point {self.name!r}: accuracy must be a finite number or "
                             f"None, got {self.accuracy!r}")


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


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_constraints(latency_budget_ms, accuracy_floor, latency_scale=1.0) -> None:
    """Budgets, floors and scales at every entry point: a NaN, negative or non-number value would
    otherwise pick a point silently (NaN compares false with everything)."""
    if latency_budget_ms is not None and not (_is_real(latency_budget_ms) and latency_budget_ms > 0):
        raise ValueError(f"latency budget must be a positive number of ms (or None: no budget), "
                         f"got {latency_budget_ms!r}")
    if accuracy_floor is not None and not (_is_real(accuracy_floor) and math.isfinite(accuracy_floor)):
        raise ValueError(f"accuracy floor must be a finite number (or None: no floor), "
                         f"got {accuracy_floor!r}")
    if not (_is_real(latency_scale) and math.isfinite(latency_scale) and latency_scale > 0):
        raise ValueError(f"latency scale must be a finite positive number, got {latency_scale!r}")


def _accuracy(point: OperatingPoint) -> float:
    return -math.inf if point.accuracy is None else point.accuracy


def choose(points: Sequence[OperatingPoint], latency_budget_ms: float | None = None,
           accuracy_floor: float | None = None, latency_scale: float = 1.0) -> Choice:
    """The best point for the constraints; `latency_scale` multiplies every table latency (the
    observed slowdown of this machine against the table)."""
    _check_points(points)
    _check_constraints(latency_budget_ms, accuracy_floor, latency_scale)
    return _choose(points, latency_budget_ms, accuracy_floor, latency_scale)


def _choose(points, latency_budget_ms, accuracy_floor, latency_scale) -> Choice:
    """`choose` on points already checked (the manager's, on its per-request path)."""
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
                 quantile: float | None = None, start: str | None = None,
                 on_invalid: str = "raise"):
        _check_points(points)
        if on_invalid not in INVALID_ACTIONS:
            raise ValueError(f"on_invalid must be one of {INVALID_ACTIONS}, got {on_invalid!r}")
        self.on_invalid = on_invalid
        self.rejected = 0  # latencies refused by `record` (on_invalid="ignore")
        check_count("window", window, meaning="requests")
        check_count("warmup", warmup, meaning="requests")
        if outlier_ms is not None and not (_is_real(outlier_ms) and outlier_ms > 0):
            raise ValueError(f"outlier_ms must be a positive number of ms or None, got {outlier_ms!r}")
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if quantile is not None and not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.quantile = quantile
        self.points = sorted(points, key=lambda p: p.latency_ms)  # levels: fastest first
        self.window, self.warmup, self.outlier_ms = window, warmup, outlier_ms
        self.hysteresis = hysteresis
        # the window in arrival order (to drop the oldest) and sorted (for quantiles and the sum)
        self._samples: collections.deque = collections.deque()
        self._sorted: list[float] = []
        self._sum = 0.0
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
        """New constraints (a budget trace changes over time): re-choose from the table scaled by
        the observed slowdown. The slowdown window is kept: the machine has not changed."""
        if latency_budget_ms is None:
            raise ValueError("the runtime manager needs a latency budget (ms); use `choose` "
                             "for an accuracy floor alone")
        _check_constraints(latency_budget_ms, accuracy_floor)
        self.latency_budget_ms, self.accuracy_floor = latency_budget_ms, accuracy_floor
        self.choice = choose(self.points, latency_budget_ms, accuracy_floor, self.slowdown)
        old = getattr(self, "level", None)
        self.level = self.choice.index
        if old is not None and old != self.level:
            self._switched(Switch(old, self.level, "constraints changed", self.mean_ms))
        self.pinned = False
        return self.choice

    @property
    def slowdown(self) -> float:
        """Observed / table latency over the window (its mean or quantile); 1 before warm-up."""
        if self._seen < self.warmup or not self._samples:
            return 1.0
        if self.quantile is None:
            return self._sum / len(self._samples)
        ordered = self._sorted
        return ordered[min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)]

    def _add_sample(self, ratio: float) -> None:
        # O(window) in C (bisect, list insert / delete): the per-request path stays a few us
        self._samples.append(ratio)
        bisect.insort(self._sorted, ratio)
        self._sum += ratio
        if len(self._samples) > self.window:
            old = self._samples.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
            self._sum -= old

    def _switched(self, switch: Switch) -> None:
        self.switches.append(switch)
        self._last_switch = switch

    def record(self, latency_ms: float) -> Switch | None:
        """Reports one request's latency (at the current point); returns the switch it caused.

        A latency that is not a finite positive number (a failed timer, a clock step) is an
        error, or with `on_invalid="ignore"` counted in `rejected` and dropped: it never enters
        the window, so it cannot poison the slowdown."""
        if not (_is_real(latency_ms) and math.isfinite(latency_ms) and latency_ms > 0):
            if self.on_invalid == "ignore":
                self.rejected += 1
                return None
            raise ValueError(f"observed latency must be a finite positive number of ms, got "
                             f"{latency_ms!r} (RuntimeManager(on_invalid='ignore') drops such "
                             "samples instead)")
        self._seen += 1
        if self.outlier_ms is not None and latency_ms >= self.outlier_ms:
            return None
        self._add_sample(latency_ms / self.current.latency_ms)
        if self._seen < self.warmup:
            return None
        scale, budget = self.slowdown, self.latency_budget_ms
        switch = None
        if self.current.latency_ms * scale > budget and self.level > 0:
            # straight to the best point that fits at this slowdown, at least one level down
            new = min(_choose(self.points, budget, self.accuracy_floor, scale).index, self.level - 1)
            switch = Switch(self.level, new, "over budget", self.current.latency_ms * scale)
            if self._last_switch is not None and self._last_switch.new > self._last_switch.old \
                    and self._last_switch.new == self.level:
                self.pinned = True  # stepped up, then straight back down: stay low
        elif not self.pinned and self.level + 1 < len(self.points):
            up = self.points[self.level + 1]
            if up.latency_ms * scale <= (1.0 - self.hysteresis) * budget \
                    and _accuracy(up) >= _accuracy(self.current):
                switch = Switch(self.level, self.level + 1, "room under budget",
                                self.current.latency_ms * scale)
        if switch is not None:
            self.level = switch.new
            self._switched(switch)
        return switch

    @property
    def mean_ms(self) -> float:
        """The current point's table latency scaled by the observed slowdown."""
        return self.current.latency_ms * self.slowdown
