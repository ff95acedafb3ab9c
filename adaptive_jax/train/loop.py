"""Supervised training and evaluation of a CIFAR ResNet: the loop behind experiments/baseline.

One linear function, in the spirit of big_vision's train.py: config -> data -> model -> optimiser
-> mesh -> checkpoint restore -> loop (train step, periodic metrics, epoch evaluation, checkpoint).
Resuming from `workdir` continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from adaptive_jax import config as config_lib, evaluation
from adaptive_jax.config import check_config_keys
from adaptive_jax.data import datasets, pipeline
from adaptive_jax.models.resnet import SHORTCUT_KINDS, CifarResNet, ResNetSpec
from adaptive_jax.nn.conv import LOWERINGS
from adaptive_jax.train import checkpoint, metrics as metrics_lib, optim, sharding, steps
from adaptive_jax.train.workdir import WorkdirLock, reconcile_metrics, record_recipe


def default_config() -> ml_collections.ConfigDict:
    """Every key the loop understands, with the CPU recipe's values. Experiments override these."""
    c = ml_collections.ConfigDict()
    c.dataset = "cifar10"
    c.data_dir = ""           # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.manual_dir = ""         # "" -> $ADAPTIVE_JAX_MANUAL_DIR
    c.download = True
    c.num_train_examples = 0  # 0 -> the whole split; smoke runs take a prefix
    c.num_eval_examples = 0

    c.model = ml_collections.ConfigDict()
    c.model.depth = 20
    c.model.shortcut = "projection"
    c.model.conv_lowering = "auto"  # conv gradients: "auto" (by backend) or "xla"
    c.model.stochastic_depth = 0.0  # > 0: blocks dropped per batch in supervised training, the
                                    # last block with this probability (Huang et al.: 0.5)
    c.init_from = ""          # "zoo:resnet32": start from a zoo backbone's weights and BN statistics

    c.seed = 0
    c.num_epochs = 15
    c.batch_size = 128
    c.eval_batch_size = 500
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.schedule = "onecycle"
    c.optimizer.learning_rate = 0.2
    c.optimizer.warmup_epochs = 1.0
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.label_smoothing = 0.0

    c.num_devices = 0         # 0 -> every local device
    c.log_every_steps = 50
    c.eval_every_epochs = 1       # the last epoch is always evaluated
    c.checkpoint_every_steps = 0  # 0 -> at the end of every epoch only
    c.max_checkpoints_to_keep = 3
    c.stop_after_steps = 0    # > 0: stop (as if interrupted) after this many steps in total
    c.on_nonfinite = "stop"   # a NaN / inf loss or gradient: "stop" (error), "skip" (drop the step)
    c.progress_bar = True
    return c


NONFINITE_ACTIONS = ("stop", "skip")

# The loop keys that say where data lives and how a run is logged, evaluated and saved, not what
# it trains: two runs that differ only in these trained the same weights.
BOOKKEEPING_KEYS = ("data_dir", "manual_dir", "download", "num_eval_examples", "eval_batch_size",
                    "num_devices", "log_every_steps", "eval_every_epochs", "checkpoint_every_steps",
                    "max_checkpoints_to_keep", "stop_after_steps", "progress_bar")


def recipe_of(config) -> dict:
    """`config` as a plain dict without its BOOKKEEPING_KEYS: what a run's weights depend on."""
    return {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING_KEYS}


def _value_checks() -> dict:
    c = config_lib
    return {
        "dataset": c.one_of(*datasets.CHANNEL_MEAN), "data_dir": c.string(),
        "manual_dir": c.string(), "download": c.boolean(),
        "num_train_examples": c.integer(0), "num_eval_examples": c.integer(0),
        "model.depth": (lambda d: c.integer(8)[0](d) and (d - 2) % 6 == 0,
                        "a CIFAR ResNet depth 6n+2 (8, 14, 20, 32, 56, 110, ...)"),
        "model.shortcut": c.one_of(*SHORTCUT_KINDS), "model.conv_lowering": c.one_of(*LOWERINGS),
        "model.stochastic_depth": c.number(0, below=1),
        "init_from": (lambda v: isinstance(v, str) and (v == "" or v.startswith("zoo:")),
                      '"" or "zoo:NAME" (python -c "from adaptive_jax import zoo; print(zoo.list())")'),
        "seed": c.integer(0, 2**32 - 1), "num_epochs": c.integer(0),
        "batch_size": c.integer(1), "eval_batch_size": c.integer(1),
        "optimizer.schedule": c.one_of(*optim.SCHEDULES),
        "optimizer.learning_rate": c.number(above=0), "optimizer.warmup_epochs": c.number(0),
        "optimizer.momentum": c.number(0, below=1), "optimizer.nesterov": c.boolean(),
        "optimizer.weight_decay": c.number(0), "optimizer.label_smoothing": c.number(0, below=1),
        "num_devices": c.integer(0), "log_every_steps": c.integer(1),
        "eval_every_epochs": c.integer(1), "checkpoint_every_steps": c.integer(0),
        "max_checkpoints_to_keep": c.integer(1), "stop_after_steps": c.integer(0),
        "on_nonfinite": c.one_of(*NONFINITE_ACTIONS), "progress_bar": c.boolean(),
    }


