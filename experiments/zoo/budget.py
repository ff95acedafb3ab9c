"""Fit a zoo recipe's epoch count to a wall-clock budget (`experiments.zoo.main --time_budget_s`).

A lent GPU comes for minutes, so the GPU recipe is "as many epochs as fit": the run compiles and
times its own train step, under whatever else shares the accelerator, then trains that many epochs
of the one-cycle schedule (at most config.num_epochs). Several recipes started side by side on one
GPU (experiments/zoo/gpu_session.sh) wait for each other to compile before timing, so each
measures its speed under the load it will train under.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import time

from adaptive_jax.train import loop

# Above the timed training steps: the final evaluation, the zoo entry, a last checkpoint.
FINAL_OVERHEAD_S = 20.0
# Share of the measured epoch time added for evaluations and checkpoints during training.
EPOCH_OVERHEAD = 0.08


def check_fresh_workdir(workdir: str) -> None:
    """A budget fits a new run's schedule; resuming needs the one the run started with."""
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(
            f"{workdir} holds a run already: a time budget fits a new run's schedule, and "
            "resuming needs the one it started with; rerun with the fixed-epoch command in "
            f"{workdir}/command.txt, or pick a new --workdir")


def measure_train_step(config, train, num_steps: int = 30, min_seconds: float = 3.0,
                       sync=None) -> tuple[float, float]:
    """(seconds to compile and run the first step, seconds per step after it): the loop's own
    supervised step on `train`, host slicing and transfers included. `sync()` is called between
    the two, so runs started together time their steps under the same load."""
    import jax

    from adaptive_jax.data import datasets, pipeline
    from adaptive_jax.train import sharding, steps

    task = loop.Task()
    model = task.build_model(config, train.num_classes, train.images.shape[-1])
    mesh = sharding.data_mesh(config.num_devices or None)
    iterator = pipeline.EpochIterator(train, config.batch_size, config.seed)
    steps_per_epoch = iterator.batches_per_epoch
    tx, _ = task.make_tx(config, steps_per_epoch, steps_per_epoch * max(config.num_epochs, 1))
    graphdef, state = steps.create_train_state(model, tx, config.seed)
    state = sharding.replicate(state, mesh)
    train_step = task.make_train_step(
        graphdef, tx, config, steps_per_epoch=steps_per_epoch, num_classes=train.num_classes,
        mean=datasets.CHANNEL_MEAN[config.dataset], std=datasets.CHANNEL_STD[config.dataset])
    batches = itertools.chain.from_iterable(iterator.epoch_batches() for _ in itertools.count())

    def run(n):
        nonlocal state
        for _ in range(n):
            images, labels = next(batches)
            state, out = train_step(state, *sharding.shard_batch((images, labels), mesh))
        jax.block_until_ready(out)

    start = time.perf_counter()
    run(1)
    compile_s = time.perf_counter() - start
    if sync is not None:
        sync()
    run(2)  # past any lazy second-call work
    # At least `num_steps`, and at least `min_seconds`: beside other runs a GPU is time-sliced
    # between them, so a few milliseconds' steps need many to average over the slices.
    timed, start = 0, time.perf_counter()
    while timed < num_steps or time.perf_counter() - start < min_seconds:
        run(10)
        timed += 10
    return compile_s, (time.perf_counter() - start) / timed


def epochs_within(budget_left_s: float, compile_s: float, step_s: float, steps_per_epoch: int,
                  max_epochs: int) -> int:
    """How many epochs end inside `budget_left_s`: the training run compiles once more, then
    trains; each epoch costs its steps plus EPOCH_OVERHEAD, and FINAL_OVERHEAD_S is kept back."""
    epoch_s = step_s * steps_per_epoch * (1 + EPOCH_OVERHEAD)
    epochs = int((budget_left_s - compile_s - FINAL_OVERHEAD_S) // epoch_s)
    if epochs < 1:
        raise ValueError(
            f"the time budget leaves {budget_left_s:.0f} s, and one epoch takes {epoch_s:.1f} s "
            f"after a {compile_s:.0f} s compile: raise --time_budget_s or drop it")
    return min(epochs, max_epochs)


def wait_for_each_other(sync_dir: str, count: int, timeout_s: float = 300.0) -> None:
    """Marks this run compiled in `sync_dir`, then waits (at most `timeout_s`) for `count`."""
    os.makedirs(sync_dir, exist_ok=True)
    open(os.path.join(sync_dir, f"compiled.{os.getpid()}"), "w").close()
    deadline = time.time() + timeout_s
    while (len([f for f in os.listdir(sync_dir) if f.startswith("compiled.")]) < count
           and time.time() < deadline):
        time.sleep(0.2)


def fixed_epoch_command(argv: list[str], num_epochs: int) -> str:
    """The command that reproduces a budgeted run: its flags, the budget ones replaced by
    --config.num_epochs."""
    budget_flag = re.compile(r"--(time_budget_s|sync_dir|sync_count|config\.num_epochs)(=|$)")
    kept = [a for a in argv[1:] if not budget_flag.match(a)]
    return ("python -m experiments.zoo.main " + " ".join(shlex.quote(a) for a in kept)
            + f" --config.num_epochs={num_epochs}")
