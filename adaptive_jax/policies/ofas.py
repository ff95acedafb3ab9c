"""The OFAS head (methods.md 3.2): one tiny module, evaluated once after the stem, that returns the
execute-probability logits of every block.

stem output (B, H, W, C) -> stop-gradient -> global average pool -> linear stack -> (B, L) logits.
The reference stacks linear layers with no nonlinearity between them (one affine map, factorised);
we keep that, since it is what the method is. The stop-gradient keeps the policy from shaping the
stem: the backbone is trained by the classification loss only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# Hidden widths of the linear stack, per variant of the reference code (methods.md 3.2).
OFAS_VARIANTS = {
    "I": (32,),              # ResNet-38, supervised and RL
    "II": (32, 32),          # ResNet-110, supervised
    "II_rl": (48, 32),       # ResNet-110, RL
}


class OFASHead(nnx.Module):
    """(B, H, W, C) stem features -> (B, num_blocks) logits of executing each block."""

    def __init__(self, in_features: int, num_blocks: int, hidden: tuple[int, ...] = (32,), *,
                 initial_execute_prob: float = 0.9, rngs: nnx.Rngs):
        if not 0.0 < initial_execute_prob < 1.0:
            raise ValueError(f"initial_execute_prob must be in (0, 1), got {initial_execute_prob}")
        if num_blocks < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"num_blocks and hidden widths must be positive, got {num_blocks}, {hidden}")
        widths = (in_features, *hidden, num_blocks)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, widths[1:])])
        # Start with every block (nearly) on, as ConvNet-AIG does (its gates start ~85 % open): a
        # freshly initialised backbone learns as a plain ResNet while the policy finds its feet.
        last = self.layers[-1]
        last.bias[...] = jnp.full_like(last.bias[...], math.log(initial_execute_prob / (1 - initial_execute_prob)))
        self.num_blocks = num_blocks

    def __call__(self, stem_features: jax.Array) -> jax.Array:
        h = jax.lax.stop_gradient(stem_features).mean(axis=(1, 2))
        for layer in self.layers:
            h = layer(h)
        return h