def validate_config(config, task: Task | None = None) -> None:
    """The whole config, before any data is loaded: no unknown keys, every loop key's type and
    range (all errors at once), a zoo `init_from` that exists and fits `config.model`, and the
    task's own keys. Experiments with several stages call it once up front."""
    task = task or Task()
    check_config_keys(config, task.reference_config())
    config_lib.check_config_values(config, _value_checks())
    if task.validate_config is not None:
        task.validate_config(config)
    if config.model.stochastic_depth and task.make_train_step is not _supervised_train_step:
        raise ValueError(
            f"config.model.stochastic_depth = {config.model.stochastic_depth} trains a plain "
            "backbone (the zoo recipe, experiments/zoo); this task's training step has its own "
            "skipping and would ignore it: leave it at 0")
    if config.init_from:
        from adaptive_jax import zoo
        source = config.init_from
        arch = zoo.record(source.removeprefix("zoo:")).architecture  # unknown: names the entries
        arch = arch.get("backbone", arch)  # an OFAS entry: its backbone
        for key in ("depth", "shortcut"):
            if arch.get(key) != config.model[key]:
                raise zoo.ZooError(
                    f"init_from {source!r}: the zoo model is a {zoo.describe(arch)}, but "
                    f"config.model.{key} = {config.model[key]!r}; pass "
                    f"--config.model.{key}={arch.get(key)} or pick another entry")


def build_model(config, num_classes: int, in_channels: int) -> CifarResNet:
    spec = ResNetSpec(depth=config.model.depth, num_classes=num_classes,
                      shortcut=config.model.shortcut, in_channels=in_channels,
                      conv_lowering=config.model.conv_lowering)
    return CifarResNet(spec, rngs=nnx.Rngs(config.seed))


def load_data(config) -> tuple[datasets.Split, datasets.Split]:
    kwargs = dict(data_dir=config.data_dir or None, manual_dir=config.manual_dir or None,
                  download=config.download)
    train = datasets.load_split(config.dataset, "train", **kwargs)
    test = datasets.load_split(config.dataset, "test", **kwargs)
    return train.first(config.num_train_examples), test.first(config.num_eval_examples)


def unseen_training_images(config) -> datasets.Split:
    """The training images after the first `num_train_examples`, which a run of `config` never
    trains on: a calibration set that is not the test set."""
    train = datasets.load_split(config.dataset, "train", data_dir=config.data_dir or None,
                                manual_dir=config.manual_dir or None, download=config.download)
    n = config.num_train_examples
    if n <= 0 or n >= len(train):
        raise ValueError(f"num_train_examples={n} trains on all {len(train)} training images, so "
                         f"none is left unseen; set it below {len(train)} (e.g. "
                         f"--config.num_train_examples={len(train) - min(2000, len(train) // 10)})")
    return datasets.Split(train.images[n:], train.labels[n:], train.num_classes)


def evaluate(eval_step, state, split: datasets.Split, batch_size: int, mesh) -> dict:
    """Test-set means: an eval step returns per-batch sums `<name>_sum` and `count`; each becomes
    `test_<name>` = sum / count (`loss_sum` -> test_loss, `accuracy_sum` -> test_accuracy, ...)."""
    totals = None
    for images, labels, mask in pipeline.eval_batches(split, batch_size):
        out = eval_step(state.params, state.batch_stats, *sharding.shard_batch((images, labels, mask), mesh))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    means = {f"test_{k.removesuffix('_sum')}": float(v / totals["count"])
             for k, v in totals.items() if k.endswith("_sum")}
    return {**means, "test_examples": int(totals["count"])}


