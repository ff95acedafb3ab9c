"""He et al.'s CIFAR ResNet (option-A shortcuts) as a pure function of a reference checkpoint's
arrays: Idelbayev's ResNets trained on the original CIFAR-10 pixels
(github.com/akamaster/pytorch_resnet_cifar10), for `benchmarks.jpeg_cost`.

Written here from He et al.'s description rather than as an nnx model: the option-A shortcut, a
strided subsample with zero channels on both sides, is not one of `models.resnet`'s shortcut
kinds, and the weights stay in PyTorch's names and layouts. The checkpoints are read without
PyTorch (`benchmarks.torch_checkpoint`).
"""

from __future__ import annotations

import functools
import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adaptive_jax.data import datasets
from adaptive_jax.data.augment import random_crop, random_flip
from adaptive_jax.nn.conv import conv2d
from benchmarks.torch_checkpoint import read_legacy

# The reference recipe normalises with ImageNet's channel statistics (its trainer.py).
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
BN_EPSILON, BN_MOMENTUM = 1e-5, 0.1  # PyTorch's BatchNorm2d defaults
WEIGHT_DECAY, SGD_MOMENTUM = 1e-4, 0.9  # the reference recipe's SGD
STATISTICS = ("running_mean", "running_var")


class ReferenceCheckpointError(ValueError):
    """A checkpoint does not hold the reference CIFAR ResNet's arrays."""


