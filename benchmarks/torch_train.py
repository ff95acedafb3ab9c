"""Peer accuracy reference: the identical ResNet and recipe trained in PyTorch.

    python -m benchmarks.torch_train --manual_dir=DIR --epochs=15 --learning_rate=0.2

Same architecture (benchmarks/torch_resnet.py), data (the official binary layout), augmentation
(zero-pad 4 + random crop, horizontal flip, per-channel normalisation), optimiser (SGD, Nesterov
momentum 0.9, weight decay on conv / linear weights only), one-cycle schedule and batch size as
experiments/baseline's `:cpu` config. If both frameworks land on the same accuracy, a gap to a
target is the recipe's, not the implementation's. Uses CUDA when present.
"""

from __future__ import annotations

import time

import torch
from absl import app, flags

from adaptive_jax.data import cifar_binary
from adaptive_jax.data.datasets import CHANNEL_MEAN, CHANNEL_STD
from benchmarks.torch_resnet import resnet

FLAGS = flags.FLAGS
flags.DEFINE_string("manual_dir", None, "Directory holding cifar-10-batches-bin/.")
flags.DEFINE_integer("epochs", 15, "Training epochs.")
flags.DEFINE_float("learning_rate", 0.2, "One-cycle peak learning rate.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay on conv / linear weights.")
flags.DEFINE_integer("depth", 20, "ResNet depth.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.mark_flags_as_required(["manual_dir"])


def augment(x: torch.Tensor) -> torch.Tensor:
    """x: float (B, 3, 32, 32) in [0, 1]. Zero-pad 4, random 32x32 crop, random flip."""
    b, dev = x.shape[0], x.device
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    oy, ox = torch.randint(0, 9, (b,), device=dev), torch.randint(0, 9, (b,), device=dev)
    ar = torch.arange(32, device=dev)
    rows, cols = oy[:, None] + ar, ox[:, None] + ar
    x = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(b, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def main(argv):
    del argv
    torch.manual_seed(FLAGS.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    source = cifar_binary.find_binary_source(FLAGS.manual_dir)
    if source is None:
        raise SystemExit(f"no CIFAR-10 binary layout in {FLAGS.manual_dir}")
    (xtr, ytr), (xte, yte) = (cifar_binary.read_split(source, s) for s in ("train", "test"))
    mean = torch.tensor(CHANNEL_MEAN["cifar10"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CHANNEL_STD["cifar10"], device=dev).view(1, 3, 1, 1)
    to_float = lambda x: torch.tensor(x, device=dev).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    train_x, train_y = to_float(xtr), torch.tensor(ytr, device=dev)
    test_x, test_y = (to_float(xte) - mean) / std, torch.tensor(yte, device=dev)

    model = resnet(FLAGS.depth).to(dev)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": FLAGS.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=FLAGS.learning_rate, momentum=0.9, nesterov=True)
    steps = len(train_x) // FLAGS.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, FLAGS.learning_rate, total_steps=steps * FLAGS.epochs,
                                                pct_start=0.3, div_factor=25, final_div_factor=1e3)
    for epoch in range(FLAGS.epochs):
        model.train()
        start, perm = time.perf_counter(), torch.randperm(len(train_x), device=dev)
        for i in range(steps):
            idx = perm[i * FLAGS.batch_size:(i + 1) * FLAGS.batch_size]
            x = (augment(train_x[idx]) - mean) / std
            loss = torch.nn.functional.cross_entropy(model(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(test_x[j:j + 1000]).argmax(1) == test_y[j:j + 1000]).sum().item()
                          for j in range(0, len(test_x), 1000))
        print(f"torch epoch {epoch + 1}/{FLAGS.epochs}: test accuracy {correct / len(test_x):.4f}, "
              f"{time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    app.run(main)
