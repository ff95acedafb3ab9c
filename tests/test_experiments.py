"""End-to-end: each experiment runs from its command line in smoke mode on tiny data."""

import json
import os
import subprocess
import sys

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
