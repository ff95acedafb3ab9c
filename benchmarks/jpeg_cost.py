"""What the bundled CIFAR-10 copy costs: ResNets trained on the original pixels, run on it.

    git clone https://github.com/akamaster/pytorch_resnet_cifar10 REF   # commit d5489e8
    python -m benchmarks.jpeg_cost --weights_dir=REF/pretrained_models --finetune_epochs=4

The project's CIFAR-10 comes from a copy stored as quality-75 JPEGs with 4:2:0 chroma
(docs/zoo.md), and no copy of the original pixels is at hand. Idelbayev's reference ResNets
(He et al.'s CIFAR architecture, option-A shortcuts; BSD-2 licence) were trained on the original
pixels and reach 91.78 / 92.78 / 93.14 / 93.62 % (ResNet-20 / 32 / 44 / 56, the figure each
checkpoint stores). For each checkpoint in `--weights_dir` this benchmark reports

  * its top-1 on the copy's test images as trained (how far the copy's pixels are from the
    original ones, as a network that learned the originals sees them), and on the first
    `--train_eval_examples` training images (which it was trained on as originals);
  * its top-1 on the copy's test images after `--finetune_epochs` epochs on the copy's training
    images (its own recipe's SGD, weight decay and normalisation, a cosine decay from
    `--finetune_lr`; our augmentation): what a network that learned the originals reaches once
    it has adapted to the copy. It starts from what the originals taught it, which training on
    the copy alone does not have, so (published - fine-tuned) is an estimate from below of what
    the copy costs a network trained on it from scratch.

The network is written here from He et al.'s description as a pure function of the checkpoint's
arrays (no nnx model: the option-A shortcut, a strided subsample with zero channels on both
sides, is not one of `models.resnet`'s shortcut kinds, and the weights stay in PyTorch's layout).
The checkpoints are read without PyTorch (`benchmarks.torch_checkpoint`).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from adaptive_jax import report, zoo
from adaptive_jax.data import datasets
from adaptive_jax.data.augment import random_crop, random_flip
from adaptive_jax.nn.conv import conv2d
from benchmarks.common import append_results
from benchmarks.torch_checkpoint import read_legacy

FLAGS = flags.FLAGS
flags.DEFINE_string("weights_dir", None, "Directory of the reference checkpoints "
                    "(resnet<depth>-<hash>.th: pytorch_resnet_cifar10's pretrained_models).")
flags.DEFINE_list("depths", [], "Only these depths (default: every checkpoint in weights_dir).")
flags.DEFINE_integer("finetune_epochs", 0, "Epochs of fine-tuning on the copy (0: evaluate only).")
flags.DEFINE_float("finetune_lr", 0.01, "Peak learning rate of the fine-tuning's cosine decay.")
flags.DEFINE_integer("batch_size", 128, "Fine-tuning batch size (the reference recipe's).")
flags.DEFINE_integer("num_train_examples", 0, "First this-many training images (0: all).")
flags.DEFINE_integer("num_test_examples", 0, "First this-many test images (0: all 10,000).")
flags.DEFINE_integer("train_eval_examples", 10000, "First this-many training images the checkpoint "
                     "is scored on as trained (0: all).")
flags.DEFINE_bool("record", True, "Append the figures to benchmarks/RESULTS.md and results.jsonl.")
flags.mark_flag_as_required("weights_dir")

DATASET = "cifar10"
# The reference recipe normalises with ImageNet's channel statistics (its trainer.py).
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
BN_EPSILON, BN_MOMENTUM = 1e-5, 0.1  # PyTorch's BatchNorm2d defaults
WEIGHT_DECAY, SGD_MOMENTUM = 1e-4, 0.9  # the reference recipe's SGD
STATISTICS = ("running_mean", "running_var")
# Our zoo entry of the same depth trained on the copy, for the table (docs/zoo.md).
ZOO_COUNTERPART = {20: "resnet20_gpu", 32: "resnet32_gpu", 56: "resnet56"}


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


def _prefix(split: datasets.Split, n: int) -> datasets.Split:
    return split if n <= 0 else datasets.Split(split.images[:n], split.labels[:n], split.num_classes)


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


def main(argv):
    del argv
    train = datasets.load_split(DATASET, "train")
    test = _prefix(datasets.load_split(DATASET, "test"), FLAGS.num_test_examples)
    train = _prefix(train, FLAGS.num_train_examples)
    train_eval = _prefix(train, FLAGS.train_eval_examples)
    records = {r.name: r for r in zoo.list()}
    rows, figures = [], []
    for path in checkpoints(FLAGS.weights_dir, FLAGS.depths):
        params, statistics, depth, published = load_reference(path)
        model = f"reference_resnet{depth}"
        row = {"model": model, "published": published,
               "on_copy": top1(params, statistics, depth, test),
               "train_on_copy": top1(params, statistics, depth, train_eval)}
        context = {"checkpoint": os.path.basename(path), "published_accuracy": published,
                   "test_examples": len(test)}
        figures.append({"metric": "original_pixels_model_accuracy_on_copy", "value": row["on_copy"],
                        "unit": "top-1", "model": model, "train_images_top1": row["train_on_copy"],
                        "train_images": len(train_eval), **context})
        start, per_epoch = time.perf_counter(), []
        for epoch, params, statistics, accuracy, loss in fine_tune(
                params, statistics, depth, train, test, FLAGS.finetune_epochs, FLAGS.finetune_lr,
                FLAGS.batch_size):
            print(f"{model}: epoch {epoch}, test top-1 {accuracy:.4f}, train loss {loss:.4f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            row["finetuned"] = accuracy
            per_epoch.append(round(accuracy, 4))
        if FLAGS.finetune_epochs:
            figures.append({"metric": "finetuned_on_copy_accuracy", "value": row["finetuned"],
                            "unit": "top-1", "model": model, "epochs": FLAGS.finetune_epochs,
                            "peak_lr": FLAGS.finetune_lr, "train_examples": len(train),
                            "per_epoch": per_epoch, **context})
        counterpart = records.get(ZOO_COUNTERPART.get(depth, ""))
        if counterpart is not None:
            row["zoo"] = f"{counterpart.name} {counterpart.test_accuracy:.4f}"
        rows.append(row)
    columns = [("model", "model", "s"), ("published", "original pixels (checkpoint)", ".4f"),
               ("on_copy", "copy, as trained", ".4f"), ("train_on_copy", "copy train, as trained", ".4f"),
               ("finetuned", f"copy, fine-tuned {FLAGS.finetune_epochs} ep", ".4f"),
               ("zoo", "zoo entry trained on the copy", "s")]
    if not FLAGS.finetune_epochs:
        columns = [c for c in columns if c[0] != "finetuned"]
    table = report.format_table(rows, columns)
    print(table)
    if FLAGS.record:
        append_results("jpeg_cost", figures, table,
                       notes=f"test images: {len(test)}; training images: {len(train)}")


if __name__ == "__main__":
    app.run(main)
