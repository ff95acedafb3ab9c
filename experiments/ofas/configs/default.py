"""OFAS on CIFAR-10: stage A (straight-through, CE) once, then stage B (policy gradient) once per
penalty in `rl.penalties`, each from stage A's weights: one point of the accuracy / MACs curve each.

    --config=experiments/ofas/configs/default.py          # demo: ResNet-32, the baseline demo's
                                                          # data (2 epochs of 12,800 images) + 1 RL epoch
    --config=experiments/ofas/configs/default.py:cpu      # the whole training set, 15 + 3 epochs
    --config=experiments/ofas/configs/default.py:long     # GPU: ResNet-110, 160 + 20 epochs
    --config=experiments/ofas/configs/default.py:zoo      # from the zoo's trained ResNet-32: stage B
                                                          # only (make demo-train, ~20 min on 2 cores)
    --config=experiments/ofas/configs/default.py:smoke    # tests: ResNet-8 on 256 images
"""

from adaptive_jax.config import apply_smoke
from adaptive_jax.train import ofas

VARIANTS = ("demo", "cpu", "long", "zoo", "smoke")


def get_config(variant: str = "demo"):
    variant = variant or "demo"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; expected one of {VARIANTS}")
    config = ofas.default_config()  # ResNet-32, the CPU recipe's stage A
    config.rl.reward = "skipnet"
    config.rl.penalties = (0.5, 1.0, 2.0)
    if variant == "demo":
        # The same data and stage-A schedule as the baseline demo (experiments/baseline), so the
        # OFAS ResNet-32 is compared with that static ResNet-20 on equal terms; plus 1 RL epoch.
        config.num_epochs = 2
        config.num_train_examples = 12_800
        config.eval_every_epochs = 2
        config.log_every_steps = 10
        config.rl.num_epochs = 1
    elif variant == "long":
        config.model.depth = 110
        config.policy.variant = "II_rl"
        config.num_epochs = 160
        config.optimizer.schedule = "cosine"
        config.optimizer.learning_rate = 0.1
        config.eval_every_epochs = 10
        config.rl.num_epochs = 20
        config.rl.penalties = (0.5, 1.0, 2.0, 4.0)
    elif variant == "cpu":
        config.rl.num_epochs = 3
    elif variant == "zoo":
        # The papers' way (SkipNet, BlockDrop): a well-trained backbone, then the policy on top.
        # Stage A is the zoo backbone itself (0 epochs: evaluated, not trained); stage B fine-tunes
        # backbone and head together for 256 steps per penalty (the first 32,768 training images),
        # and the static sub-net at each point's MACs alike. docs/ofas.md has the measurements
        # behind each choice (REINFORCE saturated the head to one plan within ~100 steps; the
        # straight-through estimator keeps a per-image gradient every step; batch-normalised
        # logits keep the plans per image, where the plain head settles on a few: the shipped
        # ofas_resnet32's head).
        config.init_from = "zoo:resnet32"
        config.num_epochs = 0
        config.num_train_examples = 32_768
        config.policy.pool_grid = 4
        config.policy.activation = "relu"
        config.policy.input_norm = "layer"
        config.policy.initial_execute_prob = 0.9
        config.policy.logit_norm = "batch"
        config.policy.logit_scale = 2.0
        config.rl.estimator = "straight_through"
        config.rl.reward = "blockdrop"          # (REINFORCE only)
        config.rl.penalties = (1.0, 2.0)
        config.rl.num_epochs = 1
        config.rl.backbone_learning_rate = 0.01
        config.rl.policy_learning_rate = 0.001
        config.rl.entropy_weight = 0.02         # (REINFORCE only)
        config.rl.static_baseline = True
        config.rl.static_heldout_examples = 2000
        config.log_every_steps = 16
        config.progress_bar = False
    elif variant == "smoke":
        apply_smoke(config)
        config.rl.num_epochs = 1
        config.rl.penalties = (1.0, 8.0)
    return config
