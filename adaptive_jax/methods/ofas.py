"""OFAS (docs/methods.md 3): a CIFAR ResNet whose blocks are all planned by one head after the stem.

A method: a policy (`policies.OFASHead`), a backbone (`models.CifarResNet`) and how they run
(`execution` executors). `OFASNet(backbone, head)`: `model(images)` is the training / evaluation
forward through the masked executor (straight-through decisions in training mode, thresholded in
eval mode: stage A and the accuracy it reports); `plan(images)` gives the (B, L) bool plan, and
`predict(images, executor)` runs it so that skipped blocks do not run (cond at batch 1 or a
shared plan, bucketed for a batch). `make_predictors` compiles both paths for serving;
`costs()` prices plans (`cost.block_costs` of the backbone plus the head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive_jax import cost, execution
from adaptive_jax.models.resnet import CifarResNet, check_images
from adaptive_jax.policies import OFASHead, decisions

_MASKED = execution.masked()
_STATIC = execution.static()


class OFASNet(nnx.Module):
    def __init__(self, backbone: CifarResNet, hidden: tuple[int, ...] = (32,), *,
                 initial_execute_prob: float = 0.9, pool_grid: int = 1, activation: str = "none",
                 input_norm: str = "none", logit_norm: str = "none", logit_scale: float = 2.0,
                 rngs: nnx.Rngs):
        self.backbone = backbone
        self.spec = backbone.spec
        self.policy = OFASHead(backbone.spec.widths[0], backbone.spec.num_blocks, tuple(hidden),
                               initial_execute_prob=initial_execute_prob, pool_grid=pool_grid,
                               activation=activation, input_norm=input_norm,
                               logit_norm=logit_norm, logit_scale=logit_scale, rngs=rngs)

    @classmethod
    def from_config(cls, backbone: CifarResNet, policy: dict, *, rngs: nnx.Rngs) -> "OFASNet":
        """An OFASNet on `backbone` with the head `OFASHead.config()` describes (zoo loading)."""
        expected = (backbone.spec.widths[0], backbone.spec.num_blocks)
        if (policy["in_features"], policy["num_blocks"]) != expected:
            raise ValueError(f"an OFAS head for {policy['in_features']} stem channels and "
                             f"{policy['num_blocks']} blocks does not fit a backbone with "
                             f"{expected[0]} and {expected[1]}")
        return cls(backbone, tuple(policy["hidden"]), pool_grid=policy["pool_grid"],
                   activation=policy["activation"], input_norm=policy.get("input_norm", "none"),
                   logit_norm=policy.get("logit_norm", "none"),
                   logit_scale=policy.get("logit_scale", 2.0), rngs=rngs)

    @property
    def training(self) -> bool:
        return not self.backbone.stem_bn.use_running_average

    def execute_probs(self, stem_features: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.policy(stem_features))

    def plan(self, images: jax.Array) -> jax.Array:
        """(B, L) bools: the blocks each image runs (threshold 0.5), decided once after the stem."""
        check_images(images, self.spec.in_channels)
        return decisions.threshold(self.execute_probs(self.backbone.stem(images)))

    def __call__(self, images: jax.Array) -> jax.Array:
        check_images(images, self.spec.in_channels)
        features = self.backbone.stem(images)
        probs = self.execute_probs(features)
        gates = decisions.straight_through(probs) if self.training else decisions.threshold(probs)
        return self.backbone.classify(_MASKED.run_units(self.backbone, features, gates))

    def predict(self, images: jax.Array, executor="cond", **options) -> tuple[jax.Array, jax.Array]:
        """(logits, plan) in inference, running only the planned blocks; eval mode only.

        `executor`: an `execution.Executor` or its name ("cond": one plan per call, batch 1;
        "bucketed": per-sample plans), options to its constructor.
        """
        executor = execution.executors.get(executor, **options)
        check_images(images, self.spec.in_channels)
        features = self.backbone.stem(images)
        plan = decisions.threshold(self.execute_probs(features))
        return self.backbone.classify(executor.run_units(self.backbone, features, plan)), plan

    def costs(self, input_shape: tuple[int, ...] = (1, 32, 32, 3)) -> cost.BlockCosts:
        """MACs per block plan: the backbone's blocks, and the head, which runs for every input."""
        return cost.block_costs(self.backbone, input_shape, policy=self.policy)


def make_predictors(graphdef, executor="cond", check_finite: bool = False, **options):
    """jit'd (params, batch_stats, images) -> logits of an OFAS model: its own plans run by
    `executor` ("cond" at batch 1, "bucketed" for a batch), and the full backbone (every block).
    `check_finite=True`: both refuse NaN / inf pixels (a reduction per call)."""
    executor = execution.executors.get(executor, **options)
    planned = execution.jit_predict(graphdef, lambda model, images: model.predict(images, executor)[0],
                                    check_finite=check_finite)
    full = execution.jit_predict(graphdef, lambda model, images: model.backbone(images),
                                 check_finite=check_finite)
    return planned, full


class FixedPlanNet(nnx.Module):
    """A backbone that runs one plan for every image: the *static* sub-net an adaptive policy is
    compared with. The plan is a Python tuple of bools (part of the graph, not a weight). In
    training the skipped blocks do not run (`CifarResNet.drop_blocks`: a fine-tune costs the
    sub-net's time, not the backbone's); evaluation applies the masked executor (for inference
    that skips the work, give the plan to the cond or static executor)."""

    def __init__(self, backbone: CifarResNet, plan):
        plan = tuple(bool(b) for b in plan)
        if len(plan) != backbone.spec.num_blocks:
            raise ValueError(f"a plan of {len(plan)} blocks for a backbone of "
                             f"{backbone.spec.num_blocks}")
        self.backbone = backbone
        self.spec = backbone.spec
        self.fixed_plan = plan

    def plan(self, images: jax.Array) -> jax.Array:
        return jnp.broadcast_to(jnp.asarray(self.fixed_plan), (images.shape[0], len(self.fixed_plan)))

    def predict(self, images: jax.Array) -> jax.Array:
        """Logits in inference through the static executor: the skipped blocks do not run."""
        check_images(images, self.spec.in_channels)
        features = self.backbone.stem(images)
        return self.backbone.classify(_STATIC.run_units(self.backbone, features, self.fixed_plan))

    def __call__(self, images: jax.Array) -> jax.Array:
        check_images(images, self.spec.in_channels)
        if self.backbone.training:
            plan = jnp.asarray(self.fixed_plan)
            return self.backbone.drop_blocks(images, plan, jnp.ones(plan.shape, jnp.float32))
        features = self.backbone.stem(images)
        return self.backbone.classify(_MASKED.run_units(self.backbone, features, self.plan(images)))
