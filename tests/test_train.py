"""Training: exact resume, data parallelism on 2 fake devices, config and checkpoint errors."""

import os

import jax
import numpy as np
import pytest

from adaptive_jax.train import (CheckpointError, Checkpointer, default_config, read_metrics,
                                train_and_evaluate)
from adaptive_jax.train import optim
from tests.conftest import random_split


def tiny_config(**overrides):
    c = default_config()
    c.model.depth = 8
    c.num_epochs = 2
    c.batch_size = 16
    c.eval_batch_size = 20
    c.log_every_steps = 1
    c.progress_bar = False
    c.num_devices = 1
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def tiny_data():
    return random_split(64, seed=10), random_split(40, seed=11)


def train_metrics(workdir):
    return {r["step"]: r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if "train_loss" in r}


def test_interrupt_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_data):
    straight = str(tmp_path / "straight")
    final_straight = train_and_evaluate(tiny_config(), straight, data=tiny_data)

    resumed = str(tmp_path / "resumed")
    # 6 steps: past the end of epoch 1 (4 steps per epoch), mid-way through epoch 2; periodic
    # checkpoints at steps 2, 4 and 6 coincide with the epoch end and with the stop.
    stopped = train_and_evaluate(tiny_config(stop_after_steps=6, checkpoint_every_steps=2),
                                 resumed, data=tiny_data)
    assert stopped == {"stopped_at_step": 6}
    final_resumed = train_and_evaluate(tiny_config(), resumed, data=tiny_data)

    a, b = train_metrics(straight), train_metrics(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in (7, 8):  # the steps after the interruption
        assert a[step]["train_loss"] == b[step]["train_loss"]
        assert a[step]["train_accuracy"] == b[step]["train_accuracy"]
    assert final_straight["test_accuracy"] == final_resumed["test_accuracy"]
    leaves_a = jax.tree.leaves(final_straight["state"].params)
    leaves_b = jax.tree.leaves(final_resumed["state"].params)
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def test_a_resumed_run_counts_the_training_time_before_the_interruption(tmp_path, tiny_data,
                                                                         monkeypatch):
    """train_time_s of a resumed run is the whole run's: the checkpoint keeps the time trained so
    far. The first session runs on a clock that races (an hour per reading), so its time dwarfs
    the second session's; counting the second session alone would report seconds."""
    import time as time_module

    from adaptive_jax.train import loop
    workdir = str(tmp_path / "run")
    real = time_module.perf_counter
    readings = iter(range(10_000))
    with monkeypatch.context() as m:
        m.setattr(loop.time, "perf_counter", lambda: real() + 3600.0 * next(readings))
        train_and_evaluate(tiny_config(stop_after_steps=6, checkpoint_every_steps=2), workdir,
                           data=tiny_data)
    first = [r["train_time_s"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
             if "train_time_s" in r]
    assert len(first) == 1 and first[0] >= 3600.0  # epoch 1's record, on the racing clock
    final = train_and_evaluate(tiny_config(), workdir, data=tiny_data)
    assert final["train_time_s"] > first[0] + 3600.0  # the stop at step 6 came readings later


def test_resuming_a_finished_run_evaluates_without_training(tmp_path, tiny_data):
    workdir = str(tmp_path / "done")
    first = train_and_evaluate(tiny_config(), workdir, data=tiny_data)
    again = train_and_evaluate(tiny_config(), workdir, data=tiny_data)
    assert again["step"] == first["step"] == 8
    assert again["test_accuracy"] == first["test_accuracy"]


def test_training_learns_a_separable_toy_problem(tmp_path):
    # Each class is a distinct flat colour: a working loop gets this right within 2 epochs.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 128).astype(np.int32)
    palette = rng.integers(0, 256, (4, 3)).astype(np.uint8)
    images = np.broadcast_to(palette[labels][:, None, None, :], (128, 32, 32, 3)).copy()
    from adaptive_jax.data import Split
    data = Split(images, labels, 4)
    result = train_and_evaluate(tiny_config(num_epochs=3, **{"optimizer.learning_rate": 0.05}),
                                str(tmp_path / "toy"), data=(data, data))
    assert result["test_accuracy"] == 1.0


def test_data_parallel_over_two_devices_matches_one(tmp_path, tiny_data):
    assert len(jax.devices()) == 2, "conftest fakes 2 CPU devices"
    one = train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path / "one"), data=tiny_data)
    two = train_and_evaluate(tiny_config(num_epochs=1, num_devices=2), str(tmp_path / "two"),
                             data=tiny_data)
    sharding = jax.tree.leaves(two["state"].params)[0].sharding
    assert len(sharding.device_set) == 2
    a, b = train_metrics(str(tmp_path / "one")), train_metrics(str(tmp_path / "two"))
    for step in a:  # same maths, different reduction order: equal to float32 rounding
        np.testing.assert_allclose(a[step]["train_loss"], b[step]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(one["test_loss"], two["test_loss"], rtol=1e-3)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
        train_and_evaluate(tiny_config(batch_size=15, num_devices=2), str(tmp_path), data=tiny_data)


def test_unknown_config_key_is_named(tmp_path, tiny_data):
    config = tiny_config()
    config.unlock()
    config.optimizer.lr = 0.1
    with pytest.raises(ValueError, match="unknown config key 'optimizer.lr'"):
        train_and_evaluate(config, str(tmp_path), data=tiny_data)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "none"))
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        ckpt.restore({"x": np.zeros(3)})
    ckpt.save(1, {"x": np.zeros(3)}, {"epoch": 0, "batch": 1})
    ckpt.wait()
    with pytest.raises(CheckpointError, match="no checkpoint for step 7"):
        ckpt.restore({"x": np.zeros(3)}, step=7)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_data):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(stop_after_steps=2), workdir, data=tiny_data)
    step_dir = os.path.join(workdir, "checkpoints", "2", "state")
    # Destroy the array data, keep the directory that says "step 2 is here".
    for root, _, files in os.walk(step_dir):
        for name in files:
            if name != "_METADATA":
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        train_and_evaluate(tiny_config(), workdir, data=tiny_data)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, tiny_data):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(stop_after_steps=1), workdir, data=tiny_data)
    with pytest.raises(CheckpointError, match="does not match|expects"):
        train_and_evaluate(tiny_config(**{"model.depth": 14}), workdir, data=tiny_data)


