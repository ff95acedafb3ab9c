"""The bucketed executor: a batch with one plan per sample; each block runs only on its active rows.

Per block: the rows whose bit is on are gathered (active rows first, in batch order) to a static
capacity, the smallest multiple of B / `buckets` that holds them, run through the block, and
scattered back over the block's shortcut output. The capacity is picked at run time by
`lax.switch` among `buckets` compiled branches (plus one for "no row active": the shortcut only),
so the work done follows the plan while every shape stays static. docs/design.md measured this menu
(multiples of B/8) at 0.76-0.86 of the ideal speedup, and power-of-two capacities at 0.65-0.75.
A block that every row runs takes a branch of its own, the block on the batch as it is (no gather
or scatter): so a batch whose rows share one plan runs like the cond executor.

Never `vmap` over `lax.cond` instead: under `vmap` both branches run for every row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive_jax.config import check_count
from adaptive_jax.execution import blocks
from adaptive_jax.models.resnet import BasicBlock, CifarResNet, Stage

DEFAULT_BUCKETS = 8


def capacities(batch: int, buckets: int) -> tuple[int, ...]:
    """The static row capacities a block may run at: multiples of batch / buckets, up to batch."""
    check_count("buckets", buckets, meaning="how many row capacities a block may run at")
    if batch % buckets:
        raise ValueError(f"batch {batch} is not a multiple of buckets={buckets}; "
                         f"pad the batch or choose buckets dividing it")
    step = batch // buckets
    return tuple(step * k for k in range(1, buckets + 1))


def _run_block_on_rows(block: BasicBlock, x: jax.Array, bits: jax.Array, buckets: int) -> jax.Array:
    batch = x.shape[0]
    caps = capacities(batch, buckets)
    shortcut = block.shortcut(x)
    order = jnp.argsort(~bits, stable=True)  # active rows first
    count = bits.sum()

    def run_at(capacity):
        def branch(x, shortcut):
            rows = order[:capacity]
            out = block(x[rows])
            keep = bits[rows].reshape((capacity,) + (1,) * (out.ndim - 1))
            return shortcut.at[rows].set(jnp.where(keep, out, shortcut[rows]))
        return branch

    def run_all(x, shortcut):  # every row runs the block: no gather, no scatter
        return block(x)

    branches = [lambda x, shortcut: shortcut] + [run_at(c) for c in caps] + [run_all]
    index = (count + caps[0] - 1) // caps[0]  # 0 when no row runs the block
    index = jnp.where(count == batch, len(caps) + 1, index)
    return jax.lax.switch(index, branches, x, shortcut)


def _make(buckets: int):
    def run_first(block: BasicBlock, x: jax.Array, bits: jax.Array) -> jax.Array:
        return _run_block_on_rows(block, x, jnp.broadcast_to(bits, x.shape[:1]), buckets)

    def run_rest(stage: Stage, x: jax.Array, bits: jax.Array) -> jax.Array:
        graphdef, state = nnx.split(stage.rest)
        bits = jnp.broadcast_to(bits, x.shape[:1] + bits.shape[-1:])

        def step(h, inputs):
            block_state, block_bits = inputs
            return _run_block_on_rows(nnx.merge(graphdef, block_state), h, block_bits, buckets), None

        x, _ = jax.lax.scan(step, x, (state, jnp.moveaxis(bits, -1, 0)))
        return x

    return run_first, run_rest


def _check_eval(model: CifarResNet) -> None:
    if not model.stem_bn.use_running_average:
        raise ValueError("the bucketed executor is for inference: call model.eval() first "
                         "(training uses adaptive_jax.execution.masked)")


def run_blocks(model: CifarResNet, features: jax.Array, plan: jax.Array,
               buckets: int = DEFAULT_BUCKETS) -> jax.Array:
    """The blocks from the stem's output on, each on the rows of `plan` that run it."""
    _check_eval(model)
    capacities(features.shape[0], buckets)
    return blocks.run_blocks(model, features, plan, *_make(buckets))


def forward(model: CifarResNet, images: jax.Array, plan: jax.Array,
            buckets: int = DEFAULT_BUCKETS) -> jax.Array:
    """Logits with per-sample plans ((B, L) bools, or (L,) shared). The model must be in eval mode."""
    _check_eval(model)
    capacities(images.shape[0], buckets)  # a clear error before tracing the blocks
    return blocks.forward(model, images, plan, *_make(buckets))
