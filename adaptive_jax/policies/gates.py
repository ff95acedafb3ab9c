"""A per-block gate (SkipNet / ConvNet-AIG style, docs/methods.md 2.2-2.3): the baseline OFAS is compared
with. Each block has its own gate, evaluated on that block's input, so L gates run one after the
other, interleaved with the blocks, instead of OFAS's single head after the stem.

block input (B, H, W, C) -> global average pool -> Linear C->hidden -> ReLU -> Linear hidden->1:
ConvNet-AIG's gate without its BN (the 1x1 convs on a pooled vector are linear layers).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


class BlockGate(nnx.Module):
    """(B, H, W, C) block input -> (B,) logit of executing the block."""

    def __init__(self, channels: int, hidden: int = 16, *, initial_execute_prob: float = 0.9,
                 rngs: nnx.Rngs):
        if not 0.0 < initial_execute_prob < 1.0:
            raise ValueError(f"initial_execute_prob must be in (0, 1), got {initial_execute_prob}")
        self.hidden = nnx.Linear(channels, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)
        # ConvNet-AIG initialises its gates open (~85 %), for the same reason as the OFAS head.
        self.out.bias[...] = jnp.full_like(
            self.out.bias[...], math.log(initial_execute_prob / (1 - initial_execute_prob)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x.mean(axis=(1, 2)))))[..., 0]
