"""End-to-end: a zoo recipe, OFAS fine-tuned from its entry, `make demo` on that zoo, and the zoo
cascade benchmark, in smoke mode on tiny data."""

import json
import re

import pytest

from tests.conftest import run_experiment


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
    assert recorded["zoo_cascade_pooled_speedup_b64_vs_static"]["value"] > 0


def test_cascade_serving_benchmark_smoke(tiny_cifar_manual_dir, tmp_path):
    """The serving benchmark on the tiny test split (half sets the threshold, half is the stream):
    every server answers every image, the cascades, however they pool and on whichever thread,
    answer alike, and so does the static network on one thread or a pool of two."""
    manual_dir, _, test = tiny_cifar_manual_dir
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.cascade_serving", "--request_size=4", "--batch_size=8",
                          "--loads=0.5,saturated", "--max_wait_ms=5",
                          env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results),
                                     "ADAPTIVE_JAX_MANUAL_DIR": manual_dir,
                                     "TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "20 images in requests of 4" in proc.stdout
    recorded = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    costs = {(r["model"], r["batch"]): r["value"] for r in recorded
             if r["metric"] == "serving_network_ms_per_image"}
    assert set(costs) == {(m, b) for m in ("resnet20_gpu", "resnet56", "resnet32_gpu")
                          for b in (1, 4, 8)} and min(costs.values()) > 0
    from_threads = {(r["model"], r["batch"], r["threads"]): r["value"] for r in recorded
                    if r["metric"] == "serving_network_ms_per_image_from_threads"}
    assert set(from_threads) == {(m, b, t) for m in ("resnet20_gpu", "resnet56", "resnet32_gpu")
                                 for b in (4, 8) for t in (1, 2)}
    assert min(from_threads.values()) > 0
    recorded = [r for r in recorded if not r["metric"].startswith("serving_network_ms_per_image")]
    servers = ("static", "static, 2 threads", "cascade, per request", "cascade, wait 5 ms",
               "cascade, per request, 2 threads", "threaded, wait 5 ms",
               "threaded, wait 5 ms, 2 threads")
    for load in ("0.5", "saturated"):
        rows = {r["server"]: r for r in recorded if r["load"] == load}
        assert set(rows) == set(servers)
    accuracy = {(r["load"], r["server"]): r["value"] for r in recorded
                if r["metric"] == "serving_accuracy"}
    cascades = {v for (load, server), v in accuracy.items() if not server.startswith("static")}
    assert len(cascades) == 1  # per request or pooled: the same answers
    assert len({v for (load, server), v in accuracy.items() if server.startswith("static")}) == 1
    for r in recorded:
        if r["metric"] == "serving_throughput_vs_static" and r["server"] == "static":
            assert r["value"] == 1.0
        if r["metric"] == "serving_latency_p99_ms":
            assert r["value"] > 0