def test_schedules():
    one = optim.learning_rate_schedule("onecycle", 0.2, 100)
    assert float(one(30)) == pytest.approx(0.2, rel=1e-3) and float(one(100)) < 1e-3
    cos = optim.learning_rate_schedule("cosine", 0.1, 100, warmup_steps=10)
    assert float(cos(0)) == 0.0 and float(cos(10)) == pytest.approx(0.1) and float(cos(100)) < 1e-6
    step = optim.learning_rate_schedule("step", 0.1, 100)  # /10 at 50 % and at 75 % (DFS's)
    assert [float(step(i)) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.learning_rate_schedule("linear", 0.1, 10)


def test_weight_decay_only_on_kernels():
    from flax import nnx
    from adaptive_jax.models import resnet
    params = nnx.state(resnet(20), nnx.Param)
    mask = optim._decay_mask(params)
    paths = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    assert all(m == ("kernel" in p) for p, m in paths.items())
    # stem, head, 4 per stage (first block's 2 convs, the stacked rest's 2), 2 projections
    assert sum(paths.values()) == 16


def test_stochastic_depth_trains_with_blocks_dropped_per_batch(tmp_path, tiny_data):
    workdir = str(tmp_path / "sd")
    result = train_and_evaluate(tiny_config(num_epochs=2, **{"model.stochastic_depth": 0.9}),
                                workdir, data=tiny_data)
    runs = [r["train_blocks_run"] for r in train_metrics(workdir).values()]
    # ResNet-8's 3 blocks survive with 0.7, 0.4 and 0.1: 0.4 of them per step in expectation
    assert len(runs) == 8 and all(0 <= r <= 1 for r in runs) and min(runs) < 1
    assert np.isfinite(result["test_loss"])


@pytest.mark.parametrize("value,match", [(1.0, "model.stochastic_depth = 1.0: expected"),
                                         (-0.5, "model.stochastic_depth = -0.5: expected")])
def test_stochastic_depth_out_of_range_is_named(tmp_path, tiny_data, value, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(tiny_config(**{"model.stochastic_depth": value}), str(tmp_path),
                           data=tiny_data)


def test_stochastic_depth_in_a_method_with_its_own_skipping_is_refused():
    from adaptive_jax.train import loop, ofas
    config = ofas.default_config()
    config.model.stochastic_depth = 0.5
    with pytest.raises(ValueError, match="stochastic_depth = 0.5 trains a plain backbone"):
        loop.validate_config(config, ofas.stage_b_task(None))


def test_unseen_training_images_are_the_ones_after_the_prefix(tiny_cifar_manual_dir, tmp_path):
    from adaptive_jax.train import loop

    manual_dir, train, _ = tiny_cifar_manual_dir
    config = tiny_config()
    config.data_dir, config.manual_dir = str(tmp_path / "tfds"), manual_dir
    config.num_train_examples = 80
    fitted, _ = loop.load_data(config)
    unseen = loop.unseen_training_images(config)
    assert len(fitted) == 80 and len(unseen) == 20
    np.testing.assert_array_equal(unseen.labels, train.labels[80:])
    np.testing.assert_array_equal(unseen.images, train.images[80:])
    config.num_train_examples = 0  # all of them
    with pytest.raises(ValueError, match="none is left unseen; set it below 100"):
        loop.unseen_training_images(config)