def test_outputs(graphdef, state, split: datasets.Split, dataset: str, output: Callable,
                 batch_size: int = 500) -> np.ndarray:
    """`output(model, images)` (eval mode, images normalised) for every image of `split`,
    concatenated over the batches: `evaluation.split_outputs` on a train state."""
    return evaluation.split_outputs(graphdef, state.params, state.batch_stats, split, dataset,
                                    output, batch_size)


def test_plans(graphdef, state, split: datasets.Split, dataset: str,
               batch_size: int = 500) -> np.ndarray:
    """(N, L): the plan `model.plan(images)` of every image of `split` (eval mode): an adaptive
    model's per-image decisions (OFAS: bools from the head; DFS: option ints from its gate)."""
    return test_outputs(graphdef, state, split, dataset, lambda model, x: model.plan(x), batch_size)


def test_correct(graphdef, state, split: datasets.Split, dataset: str,
                 batch_size: int = 500) -> np.ndarray:
    """(N,) bools: whether the model's top-1 (eval mode) is each image's label."""
    top1 = test_outputs(graphdef, state, split, dataset, lambda model, x: model(x).argmax(-1),
                        batch_size)
    return top1 == np.asarray(split.labels)


def make_tx(config, steps_per_epoch: int, total_steps: int):
    """(optax transformation, learning-rate schedule) of `config.optimizer`."""
    schedule = optim.learning_rate_schedule(
        config.optimizer.schedule, config.optimizer.learning_rate, total_steps,
        int(config.optimizer.warmup_epochs * steps_per_epoch))
    tx = optim.make_optimizer(learning_rate=schedule, momentum=config.optimizer.momentum,
                              nesterov=config.optimizer.nesterov,
                              weight_decay=config.optimizer.weight_decay)
    return tx, schedule


def _supervised_train_step(graphdef, tx, config, steps_per_epoch: int = 1, **common):
    return steps.make_train_step(graphdef, tx, label_smoothing=config.optimizer.label_smoothing,
                                 stochastic_depth=config.model.stochastic_depth, **common)


def _supervised_eval_step(graphdef, config, **common):
    return steps.make_eval_step(graphdef, **common)


@dataclasses.dataclass(frozen=True)
class Task:
    """What `train_and_evaluate` trains: the pieces a method replaces, the loop around them stays.

    build_model(config, num_classes, in_channels) -> nnx.Module
    make_tx(config, steps_per_epoch, total_steps) -> (optax transformation, schedule)
    make_train_step(graphdef, tx, config, num_classes=, mean=, std=, steps_per_epoch=) -> jit'd
        (state, images uint8, labels) -> (state, metrics)
    make_eval_step(graphdef, config, num_classes=, mean=, std=) -> jit'd
        (params, batch_stats, images uint8, labels, mask) -> {"<name>_sum": ..., "count": ...}
    init_state(state) -> state: e.g. start from another run's weights (applied to a fresh run only,
        never over a restored checkpoint)
    validate_config(config): checks the method's own keys before any data is loaded (the loop's
        keys are checked by `validate_config` in this module)
    reference_config: the config whose keys are the known ones (unknown keys are errors)
    """

    # (the defaults name this module's functions: a class body reads globals it does not shadow yet)
    build_model: Callable = build_model
    make_tx: Callable = make_tx
    make_train_step: Callable = _supervised_train_step
    make_eval_step: Callable = _supervised_eval_step
    init_state: Callable | None = None
    reference_config: Callable = default_config
    validate_config: Callable | None = None  # (config) -> None: the method's own keys, raises


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient (config.on_nonfinite = "stop")."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: tuple[datasets.Split, datasets.Split] | None = None,
                       task: Task | None = None) -> dict:
    """Trains, evaluates after every epoch, checkpoints into `workdir`; returns the final metrics.

    `data` (train, test) bypasses TFDS, for users with their own arrays and for tests. `task`
    (default: supervised classification of `config.model`) is what a method plugs in. One run
    holds `workdir` at a time (a second is refused with the holder's pid); docs/robustness.md
    says what happens on NaN, on a corrupt checkpoint and on every other way out of a run.
    """
    task = task or Task()
    validate_config(config, task)
    with WorkdirLock(workdir):
        return _train_and_evaluate(config, workdir, data, task)


