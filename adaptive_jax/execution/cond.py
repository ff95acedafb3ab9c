"""The cond executor: one plan for the whole call (batch 1, or a batch that shares its plan);
skipped blocks do not run.

The first block of each stage is a `lax.cond` between the block and its shortcut. The stacked
blocks are a `fori_loop` over the indices of the *active* blocks only (their weights picked from
the stack by a dynamic index): docs/design.md measured ~0 cost per skipped block this way, against
~10 us for a skipped `lax.cond` inside a scan. Inference only (a loop with a traced trip count
has no reverse-mode gradient); training uses the masked executor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive_jax.execution import blocks
from adaptive_jax.models.resnet import BasicBlock, CifarResNet, Stage


def _shared_bits(bits: jax.Array) -> jax.Array:
    if bits.ndim == 2 and bits.shape[0] != 1:
        raise ValueError(f"the cond executor runs one plan per call, got per-sample plans for "
                         f"{bits.shape[0]} samples; use a plan of shape (num_blocks,) shared by "
                         "the batch, or the bucketed executor")
    return bits.reshape(bits.shape[-1:])


def _run_first(block: BasicBlock, x: jax.Array, bit: jax.Array) -> jax.Array:
    return jax.lax.cond(_shared_bits(bit[..., None])[0], block, block.shortcut, x)


def _run_rest(stage: Stage, x: jax.Array, bits: jax.Array) -> jax.Array:
    bits = _shared_bits(bits)
    graphdef, state = nnx.split(stage.rest)
    # Indices of the active blocks first, in network order; the loop runs only those.
    order = jnp.argsort(~bits, stable=True)

    def body(i, h):
        block_state = jax.tree.map(lambda leaf: leaf[order[i]], state)
        return nnx.merge(graphdef, block_state)(h)

    return jax.lax.fori_loop(0, bits.sum(), body, x)


def _check_eval(model: CifarResNet) -> None:
    if not model.stem_bn.use_running_average:
        raise ValueError("the cond executor is for inference: call model.eval() first "
                         "(training uses adaptive_jax.execution.masked)")


def run_blocks(model: CifarResNet, features: jax.Array, plan: jax.Array) -> jax.Array:
    """The blocks from the stem's output on, running only those `plan` turns on."""
    _check_eval(model)
    return blocks.run_blocks(model, features, plan, _run_first, _run_rest)


def forward(model: CifarResNet, images: jax.Array, plan: jax.Array) -> jax.Array:
    """Logits, running only the blocks `plan` turns on. The model must be in eval mode."""
    _check_eval(model)
    return blocks.forward(model, images, plan, _run_first, _run_rest)
