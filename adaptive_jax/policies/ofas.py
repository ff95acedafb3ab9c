"""The OFAS head (docs/methods.md 3.2): one tiny module, evaluated once after the stem, that returns the
execute-probability logits of every block.

stem output (B, H, W, C) -> stop-gradient -> average pool -> linear stack -> (B, L) logits.
The reference pools globally (C numbers) and stacks linear layers with no nonlinearity between them
(one affine map, factorised): `pool_grid=1, activation="none"`, the default, is that. The
stop-gradient keeps the policy from shaping the stem: the backbone is trained by the
classification loss only.

Why the options: C = 16 globally pooled stem channels are close to colour statistics, and an
affine map of them can only rank images along one direction; trained that way, every test image
got the same plan (docs/ofas.md). `pool_grid=g` pools to a g x g grid (C g^2 inputs: where the
edges are, not only how many), and `activation="relu"` puts a ReLU between the linear layers. Both
cost thousands of MACs against the backbone's tens of millions (counted by `cost.block_costs`).
`input_norm="layer"` standardises the pooled vector per image: the stem's pooled features are
all positive with a large common part, so Adam's near-uniform steps on a wide first layer moved
every image's logits together and saturated the head within ~40-80 steps (docs/ofas.md);
without the common part, a step moves images apart rather than all at once.

`logit_norm="batch"` separates *how often* a block runs from *which images* run it. Trained from
a zoo backbone with the straight-through estimator, the plain head saturates: per block, the
logits' spread over test images is a fraction of their distance from 0 (e.g. 6.3 +- 0.5), so
every image gets nearly the same plan (docs/ofas.md). With the option, each block's score is
batch-normalised (running statistics in eval mode, as BN), scaled by a fixed `logit_scale` and
shifted by a learned per-block bias: logit = logit_scale * (s - mean) / std + bias. The bias sets
the block's run rate; the normalised score can only rank images, and BN's backward pass removes
the batch-common part of the gradient from it, so the score learns which images gain more than
average from the block. No saturation of the score is possible (it is unit-variance by
construction); a block stays all-on or all-off only if its bias says so.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# Hidden widths of the linear stack, per variant of the reference code (docs/methods.md 3.2).
OFAS_VARIANTS = {
    "I": (32,),              # ResNet-38, supervised and RL
    "II": (32, 32),          # ResNet-110, supervised
    "II_rl": (48, 32),       # ResNet-110, RL
}
ACTIVATIONS = ("none", "relu")
INPUT_NORMS = ("none", "layer")
LOGIT_NORMS = ("none", "batch")
# logit_norm="batch": the stored per-block bias is multiplied by this. Adam moves a parameter by
# about its learning rate per step whatever the gradient's size, so a bias stored as is would move
# a block's run rate by ~0.001 logits per step (0.26 over a 256-step fine-tune: measured, the rate
# did not move); the plain head's logits move faster because many weights move them together.
BIAS_STEP = 20.0


class OFASHead(nnx.Module):
    """(B, H, W, C) stem features -> (B, num_blocks) logits of executing each block."""

    def __init__(self, in_features: int, num_blocks: int, hidden: tuple[int, ...] = (32,), *,
                 initial_execute_prob: float = 0.9, pool_grid: int = 1, activation: str = "none",
                 input_norm: str = "none", logit_norm: str = "none", logit_scale: float = 2.0,
                 rngs: nnx.Rngs):
        if logit_norm not in LOGIT_NORMS:
            raise ValueError(f"unknown OFAS head logit_norm {logit_norm!r}; expected one of {LOGIT_NORMS}")
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown OFAS head input_norm {input_norm!r}; expected one of {INPUT_NORMS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown OFAS head activation {activation!r}; expected one of {ACTIVATIONS}")
        if not isinstance(pool_grid, int) or pool_grid < 1:
            raise ValueError(f"pool_grid must be a positive int (1 = global average pool), got {pool_grid!r}")
        if not 0.0 < initial_execute_prob < 1.0:
            raise ValueError(f"initial_execute_prob must be in (0, 1), got {initial_execute_prob}")
        if num_blocks < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"num_blocks and hidden widths must be positive, got {num_blocks}, {hidden}")
        self.in_features, self.hidden = in_features, tuple(hidden)
        self.pool_grid, self.activation, self.input_norm = pool_grid, activation, input_norm
        widths = (in_features * pool_grid ** 2, *hidden, num_blocks)
        self.norm = nnx.LayerNorm(widths[0], rngs=rngs) if input_norm == "layer" else None
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, widths[1:])])
        # Start with every block (nearly) on, as ConvNet-AIG does (its gates start ~85 % open): a
        # freshly initialised backbone learns as a plain ResNet while the policy finds its feet.
        initial_logit = math.log(initial_execute_prob / (1 - initial_execute_prob))
        last = self.layers[-1]
        last.bias[...] = jnp.full_like(last.bias[...], initial_logit)
        self.num_blocks = num_blocks
        self.logit_norm, self.logit_scale = logit_norm, float(logit_scale)
        if logit_norm == "batch":
            self.score_norm = nnx.BatchNorm(num_blocks, use_scale=False, use_bias=False,
                                            momentum=0.9, rngs=rngs)
            self.gate_bias = nnx.Param(jnp.full((num_blocks,), initial_logit / BIAS_STEP, jnp.float32))
        else:
            self.score_norm = self.gate_bias = None

    def config(self) -> dict:
        """What rebuilds this head (the zoo stores it): `OFASHead(**config, rngs=...)`."""
        return {"in_features": self.in_features, "num_blocks": self.num_blocks,
                "hidden": list(self.hidden), "pool_grid": self.pool_grid,
                "activation": self.activation, "input_norm": self.input_norm,
                "logit_norm": self.logit_norm, "logit_scale": self.logit_scale}

    def start_at_plan(self, plan, margin: float = 3.0) -> None:
        """Every image starts at `plan` ((num_blocks,) bools: a static sub-net), and training
        learns per-image deviations from it (DFS's gate start, docs/ofas.md): each block's logit
        is `margin` on the plan's side of 0 for every image; the last layer, which reads the
        image, starts at zero (with `logit_norm="batch"`, its score normalisation at zero mean
        and unit variance too, so inference sees the same logits). Under the straight-through
        estimator's logistic noise a margin of 3 still flips ~5 % of the decisions: the
        deviations that training can learn from."""
        if not margin > 0:
            raise ValueError(f"the plan's logit margin must be positive, got {margin}")
        plan = jnp.asarray(plan)
        if plan.shape != (self.num_blocks,) or plan.dtype != jnp.bool_:
            raise ValueError(f"a start plan is ({self.num_blocks},) bools, one per block, got "
                             f"shape {plan.shape} of {plan.dtype}")
        logits = jnp.where(plan, margin, -margin).astype(jnp.float32)
        last = self.layers[-1]
        last.kernel[...] = jnp.zeros_like(last.kernel[...])
        if self.score_norm is None:
            last.bias[...] = logits
            return
        last.bias[...] = jnp.zeros_like(last.bias[...])
        self.score_norm.mean[...] = jnp.zeros_like(self.score_norm.mean[...])
        self.score_norm.var[...] = jnp.ones_like(self.score_norm.var[...])
        self.gate_bias[...] = logits / BIAS_STEP

    def pooled(self, stem_features: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, C g^2): the average over each cell of a g x g grid."""
        x = jax.lax.stop_gradient(stem_features)
        b, h, w, c = x.shape
        g = self.pool_grid
        if h % g or w % g:
            raise ValueError(f"pool_grid {g} must divide the stem output's {h}x{w}")
        return x.reshape(b, g, h // g, g, w // g, c).mean(axis=(2, 4)).reshape(b, g * g * c)

    def __call__(self, stem_features: jax.Array) -> jax.Array:
        h = self.pooled(stem_features)
        if self.norm is not None:
            h = self.norm(h)
        for i, layer in enumerate(self.layers):
            if i and self.activation == "relu":
                h = jax.nn.relu(h)
            h = layer(h)
        if self.score_norm is not None:
            h = self.logit_scale * self.score_norm(h) + BIAS_STEP * self.gate_bias[...]
        return h
