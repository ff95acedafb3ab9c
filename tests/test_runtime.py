"""The runtime manager: choosing a point for a constraint, following a latency trace with
hysteresis, never a silent miss, and no compilation after warm-up."""

import jax
import numpy as np
import pytest
from flax import nnx

from adaptive_jax.runtime import OperatingPoint, RuntimeManager, choose

POINTS = [OperatingPoint("w0.5", 10.0, 0.80), OperatingPoint("w0.75", 20.0, 0.85),
          OperatingPoint("w1.0", 40.0, 0.90)]


def test_choose_the_most_accurate_point_that_fits():
    c = choose(POINTS, latency_budget_ms=25.0)
    assert c.point.name == "w0.75" and c.feasible
    assert choose(POINTS).point.name == "w1.0"                       # no constraint
    assert choose(POINTS, 100.0, accuracy_floor=0.82).point.name == "w1.0"
    assert choose(POINTS, latency_budget_ms=25.0, latency_scale=2.0).point.name == "w0.5"


def test_an_impossible_budget_gives_the_fastest_point_flagged():
    c = choose(POINTS, latency_budget_ms=5.0)
    assert c.point.name == "w0.5" and not c.meets_latency and not c.feasible


def test_an_unreachable_floor_keeps_the_budget_and_is_flagged():
    c = choose(POINTS, latency_budget_ms=25.0, accuracy_floor=0.88)
    assert c.point.name == "w0.75" and c.meets_latency and not c.meets_accuracy


def test_bad_points_and_constraints_are_named():
    with pytest.raises(ValueError, match="no operating points"):
        choose([])
    with pytest.raises(ValueError, match="unique"):
        choose([POINTS[0], POINTS[0]])
    with pytest.raises(ValueError, match="latency_ms must be a positive"):
        OperatingPoint("x", 0.0)
    with pytest.raises(ValueError, match="unknown start point 'w2'"):
        RuntimeManager(POINTS, 50.0, start="w2")
    with pytest.raises(ValueError, match="budget must be a positive number"):
        RuntimeManager(POINTS, 0.0)


def _feed(manager, latency_of_level, n):
    switches = []
    for _ in range(n):
        s = manager.record(latency_of_level(manager.level))
        if s is not None:
            switches.append(s)
    return switches


def test_steps_down_when_the_machine_slows_and_up_when_it_frees():
    m = RuntimeManager(POINTS, latency_budget_ms=45.0, window=5, warmup=5)
    assert m.current.name == "w1.0"
    table = [p.latency_ms for p in m.points]
    assert _feed(m, lambda l: table[l], 30) == []                    # on budget: stays
    slow = _feed(m, lambda l: 1.5 * table[l], 30)                     # background load
    assert [(s.old, s.new, s.reason) for s in slow] == [(2, 1, "over budget")]
    free = _feed(m, lambda l: table[l], 30)                           # load gone
    assert [(s.old, s.new, s.reason) for s in free] == [(1, 2, "room under budget")]
    assert m.current.name == "w1.0" and len(m.switches) == 2


def test_hysteresis_does_not_step_up_into_the_budget_edge():
    m = RuntimeManager(POINTS, latency_budget_ms=42.0, window=5, warmup=5, start="w0.75")
    # the next level would take 40 ms > 0.9 * 42: stay
    assert _feed(m, lambda l: [10.0, 20.0, 40.0][l], 50) == []


def test_stepping_down_right_after_stepping_up_pins_the_level():
    m = RuntimeManager(POINTS, latency_budget_ms=45.0, window=3, warmup=3, start="w0.75")
    # level 1 looks cheap, but level 2 really takes 60 ms: up, straight back down, then pinned
    real = {0: 10.0, 1: 15.0, 2: 60.0}
    switches = _feed(m, lambda l: real[l], 60)
    assert [(s.old, s.new) for s in switches] == [(1, 2), (2, 1)]
    assert m.pinned and m.current.name == "w0.75"
    m.set_constraints(45.0)  # new constraints lift the pin
    assert not m.pinned


def test_outliers_are_ignored_and_budget_changes_rechoose():
    m = RuntimeManager(POINTS, latency_budget_ms=45.0, window=5, warmup=5, outlier_ms=90.0)
    assert _feed(m, lambda l: 500.0, 20) == []
    choice = m.set_constraints(15.0)
    assert m.current.name == "w0.5" and choice.feasible
    choice = m.set_constraints(5.0)
    assert m.current.name == "w0.5" and not choice.meets_latency


