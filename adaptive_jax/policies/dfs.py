"""DFS's recurrent gate (docs/methods.md 7.2, docs/dfs.md): per block, the block input average
pooled and embedded by the block's own linear map (the reference's 1x1 conv on a pooled map),
one LSTM cell shared by every block carrying its state from block to block, and a linear map to
the logits of the menu's options. Decided block by block, on each block's input, as SkipNet's
recurrent gate; `models.quantized` runs what it picks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive_jax.nn.stack import stack_modules


class BlockEmbedding(nnx.Module):
    """(B, H, W, C) block input -> (B, embed): global average pool, then a private linear map.
    Also the block's own bias on the options' logits (`option_bias`, zero unless the gate is
    started from a plan: `RecurrentGate.start_at_plan`)."""

    def __init__(self, channels: int, embed: int, num_options: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(channels, embed, rngs=rngs)
        self.option_bias = nnx.Param(jnp.zeros((num_options,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x.mean(axis=(1, 2)))


class StageEmbeddings(nnx.Module):
    """One stage's embeddings, laid out as its blocks: the first apart, the others stacked."""

    def __init__(self, cin: int, cout: int, num_blocks: int, embed: int, num_options: int,
                 rngs: nnx.Rngs):
        self.first = BlockEmbedding(cin, embed, num_options, rngs=rngs)
        self.rest = (stack_modules([BlockEmbedding(cout, embed, num_options, rngs=rngs)
                                    for _ in range(num_blocks - 1)]) if num_blocks > 1 else None)


class RecurrentGate(nnx.Module):
    """Embeddings per block (companions of the blocks' walk), a shared LSTM cell and the output
    layer. `initial_option`: the option whose logit starts highest (the float block: the gate
    starts by running everything, as the warm-up step then trains it to)."""

    def __init__(self, widths: tuple[int, ...], blocks_per_stage: int, num_options: int,
                 embed: int = 10, hidden: int = 10, initial_option: int | None = None, *,
                 rngs: nnx.Rngs):
        if embed < 1 or hidden < 1:
            raise ValueError(f"embed and hidden sizes must be positive, got {embed}, {hidden}")
        self.embeddings = nnx.List([
            StageEmbeddings(cin, cout, blocks_per_stage, embed, num_options, rngs)
            for cin, cout in zip((widths[0], widths[0], widths[1]), widths)])
        self.cell = nnx.LSTMCell(embed, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_options, rngs=rngs)
        if initial_option is not None:
            self.out.bias[...] = self.out.bias[...].at[initial_option].set(2.0)
        self.hidden = hidden
        self.blocks_per_stage = blocks_per_stage

    def start_at_plan(self, plan, strength: float) -> None:
        """Make the gate pick option `plan[l]` at block l for every input: each block's
        `option_bias` is `strength` on its plan's option, and the shared output layer is zeroed,
        so the LSTM's per-input signal enters again only as that layer learns (the plan is the
        prior, per-input deviations are what training adds). `plan`: (L,) option ints."""
        plan = jnp.asarray(plan, jnp.int32)
        bias = strength * jax.nn.one_hot(plan, self.out.bias.shape[-1])
        n = self.blocks_per_stage
        for s, stage in enumerate(self.embeddings):
            stage.first.option_bias[...] = bias[s * n]
            if stage.rest is not None:
                stage.rest.option_bias[...] = bias[s * n + 1:(s + 1) * n]
        self.out.kernel[...] = jnp.zeros_like(self.out.kernel[...])
        self.out.bias[...] = jnp.zeros_like(self.out.bias[...])

    def initial_state(self, batch: int) -> tuple[jax.Array, jax.Array]:
        """The LSTM state at the first block: zeros, reset for every batch (as the reference)."""
        return (jnp.zeros((batch, self.hidden)), jnp.zeros((batch, self.hidden)))

    def step(self, embedding: BlockEmbedding, x: jax.Array, state):
        """(logits (B, K), next state) for the block whose input is `x`."""
        state, y = self.cell(state, embedding(x))
        return self.out(y) + embedding.option_bias[...], state
