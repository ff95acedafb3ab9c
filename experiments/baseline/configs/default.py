"""Baseline ResNet on CIFAR-10.

    --config=experiments/baseline/configs/default.py          # demo: ResNet-20, 2 short epochs (~10 min, 2 CPU cores)
    --config=experiments/baseline/configs/default.py:cpu      # the CPU recipe: 15 epochs, one-cycle
    --config=experiments/baseline/configs/default.py:long     # the long recipe (GPU): 160 epochs, cosine
    --config=experiments/baseline/configs/default.py:smoke    # tests: ResNet-8 on 256 images
"""

from adaptive_jax.config import apply_smoke
from adaptive_jax.train import default_config

VARIANTS = ("demo", "cpu", "long", "smoke")


def get_config(variant: str = "demo"):
    variant = variant or "demo"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    config = default_config()  # the CPU recipe
    if variant == "demo":
        # XLA:CPU trains ResNet-20 at ~72 img/s on one core (one full epoch ~12 min), so the demo
        # trains 2 epochs on the first 12,800 training images and evaluates on the full test set.
        config.num_epochs = 2
        config.num_train_examples = 12_800
        config.eval_every_epochs = 2
        config.log_every_steps = 10
    elif variant == "long":
        # He et al.'s 64k iterations at batch 128 (~164 epochs), with a cosine schedule.
        config.num_epochs = 160
        config.optimizer.schedule = "cosine"
        config.optimizer.learning_rate = 0.1
        config.optimizer.warmup_epochs = 1.0
        config.eval_every_epochs = 10
    elif variant == "smoke":
        apply_smoke(config, num_epochs=2)
    return config
