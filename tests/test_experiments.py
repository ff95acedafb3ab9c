"""End-to-end: each experiment runs from its command line in smoke mode on tiny data (the
baseline, Dynamic DNN and their tools here; OFAS, the zoo and DFS in test_experiments_*.py, files
of their own so that the two test workers share the long runs)."""

import json

import pytest

from tests.conftest import run_experiment
from tests.test_cost import hand_count_macs


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


def test_an_experiment_start_rejects_stray_arguments_and_returns_the_command(monkeypatch):
    from absl import app, logging

    from experiments import common
    monkeypatch.setattr("sys.argv", ["main.py", "--workdir=runs/a b", "--config.seed=3"])
    level = logging.get_verbosity()
    try:
        assert (common.start(["main.py"], "experiments.baseline.main")
                == "python -m experiments.baseline.main '--workdir=runs/a b' --config.seed=3")
        assert logging.get_verbosity() == logging.WARNING  # no --verbosity given
        with pytest.raises(app.UsageError, match=r"unexpected arguments: \['stray'\]"):
            common.start(["main.py", "stray"], "experiments.baseline.main")
    finally:
        logging.set_verbosity(level)


def test_unknown_config_variant_is_rejected():
    from experiments.baseline.configs import default
    with pytest.raises(ValueError, match="unknown config variant 'fast'"):
        default.get_config("fast")
    for variant in default.VARIANTS:
        default.get_config(variant)


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