def load_reference(path: str) -> tuple[dict, dict, int, float | None]:
    """(params, running statistics, depth, the accuracy the checkpoint records) of a reference
    checkpoint; arrays keep PyTorch's names and layouts."""
    checkpoint = read_legacy(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "conv1.weight" not in {k.removeprefix("module.") for k in state}:
        raise ReferenceCheckpointError(
            f"{path}: no reference ResNet state_dict (expected keys such as 'conv1.weight', "
            "'layer1.0.conv1.weight', 'linear.weight')")
    arrays = {k.removeprefix("module."): np.asarray(v) for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    blocks = sum(1 for k in arrays if re.fullmatch(r"layer1\.\d+\.conv1\.weight", k))
    params = {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items() if not k.endswith(STATISTICS)}
    statistics = {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items() if k.endswith(STATISTICS)}
    best = checkpoint.get("best_prec1") if isinstance(checkpoint, dict) else None
    # best_prec1: a percentage, stored as float32 (91.78 reads back as 91.78000183...)
    return params, statistics, 6 * blocks + 2, None if best is None else round(float(best) / 100, 6)


def _conv3x3(x, weight, stride: int):
    # PyTorch's (out, in, h, w) kernel, padding 1: the same windows as torch's Conv2d. conv2d's
    # gradients are the ones fast on XLA:CPU (adaptive_jax/nn/conv.py).
    return conv2d(x, jnp.transpose(weight, (2, 3, 1, 0)), (stride, stride), ((1, 1), (1, 1)))


def option_a_shortcut(x, out_channels: int):
    """He et al.'s option A as the reference implements it: every other pixel, and the missing
    channels as zeros, half before the input's and half after."""
    extra = out_channels - x.shape[-1]
    return jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def forward(params, statistics, images, depth: int, train: bool = False):
    """(logits, updated running statistics) of the reference ResNet on normalised NHWC images.

    train: batch statistics, and running statistics updated as PyTorch does (unbiased variance,
    momentum 0.1); otherwise the running statistics, returned unchanged."""
    updated = dict(statistics)

    def batch_norm(y, name):
        if train:
            mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
            count = y.size // y.shape[-1]
            for key, value in (("running_mean", mean), ("running_var", var * count / (count - 1))):
                updated[f"{name}.{key}"] = ((1 - BN_MOMENTUM) * statistics[f"{name}.{key}"]
                                            + BN_MOMENTUM * value)
        else:
            mean, var = statistics[f"{name}.running_mean"], statistics[f"{name}.running_var"]
        scale = params[f"{name}.weight"] * jax.lax.rsqrt(var + BN_EPSILON)
        return (y - mean) * scale + params[f"{name}.bias"]

    y = jax.nn.relu(batch_norm(_conv3x3(images, params["conv1.weight"], 1), "bn1"))
    for stage, width in enumerate((16, 32, 64), start=1):
        for block in range((depth - 2) // 6):
            name = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = jax.nn.relu(batch_norm(_conv3x3(y, params[f"{name}.conv1.weight"], stride),
                                         f"{name}.bn1"))
            out = batch_norm(_conv3x3(out, params[f"{name}.conv2.weight"], 1), f"{name}.bn2")
            shortcut = option_a_shortcut(y, width) if y.shape[-1] != width else y
            y = jax.nn.relu(out + shortcut)
    logits = y.mean((1, 2)) @ params["linear.weight"].T + params["linear.bias"]
    return logits, updated


def _normalised(images_u8):
    return (images_u8.astype(jnp.float32) / 255.0 - MEAN) / STD


@functools.partial(jax.jit, static_argnames="depth")
def _predict(params, statistics, images_u8, depth: int):
    return forward(params, statistics, _normalised(images_u8), depth)[0].argmax(-1)


def top1(params, statistics, depth: int, split: datasets.Split, batch: int = 500) -> float:
    hits = 0
    for start in range(0, len(split), batch):
        predicted = _predict(params, statistics, split.images[start:start + batch], depth=depth)
        hits += int(np.sum(np.asarray(predicted) == split.labels[start:start + batch]))
    return hits / len(split)


def fine_tune(params, statistics, depth: int, train: datasets.Split, test: datasets.Split,
              epochs: int, peak_lr: float, batch_size: int, seed: int = 0):
    """Yields (epoch, params, statistics, test top-1, mean train loss) after each epoch."""
    if epochs == 0:  # evaluation only
        return
    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train)} training images do not fill one batch of {batch_size}")
    tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                     optax.sgd(optax.cosine_decay_schedule(peak_lr, epochs * steps_per_epoch),
                               momentum=SGD_MOMENTUM))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, statistics, opt_state, key, images_u8, labels):
        crop_key, flip_key = jax.random.split(key)
        images = _normalised(random_flip(flip_key, random_crop(crop_key, images_u8)))

        def loss_fn(params):
            logits, updated = forward(params, statistics, images, depth, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updated

        (loss, statistics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), statistics, opt_state, loss

    rng, key = np.random.default_rng(seed), jax.random.key(seed)
    for epoch in range(1, epochs + 1):
        order, losses = rng.permutation(len(train)), []
        for s in range(steps_per_epoch):
            rows = order[s * batch_size:(s + 1) * batch_size]
            key, step_key = jax.random.split(key)
            params, statistics, opt_state, loss = step(params, statistics, opt_state, step_key,
                                                       train.images[rows], train.labels[rows])
            losses.append(loss)
        mean_loss = float(np.mean(jax.device_get(losses)))
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"fine-tuning diverged in epoch {epoch} (loss {mean_loss}); "
                                     f"lower --finetune_lr (now {peak_lr})")
        yield epoch, params, statistics, top1(params, statistics, depth, test), mean_loss


def checkpoints(weights_dir: str, depths) -> list[str]:
    """The reference checkpoints in `weights_dir` (resnet<depth>[-<hash>].th), shallowest first;
    only `depths` if given."""
    found = {}
    for path in glob.glob(os.path.join(weights_dir, "resnet*.th")):
        match = re.fullmatch(r"resnet(\d+)(-\w+)?\.th", os.path.basename(path))
        if match and (not depths or match.group(1) in set(depths)):
            found[path] = int(match.group(1))
    paths = sorted(found, key=found.get)
    if not paths:
        raise FileNotFoundError(
            f"no resnet<depth>-*.th checkpoint{' of depth ' + ','.join(depths) if depths else ''} "
            f"in {weights_dir}: clone https://github.com/akamaster/pytorch_resnet_cifar10 and pass "
            "--weights_dir=<clone>/pretrained_models")
    return paths
