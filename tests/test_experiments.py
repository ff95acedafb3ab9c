"""End-to-end: each experiment runs from its command line in smoke mode on tiny data."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.test_cost import hand_count_macs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_experiment(module, *flags, env_extra=None, timeout=600):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("XLA_FLAGS", None)  # one device, as a user has it
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_baseline_smoke_end_to_end(tiny_cifar_manual_dir, tmp_path):
    manual_dir, _, _ = tiny_cifar_manual_dir
    workdir = tmp_path / "work"
    proc = run_experiment(
        "experiments.baseline.main", f"--workdir={workdir}",
        "--config=experiments/baseline/configs/default.py:smoke",
        f"--config.data_dir={tmp_path / 'tfds'}", f"--config.manual_dir={manual_dir}",
        "--config.num_eval_examples=0", "--latency_batch_sizes=1,4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top-1" in proc.stdout and "b1 ms" in proc.stdout and "b4 ms" in proc.stdout
    report = json.loads((workdir / "report.json").read_text())
    assert report["model"] == "resnet8" and 0.0 <= report["test_accuracy"] <= 1.0
    assert report["macs"] == hand_count_macs(8) and report["latency_b1_ms"] > 0
    assert (workdir / "curves.png").stat().st_size > 1000
    assert (workdir / "checkpoints").is_dir()


def test_unknown_config_override_fails_with_its_name(tmp_path):
    proc = run_experiment("experiments.baseline.main", f"--workdir={tmp_path}",
                          "--config=experiments/baseline/configs/default.py:smoke",
                          "--config.optimizer.lr=0.3", timeout=120)
    assert proc.returncode != 0
    assert "unknown config key 'optimizer.lr'" in proc.stderr
    assert "did you mean 'optimizer.learning_rate'" in proc.stderr


def test_unknown_config_variant_is_rejected():
    from experiments.baseline.configs import default
    with pytest.raises(ValueError, match="unknown config variant 'fast'"):
        default.get_config("fast")
    for variant in default.VARIANTS:
        default.get_config(variant)


def test_ofas_smoke_end_to_end(tiny_cifar_manual_dir, tmp_path):
    manual_dir, _, _ = tiny_cifar_manual_dir
    workdir = tmp_path / "work"
    proc = run_experiment(
        "experiments.ofas.main", f"--workdir={workdir}",
        "--config=experiments/ofas/configs/default.py:smoke",
        f"--config.data_dir={tmp_path / 'tfds'}", f"--config.manual_dir={manual_dir}",
        "--config.num_eval_examples=0", "--latency_images=2",
        # 100 training images: 3 steps per epoch; give the policy 9 steps and a bolder rate to move
        "--config.rl.num_epochs=3", "--config.rl.policy_learning_rate=0.03")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "block MACs" in proc.stdout and "penalty 8" in proc.stdout
    report = json.loads((workdir / "report.json").read_text())
    stage_a, low, high = report["points"]
    assert [p["point"] for p in report["points"]] == ["stage A", "penalty 1", "penalty 8"]
    assert report["policy_macs"] == 16 * 32 + 32 * 3  # ResNet-8: 3 blocks
    for p in report["points"]:
        assert 0.0 <= p["test_accuracy"] <= 1.0 and p["latency_b1_ms"] > 0
    # Stage A has no compute term, so it keeps every block; a large skip bonus makes the policy skip.
    assert stage_a["test_block_macs_frac"] == 1.0
    assert stage_a["test_macs"] == report["full_macs"] + report["policy_macs"]
    assert high["test_block_macs_frac"] < 0.9
    assert high["test_block_macs_frac"] <= low["test_block_macs_frac"]
    assert (workdir / "curve.png").stat().st_size > 1000
    assert (workdir / "penalty_8" / "checkpoints").is_dir()


def test_dynamic_dnn_smoke_end_to_end(tiny_cifar_manual_dir, tmp_path):
    manual_dir, _, _ = tiny_cifar_manual_dir
    workdir = tmp_path / "work"
    proc = run_experiment(
        "experiments.dynamic_dnn.main", f"--workdir={workdir}",
        "--config=experiments/dynamic_dnn/configs/default.py:smoke",
        f"--config.data_dir={tmp_path / 'tfds'}", f"--config.manual_dir={manual_dir}",
        "--config.num_eval_examples=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MACs ratio" in proc.stdout and "latency ratio" in proc.stdout
    report = json.loads((workdir / "report.json").read_text())
    half, full = report["widths"]
    assert (half["width"], full["width"]) == ("0.5", "1")
    assert full["macs"] == hand_count_macs(8) and half["macs"] < 0.3 * full["macs"]
    assert 0.0 <= half["test_accuracy"] <= 1.0 and half["latency_b1_ms"] > 0
    from adaptive_jax.latency import LatencyTable
    table = LatencyTable.load(str(workdir / "latency_table.json"))
    assert set(table.entries) == {"w0.5", "w1"}


def test_latency_table_command_measures_every_subnet(tmp_path):
    out = tmp_path / "table.json"
    proc = run_experiment("experiments.dynamic_dnn.latency_table", f"--out={out}", "--depth=8",
                          "--widths=0.5,1.0", "--batch_sizes=1,2", "--repeats=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import warnings

    from adaptive_jax.latency import LatencyTable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # made here: loads without a device warning
        table = LatencyTable.load(str(out))
    assert set(table.entries) == {"w0.5", "w1"}
    for per_batch in table.entries.values():
        assert set(per_batch) == {1, 2}
        assert all(s.repeats == 3 and 0 < s.min_ms <= s.median_ms <= s.p90_ms for s in per_batch.values())
    assert "w0.5" in proc.stdout and "latency ratio" in proc.stdout
    # --subnets=all: every per-stage combination of the menu
    from experiments.dynamic_dnn.latency_table import subnet_menu
    assert {s.name for s in subnet_menu((0.5, 1.0), "all")} == {
        "w0.5", "w1", "w0.5-0.5-1", "w0.5-1-0.5", "w0.5-1-1", "w1-0.5-0.5", "w1-0.5-1", "w1-1-0.5"}
    assert len(subnet_menu((0.25, 0.5, 0.75, 1.0), "all")) == 64


def test_shrink_orders_channels_of_a_full_width_run(tmp_path):
    # in process, on random arrays: the TFDS path is the dynamic_dnn end-to-end test's
    from experiments.dynamic_dnn import shrink
    from experiments.dynamic_dnn.configs.default import get_config
    from adaptive_jax.train import slimmable, train_and_evaluate
    from tests.conftest import random_split
    config = get_config("smoke")
    config.slim.mode, config.slim.width = "alone", 1.0
    config.num_devices = 1
    data = random_split(64, seed=1), random_split(50, seed=2)
    train_and_evaluate(config, str(tmp_path), data, slimmable.task())
    rows = shrink.run(config, str(tmp_path), calibration_batches=2, data=data)
    assert rows == json.loads((tmp_path / "shrink.json").read_text())["widths"]
    assert [r["width"] for r in rows] == ["0.5", "1"]
    full = rows[-1]
    assert full["trained_accuracy"] == full["sorted_accuracy"]  # sorting keeps the full net
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("trained_accuracy", "sorted_accuracy"))
    config.slim.mode = "sandwich"  # a run not trained at full width only is refused, by name
    with pytest.raises(ValueError, match="trained at full width only"):
        shrink.run(config, str(tmp_path), data=data)


def test_zoo_recipe_then_ofas_from_the_zoo_end_to_end(tiny_cifar_manual_dir, tmp_path):
    """experiments.zoo trains a backbone and writes its entry; experiments.ofas then starts from it
    (init_from, no stage-A training), runs stage B and the static sub-net it is compared with, and
    saves the OFAS model to the zoo; both entries load and reproduce their recorded accuracy."""
    manual_dir, _, test = tiny_cifar_manual_dir
    zoo_dir = tmp_path / "zoo"
    data_flags = [f"--config.data_dir={tmp_path / 'tfds'}", f"--config.manual_dir={manual_dir}",
                  "--config.num_eval_examples=0"]
    env = {"ADAPTIVE_JAX_ZOO_DIR": str(zoo_dir)}
    proc = run_experiment("experiments.zoo.main", f"--workdir={tmp_path / 'backbone'}",
                          "--config=experiments/zoo/configs/default.py:smoke", *data_flags,
                          env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet8" in proc.stdout and "ResNet-8 (projection shortcuts" in proc.stdout
    proc = run_experiment(
        "experiments.ofas.main", f"--workdir={tmp_path / 'ofas'}",
        "--config=experiments/ofas/configs/default.py:smoke", *data_flags,
        "--config.init_from=zoo:resnet8", "--config.num_epochs=0", "--config.rl.penalties=4",
        "--config.rl.static_baseline=True", "--config.rl.static_heldout_examples=50",
        "--config.rl.static_mixture=True", "--config.rl.static_cascade=True",
        "--config.num_train_examples=80",  # 20 training images left unseen: the cascade's calibration
        "--config.policy.pool_grid=4", "--config.policy.activation=relu",
        "--config.policy.start=static_plan", "--config.policy.start_block_share=0.5",
        "--latency_images=2", "--zoo_name=ofas_resnet8", "--zoo_penalty=4", env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ofas" / "report.json").read_text())
    # stage B started every image at the greedy static sub-net of half the block MACs
    # (the first plan of one greedy path, kept for the run, within that budget)
    path = json.loads((tmp_path / "ofas" / "static_search" / "greedy_path.json").read_text())["path"]
    plans = [step["plan"] for step in path]
    assert report["start_plan"] in plans[1:]
    share = float(re.search(r"static sub-net .* \(([0-9.]+) of block MACs\)", proc.stdout).group(1))
    assert 0.0 < share <= 0.5
    stage_a, point, static, above, mixture, cascade = report["points"]
    assert [p["point"] for p in report["points"]] == [
        "stage A", "penalty 4", "static @4", "static above @4", "static mix @4", "cascade @4"]
    assert stage_a["train_time_s"] == 0.0 and stage_a["distinct_plans"] == 1
    assert point["distinct_plans"] >= 1 and point["macs_cv"] >= 0.0
    # The static sub-net is the greedy plan within the OFAS point's mean MACs; the one above it is
    # the greedy path's step before (one block more), fine-tuned alike; the two mixed cost exactly
    # the OFAS point's mean MACs.
    assert static["test_macs"] <= point["macs_mean"] + 1 and static["distinct_plans"] == 1
    assert static["greedy_path"] == path[:len(static["greedy_path"])]  # the same path, read off
    assert static["ofas_minus_static_accuracy"] == pytest.approx(
        point["test_accuracy"] - static["test_accuracy"])
    assert above["test_macs"] > point["macs_mean"] and above["train_time_s"] > 0
    assert sum(above["static_plan"]) == sum(static["static_plan"]) + 1
    assert [a or b for a, b in zip(above["static_plan"], static["static_plan"])] == above["static_plan"]
    w = mixture["share_above"]
    assert 0.0 <= w <= 1.0 and mixture["test_macs"] == pytest.approx(point["macs_mean"])
    assert (1 - w) * static["test_macs"] + w * above["test_macs"] == pytest.approx(point["macs_mean"])
    assert mixture["test_accuracy"] == pytest.approx(
        (1 - w) * static["test_accuracy"] + w * above["test_accuracy"])
    assert mixture["ofas_minus_static_mixture_accuracy"] == pytest.approx(
        point["test_accuracy"] - mixture["test_accuracy"])
    # per test image: a router between the two knowing the labels scores at least the mixture
    assert mixture["test_accuracy"] - 1e-6 <= mixture["oracle_mixture_accuracy"] <= 1.0
    assert 0.0 <= mixture["ofas_block_frac_static_right"] <= 1.0
    assert "a router between its two sub-nets knowing the labels" in proc.stdout
    # the cascade: the sub-net below, its least sure test images escalated to the full backbone
    full_macs = report["full_macs"]
    e = cascade["escalated_share"]
    assert cascade["calibration_examples"] == 20 and 0.0 <= e <= 1.0
    assert cascade["test_macs"] == pytest.approx(static["test_macs"] + e * full_macs)
    assert cascade["escalation_target_share"] == pytest.approx(
        (point["macs_mean"] - static["test_macs"]) / full_macs)
    random_mix = (1 - e) * static["test_accuracy"] + e * cascade["full_backbone_accuracy"]
    assert cascade["cascade_minus_random_mixture_accuracy"] == pytest.approx(
        cascade["test_accuracy"] - random_mix)
    assert cascade["latency_b1_ms"] > 0 and cascade["static_latency_b1_ms"] > 0
    assert cascade["throughput_batch"] == 40 and cascade["batch_ms"] > 0  # 40 test images: one batch
    assert cascade["speedup_batch"] == pytest.approx(cascade["full_batch_ms"] / cascade["batch_ms"])
    assert "cascade @4: the sub-net below escalates" in proc.stdout
    # each static sub-net trained in WORKDIR/static/<its blocks>, tied there to its plan
    for row in (static, above):
        run_dir = tmp_path / "ofas" / "static" / "".join("1" if b else "0" for b in row["static_plan"])
        assert json.loads((run_dir / "run_key.json").read_text())["plan"] == row["static_plan"]
        assert (run_dir / "metrics.jsonl").exists()

    from adaptive_jax import zoo
    records = {r.name: r for r in zoo.list(str(zoo_dir))}
    assert sorted(records) == ["ofas_resnet8", "resnet8"]
    assert records["ofas_resnet8"].metrics["distinct_plans"] == point["distinct_plans"]
    for name, rec in records.items():
        model, _ = zoo.load(name, str(zoo_dir))
        got = zoo.evaluate(model, test.images, test.labels)
        assert got["count"] == rec.num_test_examples == len(test.labels)
        assert got["accuracy"] == pytest.approx(rec.test_accuracy, abs=1e-6), name
    assert records["ofas_resnet8"].metrics["static_subnet"]["test_accuracy"] == static["test_accuracy"]
    assert records["ofas_resnet8"].metrics["static_mixture"]["test_accuracy"] == mixture["test_accuracy"]

    # benchmarks.record_ofas records every comparison the run made, each with its own metric.
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.record_ofas", f"--workdir={tmp_path / 'ofas'}",
                          "--run_command=test", "--baseline_accuracy=0.5", "--baseline_macs=1000000000",
                          "--baseline=any", env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (results / "results.jsonl").read_text().splitlines()
    recorded = {r["metric"]: r for r in map(json.loads, lines)}
    assert recorded["ofas_minus_static_subnet_accuracy"]["value"] == pytest.approx(
        static["ofas_minus_static_accuracy"], abs=1e-4)
    assert recorded["ofas_minus_static_mixture_accuracy"]["value"] == pytest.approx(
        mixture["ofas_minus_static_mixture_accuracy"], abs=1e-4)
    oracle = recorded["ofas_static_router_oracle_accuracy"]
    assert oracle["value"] == pytest.approx(mixture["oracle_mixture_accuracy"], abs=1e-4)
    assert oracle["ofas_only_right"] == pytest.approx(mixture["ofas_only_right"], abs=1e-4)
    assert "static mix @4" in (results / "RESULTS.md").read_text()
    assert recorded["ofas_cascade_minus_random_mixture_accuracy"]["value"] == pytest.approx(
        cascade["cascade_minus_random_mixture_accuracy"], abs=1e-4)
    assert recorded["ofas_minus_cascade_accuracy"]["escalated_share"] == pytest.approx(e, abs=1e-4)
    # against a static baseline of at least the cascade's MACs, OFAS's best point and the cascade
    assert recorded["ofas_cascade_minus_baseline_accuracy_at_baseline_macs"]["value"] == pytest.approx(
        cascade["test_accuracy"] - 0.5, abs=1e-4)
    assert recorded["ofas_minus_baseline_accuracy_at_baseline_macs"]["value"] == pytest.approx(
        max(point["test_accuracy"], stage_a["test_accuracy"]) - 0.5, abs=1e-4)

    # make demo's script on this zoo: the table, both plots, and the figures it reproduces.
    proc = run_experiment("experiments.ofas.demo", f"--out={tmp_path / 'demo'}",
                          "--ofas=ofas_resnet8", "--static=resnet8", "--cascade=", "--latency_images=2",
                          "--throughput_batches=1",
                          env_extra={**env, "ADAPTIVE_JAX_MANUAL_DIR": manual_dir,
                                     "TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    by_threshold = {r["threshold"]: r for r in demo["rows"] if r["model"] == "ofas_resnet8"}
    assert sorted(by_threshold) == ["0.35", "0.5", "0.65"]
    assert by_threshold["0.5"]["test_accuracy"] == pytest.approx(point["test_accuracy"])
    assert by_threshold["0.5"]["distinct_plans"] == point["distinct_plans"]
    assert by_threshold["0.5"]["latency_b1_ms"] > 0 and by_threshold["0.5"]["throughput_b64"] > 0
    resnet8 = next(r for r in demo["rows"] if r["model"] == "resnet8")
    assert resnet8["test_accuracy"] == pytest.approx(records["resnet8"].test_accuracy)
    for plot in ("accuracy_vs_macs.png", "least_most_compute.png"):
        assert (tmp_path / "demo" / plot).stat().st_size > 1000


def test_dfs_smoke_end_to_end(tiny_cifar_manual_dir, tmp_path):
    """experiments.dfs: warm-up and a joint step for DFS and for skip-only, the greedy static
    allocation at the DFS point's BitOPs fine-tuned for as many steps, the table, report and
    curve; the joint steps' gates start at the static allocation for their target
    (dfs.gate_start=static_plan, kept in the run's directory)."""
    manual_dir, _, _ = tiny_cifar_manual_dir
    workdir = tmp_path / "work"
    proc = run_experiment(
        "experiments.dfs.main", f"--workdir={workdir}",
        "--config=experiments/dfs/configs/default.py:smoke",
        f"--config.data_dir={tmp_path / 'tfds'}", f"--config.manual_dir={manual_dir}",
        "--config.num_eval_examples=0", "--config.dfs.widths=8,32", "--config.dfs.targets=30",
        "--config.dfs.gate_start=static_plan", "--config.dfs.static_mixture=True",
        "--latency_images=0")  # batch-1 predict is tested in tests/test_dfs.py
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "comp %" in proc.stdout and "BitOPs/img" in proc.stdout
    report = json.loads((workdir / "report.json").read_text())
    points = {p["point"]: p for p in report["points"]}
    assert sorted(points) == ["dfs @30%", "skip_only @30%", "static @30%", "static above @30%",
                              "static mix @30%"]
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
    assert (workdir / "curve.png").stat().st_size > 1000
    assert (workdir / "dfs" / "warmup" / "checkpoints").is_dir()
    for menu, point, options in (("dfs", dfs, 3), ("skip_only", skip, 2)):
        start = json.loads((workdir / menu / "target_30" / "gate_start_plan.json").read_text())
        assert point["gate_start_plan"] == start["plan"] and len(start["plan"]) == 3
        assert all(0 <= v < options for v in start["plan"])
        assert start["greedy_path"][-1]["price"] <= 30.0


def test_roc_auc_counts_pairs_and_ties():
    from benchmarks.ofas_difficulty import roc_auc

    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == 0.0
    # pairs (pos, neg): (0.5, 0.5) tie = 1/2, (0.5, 0.1) = 1, (0.9, 0.5) = 1, (0.9, 0.1) = 1
    assert roc_auc(np.array([0.5, 0.9, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_difficulty_probes_find_a_signal_and_only_a_signal():
    from benchmarks.ofas_difficulty import probe_scores

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)
    wrong = rng.random(2000) < 0.3
    noise = rng.normal(size=(2000, 8)).astype(np.float32)
    informative = noise.copy()
    informative[:, 0] += 3.0 * wrong          # column 0 says which images are wrong
    informative[:, 1:4] += 3.0 * np.eye(3)[labels]  # columns 1-3 say the class
    found = probe_scores(informative, labels, wrong, 3, l2=1e-3, steps=200)
    blind = probe_scores(noise, labels, wrong, 3, l2=1e-3, steps=200)
    assert found["auc_wrong_probe"] > 0.9 and found["exit_top1"] > 0.85
    assert abs(blind["auc_wrong_probe"] - 0.5) < 0.05 and abs(blind["auc_exit_confidence"] - 0.5) < 0.05


def test_difficulty_benchmark_smoke(tiny_cifar_manual_dir, tmp_path):
    manual_dir, _, test = tiny_cifar_manual_dir
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.ofas_difficulty", "--model=resnet20", "--probe_steps=20",
                          f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={manual_dir}",
                          env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OFAS head input (stem, 4x4 pooled)" in proc.stdout and "after block 8" in proc.stdout
    recorded = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    per_depth = [r for r in recorded if r["metric"] == "ofas_difficulty_auc"]
    assert len(per_depth) == 2 + 9  # image, head input, 9 blocks of ResNet-20
    assert all(0.0 <= r["value"] <= 1.0 and r["test_examples"] == len(test.labels) for r in per_depth)
    reference = next(r for r in recorded if r["metric"] == "ofas_difficulty_auc_backbone_confidence")
    assert 0.0 <= reference["value"] <= 1.0


def test_zoo_cascade_benchmark_smoke(tiny_cifar_manual_dir, tmp_path):
    """The shipped GPU entries cascaded on the tiny test split: each row's figures add up."""
    manual_dir, _, test = tiny_cifar_manual_dir
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.zoo_cascade", "--latency_images=1",
                          "--static=resnet32_gpu,resnet110",  # resnet110: above the pair, no row
                          env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results),
                                     "ADAPTIVE_JAX_MANUAL_DIR": manual_dir,
                                     "TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet32_gpu (69.1 M)" in proc.stdout and "resnet110 (" not in proc.stdout
    recorded = {r["metric"]: r for r in map(json.loads, (results / "results.jsonl").read_text().splitlines())}
    cascade_accuracy = recorded["zoo_cascade_accuracy"]
    assert cascade_accuracy["test_examples"] == len(test.labels)
    assert cascade_accuracy["static"] == "resnet32_gpu"
    share = cascade_accuracy["escalated_share"]
    assert cascade_accuracy["macs_mean"] == pytest.approx(40813184 + share * 125747840)
    for metric, reference in (("zoo_cascade_minus_static_accuracy", "static_accuracy"),
                              ("zoo_cascade_minus_random_mixture_accuracy", "random_mixture_accuracy")):
        figure = recorded[metric]
        assert figure["value"] == pytest.approx(cascade_accuracy["value"] - figure[reference])
    assert recorded["zoo_cascade_speedup_b1_vs_static"]["value"] > 0
    assert recorded["zoo_cascade_speedup_b64_vs_static"]["value"] > 0