def _train_and_evaluate(config, workdir, data, task) -> dict:
    train_split, test_split = data if data is not None else load_data(config)
    mean, std = datasets.CHANNEL_MEAN[config.dataset], datasets.CHANNEL_STD[config.dataset]

    model = task.build_model(config, train_split.num_classes, train_split.images.shape[-1])
    if config.init_from:  # before the state is made, so a restored checkpoint still wins
        from adaptive_jax import zoo
        zoo.init_from(model, config.init_from)
    mesh = sharding.data_mesh(config.num_devices or None)
    sharding.check_batch_divides(config.batch_size, mesh)
    sharding.check_batch_divides(config.eval_batch_size, mesh)

    iterator = pipeline.EpochIterator(train_split, config.batch_size, config.seed)
    steps_per_epoch = iterator.batches_per_epoch
    total_steps = steps_per_epoch * config.num_epochs
    tx, schedule = task.make_tx(config, steps_per_epoch, total_steps)
    graphdef, state = steps.create_train_state(model, tx, config.seed)

    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   config.max_checkpoints_to_keep)
    try:  # every way out waits for in-flight checkpoint writes and closes the manager
        restored_step, trained_s = None, 0.0
        if ckpt.latest_step() is not None:
            state, data_state, restored_step, skipped = ckpt.restore_latest_intact(state)
            for bad_step, message in skipped:
                print(f"WARNING: skipped checkpoint step {bad_step} (moved to {ckpt.directory}"
                      f".corrupt/): {message}; resuming from step {restored_step}", flush=True)
            trained_s = data_state.pop(TRAIN_TIME_KEY, None)
            iterator.state = pipeline.IteratorState.from_dict(data_state)
        elif task.init_state is not None:
            state = task.init_state(state)
        metrics_path = os.path.join(workdir, "metrics.jsonl")
        recipe = recipe_of(config)
        reconcile_metrics(metrics_path, restored_step, recipe)
        record_recipe(workdir, recipe)
        if trained_s is None:  # a checkpoint written before it kept its time: the last record's
            trained_s = metrics_lib.recorded_train_time(workdir) or 0.0
        state = sharding.replicate(state, mesh)

        common = dict(num_classes=train_split.num_classes, mean=mean, std=std)
        train_step = task.make_train_step(graphdef, tx, config, steps_per_epoch=steps_per_epoch,
                                          **common)
        eval_step = task.make_eval_step(graphdef, config, **common)
        writer = metrics_lib.MetricsWriter(metrics_path)
        return _loop(config, ckpt, writer, iterator, train_step, eval_step, schedule, state,
                     graphdef, test_split, mesh, steps_per_epoch, trained_s)
    finally:
        _close(ckpt)


# The checkpoint's data record keeps the training time so far, so that a resumed run's
# train_time_s is the whole run's, not its last session's.
TRAIN_TIME_KEY = "train_time_s"


def _close(ckpt) -> None:
    try:
        ckpt.wait()
    finally:
        ckpt.close()


