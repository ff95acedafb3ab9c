"""The masked executor: every block runs on every sample; the plan selects between its output and
its shortcut. Dense and differentiable in the plan, so it is the training path (a float plan in
[0, 1], e.g. a straight-through estimate, blends the two); it saves no time at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive_jax.execution import blocks
from adaptive_jax.models.resnet import BasicBlock, CifarResNet, Stage


def _blend(block: BasicBlock, x: jax.Array, gate: jax.Array) -> jax.Array:
    return block.gated(x, gate)


def _run_rest(stage: Stage, x: jax.Array, gates: jax.Array) -> jax.Array:
    graphdef, state = nnx.split(stage.rest)
    training = not stage.rest.bn1.use_running_average

    def step(h, inputs):
        block_state, gate = inputs
        block = nnx.merge(graphdef, block_state)
        h = _blend(block, h, gate)
        return h, (nnx.state(block, nnx.BatchStat) if training else None)

    # The block axis leads in the scan: (B, n) or (n,) gates -> (n, ...)
    x, new_stats = jax.lax.scan(step, x, (state, jnp.moveaxis(gates, -1, 0)),
                                unroll=training and stage.unroll_training)
    if training:
        nnx.update(stage.rest, new_stats)
    return x


def run_blocks(model: CifarResNet, features: jax.Array, plan: jax.Array) -> jax.Array:
    """The blocks from the stem's output on, each blended by its plan bit or float gate."""
    return blocks.run_blocks(model, features, plan, _blend, _run_rest, float_gates=True)


def forward(model: CifarResNet, images: jax.Array, plan: jax.Array) -> jax.Array:
    """Logits with each block blended by its plan bit: bools, or float gates in [0, 1] (training)."""
    return blocks.forward(model, images, plan, _blend, _run_rest, float_gates=True)
