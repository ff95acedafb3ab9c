"""Train-step runners shared by the benchmarks: each returns `run(n) -> seconds for n steps`.

adaptive_jax's compiled step (augmenting on device) and PyTorch eager on the identical ResNet
(benchmarks/torch_resnet.py), both already compiled / warmed up; and `fixed_keep_step`, the
step through `drop_blocks` with one drop pattern (`benchmarks.stochastic_depth_cost`). No absl
flags here, so tests import it.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.train import create_train_state, make_optimizer, make_train_step, steps

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def jax_train_step(depth: int, batch: int, conv_lowering: str = "auto"):
    """adaptive_jax's jit-compiled supervised step of a CIFAR ResNet (SGD), its state and one
    batch of random uint8 images and labels: `(step, state, images, labels)`, not yet compiled."""
    tx = make_optimizer(learning_rate=0.1)
    model = CifarResNet(ResNetSpec(depth, conv_lowering=conv_lowering), rngs=nnx.Rngs(0))
    graphdef, state = create_train_state(model, tx, seed=0)
    step = make_train_step(graphdef, tx, num_classes=10, mean=MEAN, std=STD)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, 10, batch).astype(np.int32))
    return step, state, images, labels


def jax_train_runner(depth: int, batch: int, conv_lowering: str = "auto"):
    step, state, images, labels = jax_train_step(depth, batch, conv_lowering)
    holder = {"state": state}

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            holder["state"], metrics = step(holder["state"], images, labels)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    run(2)  # compile and warm up
    return run


def torch_train_runner(depth: int, batch: int, channels_last: bool):
    import torch
    from benchmarks.torch_resnet import resnet as torch_resnet

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = torch_resnet(depth)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images = torch.randn(batch, 3, 32, 32).to(memory_format=fmt)
    labels = torch.randint(0, 10, (batch,))

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    run(2)
    return run


def train_throughput(depth: int, batch: int, rounds: int, steps: int,
                     with_torch: bool = True) -> dict[str, tuple[float, float, float]]:
    """img/s of each runner, variants interleaved in `rounds`: name -> (median, min, max).

    "adaptive_jax" is the project's step as shipped (conv weight gradients lowered for the
    backend); "adaptive_jax_xla_conv" the same step with XLA's own conv gradients, the before.
    """
    runners = {"adaptive_jax": jax_train_runner(depth, batch),
               "adaptive_jax_xla_conv": jax_train_runner(depth, batch, conv_lowering="xla")}
    if with_torch:
        runners["torch_eager"] = torch_train_runner(depth, batch, channels_last=False)
        runners["torch_channels_last"] = torch_train_runner(depth, batch, channels_last=True)
    rates = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            rates[name].append(batch * steps / run(steps))
    return {name: (float(np.median(r)), float(np.min(r)), float(np.max(r)))
            for name, r in rates.items()}


def fixed_keep_step(graphdef, tx, keep, *, through_conds: bool, **args):
    """The supervised step through `drop_blocks` with one fixed `keep` pattern for every step.

    `through_conds`: the pattern is read through the step counter, as stochastic depth's draw
    is, so every block runs or is dropped by its `lax.cond`. Otherwise the pattern is a
    constant, and XLA replaces each `cond` by its branch: the network without the dropped
    blocks, nothing of theirs left (with no block kept: the floor, stem and classifier only)."""
    pattern = jnp.asarray(keep, bool)
    survival = jnp.ones(pattern.shape)

    def loss(model, images, labels, key, step):
        # step < 0 never holds: the pattern itself, but not a constant XLA could fold
        keep = pattern != (step < 0) if through_conds else pattern
        logits = model.drop_blocks(images, keep, survival)
        value = steps.cross_entropy(logits, labels, args["num_classes"]).mean()
        return value, {"loss": value}

    return jax.jit(steps.make_step(graphdef, tx, loss, mean=args["mean"], std=args["std"]),
                   donate_argnums=0)
