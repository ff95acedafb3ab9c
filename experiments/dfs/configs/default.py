"""DFS on CIFAR-10 from a zoo backbone: the warm-up step, then one joint step per target
computation percentage, against skip-only (the menu {0, 32}) and the greedy static allocation.

    --config=experiments/dfs/configs/default.py          # cpu: zoo ResNet-32, 100 warm-up steps,
                                                         # 200 joint steps per target (~1 h of one
                                                         # core for the whole curve and baselines)
    --config=experiments/dfs/configs/default.py:readme   # the reference README's recipe, ResNet-38
                                                         # (GPU: a ResNet-38 zoo entry is needed)
    --config=experiments/dfs/configs/default.py:paper    # the paper's recipe as quoted, ResNet-38
    --config=experiments/dfs/configs/default.py:smoke    # tests: ResNet-8 on 256 images
"""

from adaptive_jax.config import apply_smoke
from adaptive_jax.train import dfs

VARIANTS = ("cpu", "readme", "paper", "smoke")


def get_config(variant: str = "cpu"):
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    config = dfs.default_config()
    config.init_from = "zoo:resnet32"
    config.model.depth = 32
    if variant == "cpu":
        # 100 steps of warm-up and 200 joint steps per target (the first 12,800 training images
        # per epoch); the budget weight raised so the gate can reach a target in ~100 steps where
        # the reference takes 64k (docs/dfs.md)
        config.num_train_examples = 12_800
        config.dfs.warmup_epochs = 1
        config.dfs.joint_epochs = 2
        config.eval_every_epochs = 2
        config.dfs.budget_weight = 1e-2
        config.log_every_steps = 10
        config.progress_bar = False
    elif variant in ("readme", "paper"):
        # The reference's iterations at batch 128 over the 50,000 training images (391 steps per
        # epoch): warm-up 2000 iterations (README) or 64k (paper); joint 64k (both).
        config.init_from = "zoo:resnet38"
        config.model.depth = 38
        config.dfs.recipe = variant
        config.dfs.warmup_epochs = 5 if variant == "readme" else 164
        config.dfs.joint_epochs = 164
    elif variant == "smoke":
        apply_smoke(config)
        config.init_from = ""
        config.dfs.targets = (30.0, 60.0)
        config.dfs.budget_weight = 1e-3
        config.dfs.static_heldout_examples = 50
    return config
