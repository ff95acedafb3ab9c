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

from adaptive_jax.config import check_config_keys
from adaptive_jax.data import datasets, pipeline
from adaptive_jax.models.resnet import CifarResNet, ResNetSpec
from adaptive_jax.train import checkpoint, metrics as metrics_lib, optim, sharding, steps


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
    c.model.conv_lowering = "auto"  # conv weight gradients: "auto" (by backend) or "xla"
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
    c.progress_bar = True
    return c


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
    return _prefix(train, config.num_train_examples), _prefix(test, config.num_eval_examples)


def _prefix(split: datasets.Split, n: int) -> datasets.Split:
    if n <= 0 or n >= len(split):
        return split
    return datasets.Split(split.images[:n], split.labels[:n], split.num_classes)


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
                                 **common)


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
    reference_config: the config whose keys are the known ones (unknown keys are errors)
    """

    # (the defaults name this module's functions: a class body reads globals it does not shadow yet)
    build_model: Callable = build_model
    make_tx: Callable = make_tx
    make_train_step: Callable = _supervised_train_step
    make_eval_step: Callable = _supervised_eval_step
    init_state: Callable | None = None
    reference_config: Callable = default_config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: tuple[datasets.Split, datasets.Split] | None = None,
                       task: Task | None = None) -> dict:
    """Trains, evaluates after every epoch, checkpoints into `workdir`; returns the final metrics.

    `data` (train, test) bypasses TFDS, for users with their own arrays and for tests. `task`
    (default: supervised classification of `config.model`) is what a method plugs in.
    """
    task = task or Task()
    check_config_keys(config, task.reference_config())
    os.makedirs(workdir, exist_ok=True)
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
    if ckpt.latest_step() is not None:
        try:
            state, data_state = ckpt.restore(state)
        except checkpoint.CheckpointError:
            ckpt.close()  # release orbax's background threads before the error propagates
            raise
        iterator.state = pipeline.IteratorState.from_dict(data_state)
    elif task.init_state is not None:
        state = task.init_state(state)
    state = sharding.replicate(state, mesh)

    common = dict(num_classes=train_split.num_classes, mean=mean, std=std)
    train_step = task.make_train_step(graphdef, tx, config, steps_per_epoch=steps_per_epoch, **common)
    eval_step = task.make_eval_step(graphdef, config, **common)
    writer = metrics_lib.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))

    step = int(state.step)
    saved = {step}

    def save():  # at most once per step: a step's checkpoint can coincide with an epoch end
        if step not in saved:
            ckpt.save(step, state, iterator.state.to_dict())
            saved.add(step)

    result = {}
    pending = []  # device metrics since the last log: no host sync per step
    start = time.perf_counter()
    while iterator.state.epoch < config.num_epochs:
        epoch = iterator.state.epoch
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=iterator.state.batch, unit="step",
                   desc=f"epoch {epoch + 1}/{config.num_epochs}",
                   disable=not config.progress_bar, leave=False)
        for images, labels in iterator.epoch_batches():
            state, step_metrics = train_step(state, *sharding.shard_batch((images, labels), mesh))
            step += 1
            pending.append(step_metrics)
            bar.update()
            if step % config.log_every_steps == 0:
                means = jax.tree.map(lambda *xs: float(np.mean(xs)), *jax.device_get(pending))
                pending = []
                writer.write(step, epoch=epoch, learning_rate=float(schedule(step - 1)),
                             **{f"train_{k}": v for k, v in means.items()})
                bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.3f}")
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                save()
            if config.stop_after_steps and step >= config.stop_after_steps:
                bar.close()
                save()
                ckpt.wait()
                ckpt.close()
                return {"stopped_at_step": step}
        bar.close()
        epoch_time = time.perf_counter() - epoch_start
        save()
        last = epoch + 1 == config.num_epochs
        if not (last or (epoch + 1) % config.eval_every_epochs == 0):
            continue
        result = evaluate(eval_step, state, test_split, config.eval_batch_size, mesh)
        result.update(epoch=epoch + 1, epoch_time_s=epoch_time,
                      train_time_s=time.perf_counter() - start)
        writer.write(step, **result)
        print(f"epoch {epoch + 1}/{config.num_epochs}: test accuracy {result['test_accuracy']:.4f}, "
              f"test loss {result['test_loss']:.4f}, {epoch_time:.0f} s", flush=True)
    if not result:  # resumed a finished run: nothing trained, so evaluate what was restored
        result = evaluate(eval_step, state, test_split, config.eval_batch_size, mesh)
    ckpt.wait()
    ckpt.close()
    result["step"] = step
    result["state"] = state
    result["graphdef"] = graphdef
    return result
