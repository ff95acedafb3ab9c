"""Zoo recipes: train a CIFAR ResNet (projection shortcuts) well once, evaluate it, write a zoo entry.

    --config=experiments/zoo/configs/default.py:cpu         # ResNet-20 on 2 CPU cores (hours, resumable)
    --config=experiments/zoo/configs/default.py:cpu --config.model.depth=32
    --config=experiments/zoo/configs/default.py:gpu         # one H100/H200, <= 9 minutes per model
    --config=experiments/zoo/configs/default.py:smoke       # tests: ResNet-8 on 256 images

One recipe per device, the same code (the supervised loop of adaptive_jax.train); the depth is a
config value, so every zoo ResNet is the same command with --config.model.depth=N.
"""

from adaptive_jax.config import apply_smoke
from adaptive_jax.train import default_config

VARIANTS = ("cpu", "gpu", "smoke")


def get_config(variant: str = "cpu"):
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    config = default_config()
    config.model.shortcut = "projection"   # the kind OFAS, SkipNet and DFS fine-tune
    if variant == "cpu":
        # One-cycle SGD (Nesterov, peak 0.2, wd 5e-4, batch 128): the schedule that gets most out
        # of few epochs. 15 epochs is the 3-hour budget of 2 cores; a session-bounded run passes
        # --config.num_epochs (the manifest keeps the exact command; docs/zoo.md the times).
        config.num_epochs = 15
        config.eval_every_epochs = 1
        config.log_every_steps = 50
        config.checkpoint_every_steps = 100  # a killed background run loses < 2 minutes
        config.progress_bar = False
    elif variant == "gpu":
        # Larger batch, one-cycle: the H100 / H200 recipe. num_epochs is the cap: a run with
        # --time_budget_s trains as many epochs as its measured speed fits (docs/zoo.md).
        config.num_epochs = 160
        config.batch_size = 512
        config.optimizer.schedule = "onecycle"
        config.optimizer.learning_rate = 0.4
        config.optimizer.label_smoothing = 0.0
        config.eval_every_epochs = 5
        config.progress_bar = False
    elif variant == "smoke":
        apply_smoke(config, num_epochs=2)
    return config
