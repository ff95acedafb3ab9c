"""End-to-end: the DFS experiment in smoke mode on tiny data."""

import json

import pytest

from adaptive_jax.train import search
from tests.conftest import run_experiment


def test_dfs_smoke_end_to_end(tiny_cifar_manual_dir, tmp_path):
    """experiments.dfs: warm-up and a joint step for DFS and for skip-only, the greedy static
    allocation at the DFS point's BitOPs fine-tuned for as many steps, its cascade into the
    search's start plan, the table, report and curve; the joint steps' gates start at the static
    allocation for their target (dfs.gate_start=static_plan, kept in the run's directory)."""
    manual_dir, _, _ = tiny_cifar_manual_dir
    workdir = tmp_path / "work"
    proc = run_experiment(
        "experiments.dfs.main", f"--workdir={workdir}",
        "--config=experiments/dfs/configs/default.py:smoke",
        f"--config.data_dir={tmp_path / 'tfds'}", f"--config.manual_dir={manual_dir}",
        "--config.num_eval_examples=0", "--config.dfs.widths=8,32", "--config.dfs.targets=30",
        "--config.dfs.gate_start=static_plan", "--config.dfs.static_mixture=True",
        "--config.dfs.static_cascade=True",
        "--latency_images=0")  # batch-1 predict is tested in tests/test_dfs.py
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "comp %" in proc.stdout and "BitOPs/img" in proc.stdout
    report = json.loads((workdir / "report.json").read_text())
    points = {p["point"]: p for p in report["points"]}
    assert sorted(points) == ["cascade @30%", "dfs @30%", "skip_only @30%", "static @30%",
                              "static above @30%", "static mix @30%"]
    dfs, skip, static = points["dfs @30%"], points["skip_only @30%"], points["static @30%"]
    # the greedy step before the static allocation costs more than the DFS point; the two mixed
    # cost exactly its BitOPs
    above, mix = points["static above @30%"], points["static mix @30%"]
    assert above["static_plan"] == static["greedy_path"][-2]["plan"]
    assert above["test_bitops"] > dfs["test_bitops"] and above["train_time_s"] > 0
    w = mix["share_above"]
    assert mix["test_bitops"] == pytest.approx(dfs["test_bitops"])
    assert (1 - w) * static["test_bitops"] + w * above["test_bitops"] == pytest.approx(dfs["test_bitops"])
    assert mix["test_accuracy"] == pytest.approx((1 - w) * static["test_accuracy"] + w * above["test_accuracy"])
    assert mix["dfs_minus_static_mixture_accuracy"] == pytest.approx(
        dfs["test_accuracy"] - mix["test_accuracy"])
    for p in (dfs, skip, static):
        # (a mean of 100s computed in float32 may land an ulp or two above 100)
        assert 0.0 <= p["test_accuracy"] <= 1.0 and 0.0 <= p["test_computation_pct"] <= 100.001
        assert p["test_bitops"] > 0 and p["test_macs"] > 0
    assert dfs["dfs_minus_skip_only_accuracy"] == pytest.approx(
        dfs["test_accuracy"] - skip["test_accuracy"])
    assert skip["bits8_frac"] == 0.0  # skip-only's menu has no 8-bit option
    assert dfs["distinct_plans"] >= 1 and dfs["bitops_cv"] >= 0.0
    assert len(dfs["skip_share_per_block"]) == 3  # ResNet-8: 3 blocks
    # the static allocation spends no more BitOPs than the DFS point, and was fine-tuned
    plan = static["static_plan"]
    assert static["skip_frac"] == pytest.approx(sum(v == 0 for v in plan) / len(plan))
    assert static["test_bitops"] <= dfs["test_bitops"] + 1
    assert 0.0 <= static["untuned_test_accuracy"] <= 1.0
    assert (workdir / "static" / "target_30" / "checkpoints").is_dir()
    for row, run_dir in ((static, "static"), (above, "static_above")):  # each tied to its plan
        key = json.loads((workdir / run_dir / "target_30" / "run_key.json").read_text())
        assert key["plan"] == row["static_plan"] and key["recipe"]["dfs"]["widths"] == [8, 32]
        assert "targets" not in key["recipe"]["dfs"]  # another target list keeps these runs
    assert static["dfs_minus_static_accuracy"] == pytest.approx(
        dfs["test_accuracy"] - static["test_accuracy"])
    # the cascade: the cheapest fine-tuned static allocation (here the one below the point), its
    # least sure test images escalated to the search's start plan (the warm-up's model), as
    # many as the point's BitOPs allow
    chain = points["cascade @30%"]
    start = static["greedy_path"][0]["plan"]
    assert chain["static_plans"] == [static["static_plan"], start]
    share = (dfs["test_bitops"] - static["test_bitops"]) / static["greedy_path"][0]["price"]
    assert chain["escalation_target_share"] == pytest.approx(share)
    escalated = chain["escalated_share"]
    assert chain["test_bitops"] == pytest.approx(
        static["test_bitops"] + escalated * static["greedy_path"][0]["price"], rel=1e-6)
    assert abs(escalated - share) <= 2 / 40 + 1e-9  # two-fold on 40 test images: per half, k/20
    assert chain["dfs_minus_static_cascade_accuracy"] == pytest.approx(
        dfs["test_accuracy"] - chain["test_accuracy"])
    # against the fine-tuned static plans mixed at its measured BitOPs, where two bracket them
    bracketed = static["test_bitops"] <= chain["test_bitops"] <= above["test_bitops"]
    assert ("cascade_minus_static_mixture_accuracy" in chain) == bracketed
    if bracketed:
        mixed = search.mixture_at(static, above, chain["test_bitops"], "test_bitops",
                                  ("test_accuracy",))
        assert chain["cascade_minus_static_mixture_accuracy"] == pytest.approx(
            chain["test_accuracy"] - mixed["test_accuracy"])
    random = (1 - escalated) * static["test_accuracy"] + escalated * chain["large_plan_accuracy"]
    assert chain["cascade_minus_random_mixture_accuracy"] == pytest.approx(
        chain["test_accuracy"] - random)
    assert (workdir / "curve.png").stat().st_size > 1000
    assert (workdir / "dfs" / "warmup" / "checkpoints").is_dir()
    for menu, point, options in (("dfs", dfs, 3), ("skip_only", skip, 2)):
        start = json.loads((workdir / menu / "target_30" / "gate_start_plan.json").read_text())
        assert point["gate_start_plan"] == start["plan"] and len(start["plan"]) == 3
        assert all(0 <= v < options for v in start["plan"])
        assert start["greedy_path"][-1]["price"] <= 30.0

    # benchmarks.record_dfs records every comparison the run made, each under its own metric
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.record_dfs", f"--workdir={workdir}", "--run_command=test",
                          env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (results / "results.jsonl").read_text().splitlines()
    recorded = {r["metric"]: r for r in map(json.loads, lines)}
    expected = {"dfs_test_accuracy": dfs["test_accuracy"],
                "dfs_minus_skip_only_accuracy": dfs["dfs_minus_skip_only_accuracy"],
                "dfs_minus_static_mixture_accuracy": mix["dfs_minus_static_mixture_accuracy"],
                "dfs_static_cascade_test_accuracy": chain["test_accuracy"],
                "dfs_minus_static_cascade_accuracy": chain["dfs_minus_static_cascade_accuracy"]}
    for metric, value in expected.items():
        assert recorded[metric]["value"] == pytest.approx(value, abs=1e-4), metric
    assert recorded["dfs_static_cascade_test_accuracy"]["static_plans"] == chain["static_plans"]
    assert ("dfs_static_cascade_minus_static_mixture_accuracy" in recorded) == bracketed
    assert "cascade @30%" in (results / "RESULTS.md").read_text()
    assert recorded["dfs_test_accuracy"]["gate_start"] == "static_plan"


