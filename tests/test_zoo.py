"""The model zoo: entries round-trip exactly, are verified on load, fine-tune methods (init_from),
and the shipped entries reproduce their recorded accuracy on real CIFAR-10."""

import json
import os
import time

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax import zoo
from adaptive_jax.data import datasets, normalize
from adaptive_jax.methods.ofas import OFASNet
from adaptive_jax.models.resnet import CifarResNet, ResNetSpec
from adaptive_jax.train import loop, ofas
from adaptive_jax.train import create_train_state, make_optimizer
from tests.conftest import random_split
from tests.test_real_data import requires_cifar


def _entry(tmp_path, model, name="tiny"):
    graphdef, state = create_train_state(model, make_optimizer(learning_rate=0.1), seed=0)
    return zoo.save_entry(name, graphdef, state, dataset="cifar10", test_accuracy=0.5,
                          num_test_examples=100, recipe={"depth": 8}, command="python -m make_tiny",
                          zoo_dir=str(tmp_path))


def _resnet(depth=8, seed=0):
    model = CifarResNet(ResNetSpec(depth=depth), rngs=nnx.Rngs(seed))
    # Non-trivial BN statistics, so a round trip that dropped them would show.
    for bn in (model.stem_bn, model.stages[1].first.bn1):
        bn.mean[...] = jnp.linspace(-1.0, 1.0, bn.mean.shape[-1])
        bn.var[...] = jnp.linspace(0.5, 2.0, bn.var.shape[-1])
    return model


def test_round_trip_is_exact_and_records_what_it_should(tmp_path):
    model = _resnet()
    rec = _entry(tmp_path, model)
    assert [r.name for r in zoo.list(str(tmp_path))] == ["tiny"]
    assert rec.architecture == {"kind": "resnet", "depth": 8, "num_classes": 10,
                                "shortcut": "projection", "widths": [16, 32, 64], "in_channels": 3}
    params = sum(a.size for k, a in zoo.flat_arrays(model).items() if k.startswith("params/"))
    assert rec.params == params and rec.macs == 12_501_632  # ResNet-8, counted from its jaxpr
    assert rec.command == "python -m make_tiny" and len(rec.sha256) == 64
    assert os.path.getsize(tmp_path / rec.file) < zoo.MAX_FILE_BYTES
    loaded, loaded_rec = zoo.load("tiny", str(tmp_path))
    assert loaded_rec == rec
    assert loaded.stem_bn.use_running_average  # eval mode
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    model.eval()
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
    for name, array in zoo.flat_arrays(model).items():
        np.testing.assert_array_equal(zoo.flat_arrays(loaded)[name], array, err_msg=name)


def test_ofas_entry_round_trips_with_its_head(tmp_path):
    backbone = _resnet()
    model = OFASNet(backbone, (32,), pool_grid=4, activation="relu", input_norm="layer",
                    rngs=nnx.Rngs(3))
    rec = _entry(tmp_path, model, "ofas_tiny")
    assert rec.architecture["kind"] == "ofas"
    assert rec.architecture["policy"]["pool_grid"] == 4
    assert rec.architecture["policy"]["input_norm"] == "layer"
    loaded, _ = zoo.load("ofas_tiny", str(tmp_path))
    images = jnp.asarray(np.random.default_rng(1).normal(size=(3, 32, 32, 3)), jnp.float32)
    model.eval()
    np.testing.assert_array_equal(np.asarray(loaded.plan(images)), np.asarray(model.plan(images)))
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))


def test_corrupt_missing_and_unknown_entries_are_named_with_the_fix(tmp_path):
    rec = _entry(tmp_path, _resnet())
    path = tmp_path / rec.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match=r"tiny\.npz of 'tiny' is corrupt.*sha256.*git checkout"):
        zoo.load("tiny", str(tmp_path))
    path.unlink()
    with pytest.raises(zoo.ZooError, match=r"tiny\.npz of 'tiny' is missing.*python -m make_tiny"):
        zoo.load("tiny", str(tmp_path))
    with pytest.raises(zoo.ZooError, match=r"unknown zoo model 'tinny'; did you mean 'tiny'"):
        zoo.load("tinny", str(tmp_path))