def test_serving_static_executables_compiles_nothing_after_warm_up():
    from adaptive_jax.execution import StaticExecutor
    from adaptive_jax.models import CifarResNet, ResNetSpec
    from adaptive_jax.plans import BlockLayout, StaticBlockPlan

    model = CifarResNet(ResNetSpec(8), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    layout = BlockLayout.of(model.spec)
    plans = {n: StaticBlockPlan.from_array(np.array(b, bool), layout)
             for n, b in [("small", [0, 0, 1]), ("mid", [1, 0, 1]), ("full", [1, 1, 1])]}
    points = [OperatingPoint(n, ms, acc, key=plans[n])
              for n, ms, acc in [("small", 1.0, 0.5), ("mid", 2.0, 0.6), ("full", 3.0, 0.7)]]
    executor = StaticExecutor(graphdef, params, stats, max_executables=3)
    executor.warm_up(plans.values())
    compiled = executor.stats()["compilations"]
    manager = RuntimeManager(points, latency_budget_ms=1.5, window=2, warmup=2)
    image = np.zeros((1, 32, 32, 3), np.float32)
    fake = {"small": 1.0, "mid": 2.0, "full": 3.0}
    served = set()
    for step in range(40):
        if step in (10, 20):  # a budget trace
            manager.set_constraints({10: 2.5, 20: 3.5}[step])
        executor(image, manager.current.key)
        served.add(manager.current.name)
        manager.record(fake[manager.current.name])
    assert served == {"small", "mid", "full"}
    assert executor.stats()["compilations"] == compiled


def test_latency_table_round_trip_and_device_warning(tmp_path):
    import json
    import warnings

    from adaptive_jax.latency import LatencyTable, LatencyTableWarning, measure_table

    x = np.ones((4, 64), np.float32)
    small = jax.jit(lambda v: v @ np.ones((64, 8), np.float32))
    big = jax.jit(lambda v: (v @ np.ones((64, 512), np.float32)) @ np.ones((512, 512), np.float32))
    table = measure_table({"small": lambda b: (lambda: small(x[:b])),
                           "big": lambda b: (lambda: big(x[:b]))},
                          batch_sizes=(1, 4), warmup=1, repeats=6, rounds=2)
    assert set(table.entries) == {"small", "big"} and set(table.entries["big"]) == {1, 4}
    assert table.entries["big"][4].repeats == 6
    path = str(tmp_path / "table.json")
    table.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # made here: no warning
        again = LatencyTable.load(path)
    assert again.median_ms("big", 4) == table.median_ms("big", 4)
    with pytest.raises(KeyError, match="no latency measured for 'huge'"):
        again.median_ms("huge")
    with pytest.raises(KeyError, match="at batch 64"):
        again.median_ms("big", 64)

    raw = json.loads((tmp_path / "table.json").read_text())
    raw["signature"]["device"] = "NVIDIA H100"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(raw))
    with pytest.warns(LatencyTableWarning, match="device: table 'NVIDIA H100'"):
        LatencyTable.load(str(other))

    other.write_text("{not json")
    with pytest.raises(ValueError, match="is not a latency table"):
        LatencyTable.load(str(other))


def test_a_quantile_window_reacts_to_tail_latency_the_mean_hides():
    # 4 of 5 requests fast, 1 slow: the mean (39 ms) fits a 45 ms budget, the p90 (75 ms) does not
    trace = [30.0, 30.0, 30.0, 30.0, 75.0] * 4
    by_mean = RuntimeManager(POINTS, 45.0, window=5, warmup=5)
    by_p90 = RuntimeManager(POINTS, 45.0, window=5, warmup=5, quantile=0.9)
    for ms in trace:
        by_mean.record(ms)
        by_p90.record(ms)
    assert by_mean.current.name == "w1.0" and by_p90.current.name != "w1.0"
    with pytest.raises(ValueError, match="quantile must be in"):
        RuntimeManager(POINTS, 45.0, quantile=1.5)


def test_the_slowdown_window_survives_switches_and_budget_changes():
    table = [p.latency_ms for p in sorted(POINTS, key=lambda p: p.latency_ms)]
    for quantile, want_level, want_slowdown in ((None, 1, 1.4), (0.9, 0, 3.0)):
        m = RuntimeManager(POINTS, latency_budget_ms=45.0, window=5, warmup=5, quantile=quantile)
        _feed(m, lambda l: table[l], 10)
        assert m.slowdown == pytest.approx(1.0)
        # the machine slows 3x as the budget changes: the window already knows the machine, so the
        # first slow request is enough to leave; at the p90 it jumps straight past level 1
        m.set_constraints(50.0)
        assert m.current.name == "w1.0"
        switch = m.record(3.0 * table[m.level])
        assert (switch.old, switch.new, switch.reason) == (2, want_level, "over budget")
        assert m.slowdown == pytest.approx(want_slowdown)  # mean: (4 x 1.0 + 3.0) / 5
        assert m.mean_ms == pytest.approx(want_slowdown * table[want_level])
