"""Walking a CIFAR ResNet block by block under a block plan: the part every executor shares.

A `CifarResNet` is stem -> stages -> classify; each `Stage` holds its first block apart and the
other blocks stacked. An executor supplies `run_first(block, x, bit)` for a stage's first block
and `run_rest(stage, x, bits)` for its stacked blocks; `run_blocks` / `forward` do the rest. A skipped block outputs `block.shortcut(x)` (identity, or the projection /
pooled shortcut at a stage transition), as in SkipNet and OFAS.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from adaptive_jax.models.resnet import BasicBlock, CifarResNet, Stage, check_images
from adaptive_jax.plans import BlockLayout, as_block_plan, check_block_plan

FirstBlockFn = Callable[[BasicBlock, jax.Array, jax.Array], jax.Array]
RestFn = Callable[[Stage, jax.Array, jax.Array], jax.Array]


def layout_of(model: CifarResNet) -> BlockLayout:
    return BlockLayout.of(model.spec)


def run_blocks(model: CifarResNet, features: jax.Array, plan: jax.Array,
               run_first: FirstBlockFn, run_rest: RestFn, float_gates: bool = False) -> jax.Array:
    """The blocks of `model` under `plan`, from the stem's output to the last stage's output.

    A policy that reads the stem's output (OFAS) plans here, between `model.stem` and this walk.
    `float_gates`: the executor also takes a float plan (gates in [0, 1]); its shape is checked.
    """
    layout = layout_of(model)
    plan = as_block_plan(plan)
    if float_gates and jnp.issubdtype(plan.dtype, jnp.floating):
        check_block_plan(jax.ShapeDtypeStruct(plan.shape, jnp.bool_), layout, features.shape[0])
    else:
        check_block_plan(plan, layout, batch_size=features.shape[0])
    x = features
    for stage, cols in zip(model.stages, layout.stage_slices()):
        stage_plan = plan[..., cols]
        x = run_first(stage.first, x, stage_plan[..., 0])
        if stage.rest is not None:
            x = run_rest(stage, x, stage_plan[..., 1:])
    return x


def forward(model: CifarResNet, images: jax.Array, plan: jax.Array,
            run_first: FirstBlockFn, run_rest: RestFn, float_gates: bool = False) -> jax.Array:
    """Logits of `model` on `images` with the blocks of `plan` ((L,) or (B, L) bools) only."""
    check_images(images, model.spec.in_channels)
    x = run_blocks(model, model.stem(images), plan, run_first, run_rest, float_gates)
    return model.classify(x)