def test_a_file_of_another_architecture_is_refused(tmp_path):
    _entry(tmp_path, _resnet())
    # Same name and a valid hash, but the manifest now claims a deeper network.
    manifest = json.loads((tmp_path / zoo.MANIFEST).read_text())
    manifest["tiny"]["architecture"]["depth"] = 14
    (tmp_path / zoo.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(zoo.ZooError, match=r"holds ResNet-8 .* but the manifest says ResNet-14"):
        zoo.load("tiny", str(tmp_path))
    # A file whose arrays do not fit the model is named with the differences.
    with pytest.raises(zoo.ZooError, match=r"does not fit the model: arrays missing"):
        zoo.assign_arrays(_resnet(14), zoo.flat_arrays(_resnet(8)), "zoo file x.npz")


def test_init_from_loads_the_backbone_and_keeps_the_head_fresh(tmp_path, monkeypatch):
    backbone = _resnet()
    _entry(tmp_path, backbone, "resnet8")
    monkeypatch.setenv("ADAPTIVE_JAX_ZOO_DIR", str(tmp_path))
    target = OFASNet(CifarResNet(ResNetSpec(depth=8), rngs=nnx.Rngs(7)), rngs=nnx.Rngs(8))
    head_before = zoo.flat_arrays(target.policy)
    zoo.init_from(target, "zoo:resnet8")
    for name, array in zoo.flat_arrays(backbone).items():
        np.testing.assert_array_equal(zoo.flat_arrays(target.backbone)[name], array, err_msg=name)
    for name, array in head_before.items():
        np.testing.assert_array_equal(zoo.flat_arrays(target.policy)[name], array, err_msg=name)


def test_init_from_another_depth_names_both_sides(tmp_path, monkeypatch):
    _entry(tmp_path, _resnet(), "resnet8")
    monkeypatch.setenv("ADAPTIVE_JAX_ZOO_DIR", str(tmp_path))
    with pytest.raises(zoo.ZooError, match=r"zoo model is a ResNet-8 .* model being trained is a "
                                           r"ResNet-14 .*--config.model.depth=8"):
        zoo.init_from(_resnet(14), "zoo:resnet8")
    with pytest.raises(zoo.ZooError, match=r"expected 'zoo:<name>'"):
        zoo.init_from(_resnet(), "resnet8")


def test_training_loop_starts_from_the_zoo(tmp_path, monkeypatch):
    """config.init_from: the model gets the zoo backbone before its train state is made, and a
    loop run at a negligible learning rate ends next to those weights."""
    backbone = _resnet()
    (tmp_path / "zoo").mkdir()
    _entry(tmp_path / "zoo", backbone, "resnet8")
    monkeypatch.setenv("ADAPTIVE_JAX_ZOO_DIR", str(tmp_path / "zoo"))
    config = ofas.default_config()
    config.model.depth = 8
    config.init_from = "zoo:resnet8"
    model = ofas.build_model(config, 10, 3)
    zoo.init_from(model, config.init_from)  # what train_and_evaluate does before the state is made
    np.testing.assert_array_equal(np.asarray(model.backbone.stem_conv.kernel[...]),
                                  np.asarray(backbone.stem_conv.kernel[...]))
    # And through the loop itself: one step from the zoo weights stays near them.
    data = (random_split(64, seed=1), random_split(20, seed=2))
    config.batch_size, config.eval_batch_size, config.num_epochs = 32, 20, 1
    config.progress_bar, config.log_every_steps = False, 1
    config.optimizer.learning_rate = 1e-6
    result = loop.train_and_evaluate(config, str(tmp_path / "run"), data, ofas.stage_a_task())
    trained = nnx.merge(result["graphdef"], result["state"].params, result["state"].batch_stats)
    np.testing.assert_allclose(np.asarray(trained.backbone.stem_conv.kernel[...]),
                               np.asarray(backbone.stem_conv.kernel[...]), atol=1e-4)


@requires_cifar
def test_shipped_entries_reproduce_their_recorded_accuracy():
    """Every shipped entry, on the first 1,000 real CIFAR-10 test images, gives the top-1 its
    manifest records for them (up to one image: another CPU may round a borderline logit
    differently)."""
    from experiments.zoo.evaluate import evaluate

    records = zoo.list()
    assert {"resnet20", "resnet32"} <= {r.name for r in records}
    for row in evaluate(num_examples=zoo.SMOKE_EXAMPLES):
        assert abs(row["difference"]) <= 1 / zoo.SMOKE_EXAMPLES + 1e-9, row


@requires_cifar
def test_record_zoo_appends_each_entry_s_reproduced_accuracy(tmp_path):
    from tests.conftest import run_experiment

    proc = run_experiment("benchmarks.record_zoo", "--names=resnet20",
                          f"--num_examples={zoo.SMOKE_EXAMPLES}",
                          env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())
    recorded = zoo.load("resnet20")[1].metrics[f"test_accuracy_first_{zoo.SMOKE_EXAMPLES}"]
    assert (record["benchmark"], record["metric"], record["model"]) == ("zoo", "test_accuracy",
                                                                        "resnet20")
    assert record["recorded"] == recorded and record["test_images"] == zoo.SMOKE_EXAMPLES
    assert abs(record["value"] - recorded) <= 1 / zoo.SMOKE_EXAMPLES + 1e-9


def test_shipped_manifest_is_complete():
    for rec in zoo.list():
        assert os.path.getsize(os.path.join(zoo.ZOO_DIR, rec.file)) <= zoo.MAX_FILE_BYTES
        assert rec.command.startswith("python -m experiments.") and rec.sha256 and rec.versions
        assert 0.0 < rec.test_accuracy <= 1.0 and rec.num_test_examples == 10_000
        assert f"test_accuracy_first_{zoo.SMOKE_EXAMPLES}" in rec.metrics


def test_init_from_gives_a_slimmable_net_the_backbone_at_full_width(tmp_path, monkeypatch):
    from adaptive_jax.models.slimmable import SlimmableResNet, SlimmableSpec

    backbone = _resnet(14)
    _entry(tmp_path, backbone, "resnet14")
    monkeypatch.setenv("ADAPTIVE_JAX_ZOO_DIR", str(tmp_path))
    slim = SlimmableResNet(SlimmableSpec(depth=14), rngs=nnx.Rngs(5))
    zoo.init_from(slim, "zoo:resnet14")
    images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
    backbone.eval()
    slim.eval()
    np.testing.assert_allclose(np.asarray(slim(images, 1.0)), np.asarray(backbone(images)),
                               rtol=1e-5, atol=1e-5)
    # Narrower widths start from the full width's BN prefix.
    np.testing.assert_array_equal(np.asarray(slim.stem_bn.norms[0].mean[...]),
                                  np.asarray(backbone.stem_bn.mean[...][:4]))
    with pytest.raises(zoo.ZooError, match=r"zoo model is a ResNet-14 .* ResNet-20"):
        zoo.init_from(SlimmableResNet(SlimmableSpec(depth=20), rngs=nnx.Rngs(0)), "zoo:resnet14")


def test_time_budget_fits_whole_epochs_and_names_the_fix_when_none_fits():
    from experiments.zoo import budget

    # 100 steps of 10 ms: 1.08 s an epoch with its overhead; 60 s left, a 10 s compile and the
    # final 20 s kept back leave 30 s: 27 epochs (27.8 rounded down), capped by config.
    assert budget.epochs_within(60.0, 10.0, 0.01, 100, max_epochs=160) == 27
    assert budget.epochs_within(60.0, 10.0, 0.01, 100, max_epochs=5) == 5
    with pytest.raises(ValueError, match="raise --time_budget_s"):
        budget.epochs_within(30.0, 10.0, 0.01, 100, max_epochs=160)


def test_a_budgeted_run_records_the_fixed_epoch_command_that_reproduces_it():
    from experiments.zoo import budget

    argv = ["main.py", "--workdir=/w", "--config=c.py:gpu", "--config.num_epochs=9",
            "--time_budget_s=400", "--sync_dir=/s", "--sync_count=6", "--name=resnet56"]
    assert budget.fixed_epoch_command(argv, 120) == (
        "python -m experiments.zoo.main --workdir=/w --config=c.py:gpu --name=resnet56 "
        "--config.num_epochs=120")


def test_runs_side_by_side_wait_for_each_other(tmp_path):
    from experiments.zoo import budget

    sync = tmp_path / "sync"
    start = time.perf_counter()
    budget.wait_for_each_other(str(sync), count=1)   # this run alone: no wait
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    budget.wait_for_each_other(str(sync), count=3, timeout_s=0.5)  # the others never come
    assert 0.5 <= time.perf_counter() - start < 2.0


def test_a_time_budget_over_an_existing_run_is_refused(tmp_path):
    from experiments.zoo import budget

    budget.check_fresh_workdir(str(tmp_path / "run"))  # nothing there yet
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds a run already.*fixed-epoch command"):
        budget.check_fresh_workdir(str(tmp_path / "run"))


def test_logits_are_the_models_own_and_agree_with_evaluate():
    model = _resnet(8)
    split = random_split(7, seed=4)
    got = zoo.logits(model, split.images, batch_size=4)  # two batches, the second padded
    assert got.shape == (7, 10)
    model.eval()
    mean, std = datasets.CHANNEL_MEAN["cifar10"], datasets.CHANNEL_STD["cifar10"]
    expected = model(normalize(jnp.asarray(split.images), mean, std))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-4)
    accuracy = zoo.evaluate(model, split.images, split.labels, batch_size=4)["accuracy"]
    assert accuracy == np.mean(got.argmax(-1) == split.labels)
