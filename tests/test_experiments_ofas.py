"""End-to-end: the OFAS experiment and its difficulty benchmark in smoke mode on tiny data."""

import json

import numpy as np
import pytest

from tests.conftest import run_experiment


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