def test_record_dfs_compares_a_run_with_another_runs_static_plans(tmp_path):
    """--static_from: DFS points of a run with no static baseline, against another run's
    fine-tuned static plans mixed at each point's BitOPs where two bracket it; the run's own
    dfs.gate_start recorded as it was."""
    def write(workdir, points, **run):
        workdir.mkdir()
        (workdir / "report.json").write_text(json.dumps(
            {"model": "dfs_resnet8", "gate_start": "static_plan_above", **run, "points": points}))

    def dfs_point(target, accuracy, bitops):
        return {"point": f"dfs @{target}%", "menu": "dfs", "target": target,
                "test_accuracy": accuracy, "test_bitops": bitops, "test_computation_pct": target}

    def static_point(menu, accuracy, bitops, plan):
        return {"point": menu, "menu": menu, "target": 4.0, "test_accuracy": accuracy,
                "test_bitops": bitops, "static_plan": plan}

    write(tmp_path / "run", [dfs_point(4.0, 0.80, 3.5e9), dfs_point(5.0, 0.87, 9.0e9)])
    write(tmp_path / "other", [static_point("static", 0.85, 3.0e9, [1, 0]),
                               static_point("static_above", 0.86, 4.0e9, [1, 1]),
                               static_point("static", 0.87, 5.0e9, [2, 1])], gate_start="warmup")
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.record_dfs", f"--workdir={tmp_path / 'run'}",
                          "--run_command=test", f"--static_from={tmp_path / 'other'}",
                          env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    mixtures = [r for r in recorded if r["metric"] == "dfs_minus_static_mixture_accuracy"]
    # @4 %: halfway between the plans at 3e9 and 4e9 (0.855); @5 %: above every static plan
    assert [(r["target_pct"], r["value"]) for r in mixtures] == [(4.0, pytest.approx(-0.055))]
    assert mixtures[0]["static_from"] == str(tmp_path / "other")
    assert {r["gate_start"] for r in recorded} == {"static_plan_above"}
