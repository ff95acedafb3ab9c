"""Fault injection: what a long run survives (NaN steps, exceptions after a save, corrupt
checkpoints, a second run on the same workdir, stale metrics) and what is refused at the door."""

import glob
import math
import os

import jax
import numpy as np
import pytest

from adaptive_jax.data import datasets
from adaptive_jax.train import (Checkpointer, NonFiniteError, WorkdirError, WorkdirLock, loop,
                                read_metrics, steps, train_and_evaluate)
from tests.conftest import random_split
from tests.test_train import tiny_config, train_metrics


@pytest.fixture(scope="module")
def tiny_data():
    return random_split(64, seed=10), random_split(40, seed=11)


def poisoned_task(poison_steps, armed=lambda: True):
    """The supervised task, except that the steps in `poison_steps` (1-based) run on NaN inputs
    (the real train step, normalising with a NaN std) while `armed()` is true."""

    def make_train_step(graphdef, tx, config, *, num_classes, mean, std, steps_per_epoch=1):
        kwargs = dict(num_classes=num_classes, mean=mean)
        good = steps.make_train_step(graphdef, tx, std=std, **kwargs)
        bad = steps.make_train_step(graphdef, tx, std=(math.nan,) * len(std), **kwargs)

        def train_step(state, images, labels):
            poisoned = armed() and int(state.step) + 1 in poison_steps
            return (bad if poisoned else good)(state, images, labels)

        return train_step

    return loop.Task(make_train_step=make_train_step)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_data):
    """The uninterrupted run every faulted run must end up equal to (8 steps, 2 epochs)."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    result = train_and_evaluate(tiny_config(), workdir, data=tiny_data)
    return result, train_metrics(workdir)


# -- non-finite training ------------------------------------------------------------------------

def test_a_diverging_learning_rate_stops_the_run_and_keeps_a_finite_checkpoint(tmp_path, tiny_data):
    workdir = str(tmp_path / "run")
    config = tiny_config(**{"optimizer.learning_rate": 1e6})
    with pytest.raises(NonFiniteError, match=r"step \d+.*learning_rate = 1000000.0"):
        train_and_evaluate(config, workdir, data=tiny_data)
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    for step in ckpt.all_steps():  # whatever was saved is finite
        _, template = steps.create_train_state(loop.build_model(config, 10, 3),
                                               loop.make_tx(config, 4, 8)[0], 0)
        state, _ = ckpt.restore(template, step)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    ckpt.close()


def test_a_nan_step_stops_naming_it_and_a_resumed_run_matches_the_straight_one(
        tmp_path, tiny_data, straight_run):
    workdir = str(tmp_path / "run")
    config = tiny_config(checkpoint_every_steps=2)
    armed = [True]
    task = poisoned_task({5}, armed=lambda: armed[0])
    # step 5 is the first of epoch 2 (4 steps per epoch)
    with pytest.raises(NonFiniteError, match=r"at step 5 \(epoch 2, batch 1 of 4; 1 such steps up "
                                             r"to step 5\).*last good checkpoint is step 4"):
        train_and_evaluate(config, workdir, data=tiny_data, task=task)
    assert Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [2, 4]
    armed[0] = False  # the fault is gone: the rerun resumes from step 4
    result = train_and_evaluate(tiny_config(), workdir, data=tiny_data, task=task)
    straight, straight_metrics = straight_run
    assert leaves_equal(result["state"].params, straight["state"].params)
    assert result["test_accuracy"] == straight["test_accuracy"]
    resumed = train_metrics(workdir)
    assert sorted(resumed) == list(range(1, 9))
    for step in (5, 6, 7, 8):
        assert resumed[step]["train_loss"] == straight_metrics[step]["train_loss"]


def test_skip_mode_drops_nan_steps_counts_them_and_keeps_the_weights_finite(tmp_path, tiny_data):
    workdir = str(tmp_path / "run")
    result = train_and_evaluate(tiny_config(on_nonfinite="skip"), workdir, data=tiny_data,
                                task=poisoned_task({3, 6}))
    assert result["nonfinite_steps"] == 2
    assert result["step"] == 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(result["state"].params))
    logged = {r["step"]: r["train_nonfinite_steps"] for r in read_metrics(
        os.path.join(workdir, "metrics.jsonl")) if "train_nonfinite_steps" in r}
    assert logged == {s: int(s in (3, 6)) for s in range(1, 9)}


def test_a_dropped_step_leaves_every_array_of_the_state_unchanged(tiny_data):
    config = tiny_config()
    model = loop.build_model(config, 10, 3)
    tx, _ = loop.make_tx(config, 4, 8)
    graphdef, state = steps.create_train_state(model, tx, 0)
    before = jax.tree.map(np.array, state)
    step = steps.make_train_step(graphdef, tx, num_classes=10, mean=datasets.CHANNEL_MEAN["cifar10"],
                                 std=(math.nan,) * 3)  # the poisoned task's step: one compile
    images, labels = tiny_data[0].images[:16], tiny_data[0].labels[:16]
    after, metrics = step(state, images, labels)
    assert float(metrics["nonfinite"]) == 1.0
    assert int(after.step) == 1
    assert leaves_equal(after.replace(step=before.step), before)


# -- every way out closes the checkpoints ---------------------------------------------------------

def test_an_exception_after_a_save_leaves_a_complete_checkpoint_and_frees_the_workdir(
        tmp_path, tiny_data):
    def failing_eval_step(graphdef, config, **common):
        def eval_step(*args):
            raise RuntimeError("evaluation failed")
        return eval_step

    workdir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="evaluation failed"):
        # checkpoints at steps 2 and 4, then the epoch-end evaluation raises
        train_and_evaluate(tiny_config(checkpoint_every_steps=2), workdir, data=tiny_data,
                           task=loop.Task(make_eval_step=failing_eval_step))
    assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))
    assert Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [2, 4]
    result = train_and_evaluate(tiny_config(), workdir, data=tiny_data)  # lock released, resumes
    assert result["step"] == 8


# -- checkpoint integrity -------------------------------------------------------------------------

def test_a_checkpoint_changed_after_its_save_is_named_by_its_checksum(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    ckpt.save(1, {"w": np.arange(4.0)}, {"epoch": 0, "batch": 1})
    ckpt.save(2, {"w": np.arange(4.0) + 1}, {"epoch": 0, "batch": 2})
    ckpt.wait()
    ckpt.close()
    # step 2's arrays replaced by step 1's: a well-formed checkpoint with the wrong contents
    import shutil
    shutil.rmtree(tmp_path / "ckpt" / "2" / "state")
    shutil.copytree(tmp_path / "ckpt" / "1" / "state", tmp_path / "ckpt" / "2" / "state")
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    with pytest.raises(Exception, match="step 2 .* corrupt: its arrays do not match the sha256"):
        ckpt.restore({"w": np.zeros(4)}, 2)
    state, data, step, skipped = ckpt.restore_latest_intact({"w": np.zeros(4)})
    assert step == 1 and [s for s, _ in skipped] == [2]
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    assert ckpt.all_steps() == [1]  # step 2 moved aside, not deleted
    assert os.listdir(str(tmp_path / "ckpt") + ".corrupt")[0].startswith("2.")
    ckpt.close()


def test_bit_flips_in_the_latest_checkpoint_resume_from_the_one_before(
        tmp_path, tiny_data, straight_run, capsys):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(stop_after_steps=6, checkpoint_every_steps=2), workdir,
                       data=tiny_data)
    files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", "6", "state", "**"),
                                  recursive=True) if os.path.isfile(f)]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:  # 64 bytes flipped in the middle of the array data
        f.seek(os.path.getsize(biggest) // 2)
        chunk = f.read(64)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
    result = train_and_evaluate(tiny_config(), workdir, data=tiny_data)
    assert "skipped checkpoint step 6" in capsys.readouterr().out
    straight, straight_metrics = straight_run
    assert leaves_equal(result["state"].params, straight["state"].params)
    resumed = train_metrics(workdir)
    assert sorted(resumed) == list(range(1, 9))  # steps 5 and 6 again, each once
    assert resumed[5]["train_loss"] == straight_metrics[5]["train_loss"]
    assert os.path.exists(os.path.join(workdir, "metrics.dropped.jsonl"))


# -- one run per workdir, one history per run -------------------------------------------------------

def test_a_second_run_on_a_held_workdir_is_refused_with_the_holders_pid(tmp_path, tiny_data):
    workdir = str(tmp_path / "run")
    with WorkdirLock(workdir):
        with pytest.raises(WorkdirError, match=f"in use by another run \\(pid {os.getpid()}"):
            train_and_evaluate(tiny_config(), workdir, data=tiny_data)
    # released: the same workdir trains now
    assert train_and_evaluate(tiny_config(), workdir, data=tiny_data)["step"] == 8


def test_a_second_process_is_refused_too(tmp_path):
    import subprocess
    import sys
    workdir = str(tmp_path / "run")
    with WorkdirLock(workdir):
        out = subprocess.run(
            [sys.executable, "-c", "from adaptive_jax.train import WorkdirLock\n"
             f"WorkdirLock({workdir!r}).acquire()"], capture_output=True, text=True)
    assert out.returncode != 0 and f"pid {os.getpid()}" in out.stderr


def killed_before_its_first_checkpoint(workdir, tiny_data, **config):
    """A run that logged 2 steps and lost its checkpoint (as if killed before the first save)."""
    train_and_evaluate(tiny_config(stop_after_steps=2, **config), workdir, data=tiny_data)
    import shutil
    shutil.rmtree(os.path.join(workdir, "checkpoints"))


def test_a_fresh_run_refuses_a_workdir_that_holds_another_runs_metrics(tmp_path, tiny_data):
    workdir = str(tmp_path / "run")
    killed_before_its_first_checkpoint(workdir, tiny_data, seed=1)
    with pytest.raises(WorkdirError, match="metrics.jsonl holds 2 metric records .* no checkpoint"
                       ".* another recipe \\(seed: held 1, wanted 0\\)"):
        train_and_evaluate(tiny_config(), workdir, data=tiny_data)
    os.remove(os.path.join(workdir, "recipe.json"))  # a history with no recipe: refused too
    with pytest.raises(WorkdirError, match="no recipe recorded beside it"):
        train_and_evaluate(tiny_config(), workdir, data=tiny_data)


def test_the_same_run_killed_before_its_first_checkpoint_starts_over(tmp_path, tiny_data,
                                                                      straight_run, capsys):
    workdir = str(tmp_path / "run")
    killed_before_its_first_checkpoint(workdir, tiny_data)
    result = train_and_evaluate(tiny_config(), workdir, data=tiny_data)  # only bookkeeping differs
    assert "moved 2 metric records" in capsys.readouterr().out
    straight, straight_metrics = straight_run
    assert leaves_equal(result["state"].params, straight["state"].params)
    again = train_metrics(workdir)
    assert sorted(again) == list(range(1, 9))
    assert again[2]["train_loss"] == straight_metrics[2]["train_loss"]
    assert len(read_metrics(os.path.join(workdir, "metrics.dropped.jsonl"))) == 2


# -- refused at the door ------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("log_every_steps", 0, "log_every_steps = 0: expected an integer >= 1"),
    ("seed", -1, "seed = -1: expected an integer in"),
    ("eval_batch_size", 0, "eval_batch_size = 0"),
    ("eval_every_epochs", 0, "eval_every_epochs = 0"),
    ("optimizer.learning_rate", math.nan, "learning_rate = nan: expected a finite number > 0"),
    ("optimizer.schedule", "cos", "expected one of \\['cosine'"),
    ("model.depth", 21, "depth 6n\\+2"),
    ("on_nonfinite", "ignore", "on_nonfinite = 'ignore'"),
])
def test_bad_config_values_fail_before_any_data_is_loaded(tmp_path, key, value, message):
    config = tiny_config(**{key: value}, data_dir=str(tmp_path / "no-data"), download=False)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, str(tmp_path / "run"))  # data=None: would load from data_dir
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_every_bad_value_is_listed_at_once(tmp_path):
    config = tiny_config(seed=-1, batch_size=0)
    with pytest.raises(ValueError, match="(?s)invalid config values.*seed.*batch_size"):
        loop.validate_config(config)


def test_init_from_another_depth_fails_before_any_data_is_loaded(tmp_path):
    config = tiny_config(init_from="zoo:resnet32", data_dir=str(tmp_path / "no-data"), download=False)
    with pytest.raises(Exception, match="zoo model is a ResNet-32.*--config.model.depth=32"):
        train_and_evaluate(config, str(tmp_path / "run"))


def test_ofas_penalties_are_checked_before_stage_a():
    from adaptive_jax.train import ofas
    config = ofas.default_config()
    config.rl.penalties = ("abc",)
    with pytest.raises(ValueError, match="rl.penalties = \\('abc',\\): expected a list.*"
                                         "each item a finite number >= 0"):
        loop.validate_config(config, ofas.stage_b_task(None))


# -- the runtime manager survives bad measurements --------------------------------------------------

def _manager(**kwargs):
    from adaptive_jax.runtime import OperatingPoint, RuntimeManager
    points = [OperatingPoint("small", 10.0, 0.80), OperatingPoint("mid", 20.0, 0.85),
              OperatingPoint("big", 40.0, 0.90)]
    return RuntimeManager(points, 25.0, window=4, warmup=2, **kwargs)


@pytest.mark.parametrize("latency", [math.inf, math.nan, -5.0, 0.0, True, "12"])
def test_a_bad_latency_is_refused_and_never_reaches_the_window(latency):
    manager = _manager()
    with pytest.raises(ValueError, match="observed latency must be a finite positive number"):
        manager.record(latency)
    tolerant = _manager(on_invalid="ignore")
    for _ in range(3):
        tolerant.record(20.0)
    assert tolerant.record(latency) is None and tolerant.rejected == 1
    # the window still describes the machine: a slowdown of 2 sends it down a level
    switches = [tolerant.record(40.0) for _ in range(4)]
    assert math.isfinite(tolerant.slowdown) and tolerant.current.name == "small"
    assert any(s is not None for s in switches)


@pytest.mark.parametrize("budget", [-1.0, 0.0, math.nan, "25", None])
def test_a_bad_budget_is_refused_everywhere_it_enters(budget):
    from adaptive_jax.runtime import OperatingPoint, choose
    with pytest.raises(ValueError, match="budget"):
        _manager().set_constraints(budget)
    if budget is not None:  # choose() takes None as "no budget"
        with pytest.raises(ValueError, match="latency budget must be a positive number"):
            choose([OperatingPoint("a", 1.0, 0.5)], budget)


def test_bad_floors_and_scales_are_refused():
    from adaptive_jax.runtime import OperatingPoint, RuntimeManager, choose
    points = [OperatingPoint("a", 1.0, 0.5)]
    with pytest.raises(ValueError, match="accuracy floor must be a finite number"):
        choose(points, 10.0, accuracy_floor=math.nan)
    with pytest.raises(ValueError, match="latency scale must be a finite positive"):
        choose(points, 10.0, latency_scale=-1.0)
    with pytest.raises(ValueError, match="accuracy must be a finite number"):
        OperatingPoint("b", 1.0, math.nan)
    with pytest.raises(ValueError, match="window must be an integer"):
        RuntimeManager(points, 10.0, window=2.5)


# -- near-misses at the public API ---------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet8():
    from flax import nnx
    from adaptive_jax.models import CifarResNet, ResNetSpec
    model = CifarResNet(ResNetSpec(8), rngs=nnx.Rngs(0))
    model.eval()
    return model


def test_plans_as_lists_and_arrays_are_accepted_where_a_plan_is_expected(resnet8):
    from flax import nnx
    from adaptive_jax.execution import StaticExecutor, cond, make_predict_fn, masked
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    want = cond().forward(resnet8, images, np.array([True, False, True]))
    np.testing.assert_allclose(cond().forward(resnet8, images, [True, False, True]), want, atol=1e-5)
    np.testing.assert_allclose(masked().forward(resnet8, images, [True, False, True]), want, atol=1e-5)
    # 0 / 1 integers are the option plan of the run-or-skip menu: the same plan
    np.testing.assert_allclose(masked().forward(resnet8, images, [1, 0, 1]), want, atol=1e-5)
    executor = StaticExecutor(*nnx.split(resnet8, nnx.Param, nnx.BatchStat))
    np.testing.assert_allclose(executor(images, np.array([True, False, True])), want, atol=1e-5)
    np.testing.assert_allclose(executor(images, [True, False, True]), want, atol=1e-5)
    assert executor.stats()["compilations"] == 1  # the array and the list are the same plan
    with pytest.raises(TypeError, match="must have dtype bool.*probs > 0.5"):
        cond().forward(resnet8, images, [0.9, 0.2, 0.7])  # probabilities, not a plan
    graphdef, params, stats = nnx.split(resnet8, nnx.Param, nnx.BatchStat)
    with pytest.raises(ValueError, match=r"option 2 is not on the menu \('skip', 'run'\)"):
        make_predict_fn(graphdef, "cond")(params, stats, images, np.array([1, 2, 0]))


def test_counts_of_buckets_executables_and_channels_are_checked():
    from flax import nnx
    from adaptive_jax.execution import ExecutableCache, SubnetExecutor, bucketed, capacities
    from adaptive_jax.models.slimmable import SlimmableResNet, SlimmableSpec
    with pytest.raises(ValueError, match="buckets must be an integer >= 1"):
        capacities(8, 0)
    with pytest.raises(ValueError, match="buckets must be an integer >= 1"):
        bucketed(buckets=0)
    with pytest.raises(ValueError, match="max_executables must be an integer >= 1"):
        ExecutableCache(0)
    model = SlimmableResNet(SlimmableSpec(8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channel_multiple must be an integer >= 1"):
        SubnetExecutor(model, channel_multiple=0)  # was silently replaced by 8


def test_widths_accept_numpy_scalars_and_name_what_they_refuse():
    from flax import nnx
    from adaptive_jax.models.slimmable import SlimmableResNet, SlimmableSpec, WidthSubnet
    model = SlimmableResNet(SlimmableSpec(8), rngs=nnx.Rngs(0))
    images = np.zeros((1, 32, 32, 3), np.float32)
    np.testing.assert_array_equal(model(images, np.float32(0.5)), model(images, 0.5))
    assert WidthSubnet.of(np.float64(0.25)) == WidthSubnet.of(0.25)
    assert WidthSubnet.of([0.25, np.float32(0.5), 1]) == WidthSubnet((0.25, 0.5, 1.0))
    with pytest.raises(TypeError, match="a width is a number in \\(0, 1\\] such as 0.5, got str"):
        model(images, "0.5")
    with pytest.raises(TypeError, match="got bool True"):
        WidthSubnet.of(True)
    with pytest.raises(ValueError, match="strictly increasing \\(no repeats\\)"):
        SlimmableSpec(8, widths=(0.5, 0.5, 1.0))
    assert SlimmableSpec(8, widths=np.array([0.5, 1.0])).widths == (0.5, 1.0)


def test_nan_images_are_refused_by_the_compiled_paths_when_asked(resnet8):
    from flax import nnx
    from adaptive_jax.execution import StaticExecutor, make_predict_fn
    graphdef, params, stats = nnx.split(resnet8, nnx.Param, nnx.BatchStat)
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[1, 3, 4, 0] = np.nan
    plan = np.ones(3, bool)
    unchecked = make_predict_fn(graphdef, "cond")
    unchecked(params, stats, images, plan)  # off by default: no error, whatever XLA returns
    with pytest.raises(ValueError, match="1 of 2 images contain NaN or inf pixels \\(first: image 1\\)"):
        make_predict_fn(graphdef, "cond", check_finite=True)(params, stats, images, plan)
    with pytest.raises(ValueError, match="NaN or inf"):
        make_predict_fn(graphdef, check_finite=True)(params, stats, jax.numpy.asarray(images))
    with pytest.raises(ValueError, match="NaN or inf"):
        StaticExecutor(graphdef, params, stats, check_finite=True)(images, plan)
    clean = np.zeros((2, 32, 32, 3), np.float32)
    np.testing.assert_allclose(make_predict_fn(graphdef, "cond", check_finite=True)(
        params, stats, clean, plan), unchecked(params, stats, clean, plan))


def test_a_download_without_a_network_fails_at_once_with_the_offline_way(tmp_path, monkeypatch):
    import socket
    import time
    from adaptive_jax.data.datasets import DataNotFoundError, load_split

    def no_network(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    (tmp_path / "empty").mkdir()
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match="(?s)no network: cannot reach www.cs.toronto.edu.*"
                                                "offline: put"):
        load_split("cifar10", "train", data_dir=str(tmp_path / "tfds"),
                   manual_dir=str(tmp_path / "empty"), download=True)
    assert time.perf_counter() - start < 30  # not TFDS's minutes of retries