def _loop(config, ckpt, writer, iterator, train_step, eval_step, schedule, state, graphdef,
          test_split, mesh, steps_per_epoch, trained_s: float = 0.0) -> dict:
    step = int(state.step)
    saved = {step}  # the restored (or initial) state: nothing new to save
    nonfinite_total = 0
    # device metrics since the last host sync, with the (step, epoch, batch) each belongs to: the
    # host syncs only to log, save and evaluate, never per step; `fetched` holds what was synced
    # (and checked) since the last log line
    pending: list[tuple[tuple[int, int, int], dict]] = []
    fetched: list[dict] = []

    def sync() -> None:
        """Fetches pending metrics; stops on a dropped (non-finite) step unless told to skip."""
        nonlocal pending, nonfinite_total
        if not pending:
            return
        positions, values = zip(*pending)
        values = jax.device_get(list(values))
        pending = []
        bad = [pos for pos, m in zip(positions, values) if m.get("nonfinite", 0.0)]
        if bad and config.on_nonfinite == "stop":
            raise _nonfinite_error(config, bad, step, ckpt, steps_per_epoch)
        if bad:
            nonfinite_total += len(bad)
            print(f"WARNING: dropped {len(bad)} steps with a non-finite loss or gradient (first: "
                  f"step {bad[0][0]}); {nonfinite_total} so far", flush=True)
        fetched.extend(values)

    def log_means() -> dict:
        sync()
        means = jax.tree.map(lambda *xs: float(np.mean(xs)),
                             *[{k: v for k, v in m.items() if k != "nonfinite"} for m in fetched])
        if config.on_nonfinite == "skip":
            means["nonfinite_steps"] = int(sum(m.get("nonfinite", 0.0) for m in fetched))
        fetched.clear()
        return means

    def save():  # at most once per step: a step's checkpoint can coincide with an epoch end
        if step not in saved:
            sync()  # a checkpoint never holds a run that has gone non-finite unnoticed
            ckpt.save(step, state, {**iterator.state.to_dict(),
                                    TRAIN_TIME_KEY: time.perf_counter() - start})
            saved.add(step)

    result = {}
    start = time.perf_counter() - trained_s  # train_time_s counts the sessions before a resume
    while iterator.state.epoch < config.num_epochs:
        epoch = iterator.state.epoch
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=iterator.state.batch, unit="step",
                   desc=f"epoch {epoch + 1}/{config.num_epochs}",
                   disable=not config.progress_bar, leave=False)
        for images, labels in iterator.epoch_batches():
            batch = iterator.state.batch - 1  # this batch (the iterator has counted it as taken)
            state, step_metrics = train_step(state, *sharding.shard_batch((images, labels), mesh))
            step += 1
            pending.append(((step, epoch, batch), step_metrics))
            bar.update()
            if step % config.log_every_steps == 0:
                means = log_means()
                writer.write(step, epoch=epoch, learning_rate=float(schedule(step - 1)),
                             **{f"train_{k}": v for k, v in means.items()})
                bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.3f}")
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                save()
            if config.stop_after_steps and step >= config.stop_after_steps:
                bar.close()
                save()
                return {"stopped_at_step": step}
        bar.close()
        epoch_time = time.perf_counter() - epoch_start
        sync()
        last = epoch + 1 == config.num_epochs
        if last or (epoch + 1) % config.eval_every_epochs == 0:
            # evaluated and written before the epoch's checkpoint: a run killed in between
            # resumes from the step before, drops this record and evaluates again
            result = evaluate(eval_step, state, test_split, config.eval_batch_size, mesh)
            result.update(epoch=epoch + 1, epoch_time_s=epoch_time,
                          train_time_s=time.perf_counter() - start)
            _check_finite_evaluation(result, step, epoch, ckpt)  # before it is written or saved
            writer.write(step, **result)
            print(f"epoch {epoch + 1}/{config.num_epochs}: test accuracy "
                  f"{result['test_accuracy']:.4f}, test loss {result['test_loss']:.4f}, "
                  f"{epoch_time:.0f} s", flush=True)
        save()
    if not result:  # resumed a finished run: nothing trained, so evaluate what was restored
        result = evaluate(eval_step, state, test_split, config.eval_batch_size, mesh)
    if config.on_nonfinite == "skip":
        result["nonfinite_steps"] = nonfinite_total
    result["step"] = step
    result["state"] = state
    result["graphdef"] = graphdef
    return result


def _check_finite_evaluation(result: dict, step: int, epoch: int, ckpt) -> None:
    """Finite training steps can still leave weights that evaluate to NaN (huge but finite
    values); such a state is neither written to the metrics nor checkpointed."""
    bad = {k: v for k, v in result.items() if isinstance(v, float) and not np.isfinite(v)}
    if bad:
        good = ckpt.latest_step()
        raise NonFiniteError(
            f"evaluation after epoch {epoch + 1} (step {step}) is not finite: {bad}; the weights "
            "have diverged, so this state was not saved"
            + (f"; the last good checkpoint is step {good} in {ckpt.directory}" if good is not None
               else "") + ". Usual cause: a learning rate too high")


def _nonfinite_error(config, bad, step, ckpt, steps_per_epoch) -> NonFiniteError:
    (bad_step, epoch, batch) = bad[0]
    good = ckpt.latest_step()
    where = (f"the last good checkpoint is step {good} in {ckpt.directory} (intact; rerunning "
             "resumes from it)" if good is not None else
             f"no checkpoint was saved yet in {ckpt.directory}")
    return NonFiniteError(
        f"non-finite loss or gradient at step {bad_step} (epoch {epoch + 1}, batch {batch + 1} of "
        f"{steps_per_epoch}; {len(bad)} such steps up to step {step}); its update was not applied "
        f"and nothing after it was saved: {where}. Usual causes: a learning rate too high "
        f"(optimizer.learning_rate = {config.optimizer.learning_rate}) or bad input data. To drop "
        "such steps and go on instead, set config.on_nonfinite='skip'")
