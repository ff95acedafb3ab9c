"""Nested sub-nets (Yang & Fan's dynamic DNN) on CIFAR-10: a slimmable ResNet-20.

    --config=experiments/dynamic_dnn/configs/default.py            # demo: multi_path, the baseline
                                                                   # demo's data (2 x 12,800 images)
    --config=experiments/dynamic_dnn/configs/default.py:cpu        # the whole training set, 15 epochs
    --config=experiments/dynamic_dnn/configs/default.py:smoke      # tests: ResNet-8 on 256 images
    --config.slim.mode=single_path | progressive | sandwich | alone (--config.slim.width=0.5)
"""

from adaptive_jax.config import apply_smoke
from adaptive_jax.train import slimmable

VARIANTS = ("demo", "cpu", "smoke")


def get_config(variant: str = "demo"):
    variant = variant or "demo"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    config = slimmable.default_config()  # ResNet-20, the CPU recipe, sandwich
    if variant == "demo":
        config.num_epochs = 2
        config.num_train_examples = 12_800
        config.eval_every_epochs = 2
        config.log_every_steps = 10
        # single_path draws a width per epoch in the paper; over 2 epochs that trains 2 of 4
        config.slim.steps_per_switch = 10
        # At 200 steps, multi-path beats sandwich at every width (full width 0.477 vs 0.375: the
        # in-place teacher is itself barely trained; benchmarks/RESULTS.md, slimmable_widths)
        config.slim.mode = "multi_path"
    elif variant == "smoke":
        apply_smoke(config)
        config.slim.widths = (0.5, 1.0)
    return config
