"""Policy gradient for skip decisions: reward shapes, self-critical advantage, REINFORCE loss.

All decisions of a sample are (B, L) actions (True = execute) taken at once. A reward shape maps
the outcome of one forward pass to per-block returns (B, L); the advantage is the return of the
sampled plan minus the return of the greedy plan on the same image (self-critical baseline,
BlockDrop), and the loss is -sum_k log pi(a_k) * advantage_k, averaged over the batch.

Reward shapes (docs/methods.md 2.1, 2.2, 3.3). `penalty` is the weight of compute in every shape: the
knob that moves a policy along the accuracy / MACs curve.
- "blockdrop": R = 1 - penalty * c^2 if the prediction is right, else -wrong_penalty; c = the
  share of blocks executed. The same R for every block.
- "skipnet": SkipNet's returns with discount 1: R_k = sum_{j>=k} penalty / L * (1 - a_j) - CE:
  a bonus for each block skipped at or after k, and the terminal reward -CE.
- "ofas_code": the OFAS reference code's returns, reproduced for comparison only:
  R_k = -a_k penalty / L + CE penalty / L * 0.99^(L-k+1) + 0.9 R_{k+1}. The CE enters with a plus
  sign there, which rewards a high loss: it looks like a sign error (docs/methods.md 3.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

REWARDS = ("blockdrop", "skipnet", "ofas_code")


def _discounted_returns(rewards: jax.Array, discount: float) -> jax.Array:
    """R_k = r_k + discount * R_{k+1} over the last axis."""
    def step(carry, r):
        carry = r + discount * carry
        return carry, carry

    _, returns = jax.lax.scan(step, jnp.zeros(rewards.shape[:-1], rewards.dtype),
                              jnp.moveaxis(rewards, -1, 0), reverse=True)
    return jnp.moveaxis(returns, 0, -1)


def blockdrop_returns(correct: jax.Array, actions: jax.Array, penalty: float,
                      wrong_penalty: float = 1.0) -> jax.Array:
    used = actions.astype(jnp.float32).mean(-1)
    reward = jnp.where(correct, 1.0 - penalty * used ** 2, -wrong_penalty)
    return jnp.broadcast_to(reward[:, None], actions.shape)


def skipnet_returns(ce: jax.Array, actions: jax.Array, penalty: float) -> jax.Array:
    num_blocks = actions.shape[-1]
    bonus = penalty / num_blocks * (~actions).astype(jnp.float32)
    rewards = bonus.at[:, -1].add(-ce)
    return _discounted_returns(rewards, 1.0)


def ofas_code_returns(ce: jax.Array, actions: jax.Array, penalty: float,
                      loss_discount: float = 0.99, discount: float = 0.9) -> jax.Array:
    num_blocks = actions.shape[-1]
    k = jnp.arange(1, num_blocks + 1)
    execution = actions.astype(jnp.float32) * penalty / num_blocks
    prediction = ce[:, None] * penalty / num_blocks * loss_discount ** (num_blocks - k + 1)
    return _discounted_returns(-execution + prediction, discount)


def returns(shape: str, *, ce: jax.Array, correct: jax.Array, actions: jax.Array, penalty: float,
            wrong_penalty: float = 1.0) -> jax.Array:
    """Per-block returns (B, L) of one forward pass under `actions`."""
    if shape == "blockdrop":
        return blockdrop_returns(correct, actions, penalty, wrong_penalty)
    if shape == "skipnet":
        return skipnet_returns(ce, actions, penalty)
    if shape == "ofas_code":
        return ofas_code_returns(ce, actions, penalty)
    raise ValueError(f"unknown reward shape {shape!r}; expected one of {REWARDS}")


def normalize_advantage(advantage: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Advantages divided by their standard deviation over the batch (not re-centred: the
    self-critical baseline already centres them, and a batch where the sampled plans all tie with
    the greedy one stays all zeros)."""
    return advantage / (jnp.std(advantage) + eps)


def reinforce_loss(log_prob: jax.Array, advantage: jax.Array, entropy: jax.Array | None = None,
                   entropy_weight: float = 0.0, block_weights: jax.Array | None = None) -> jax.Array:
    """-mean_b sum_k w_k log pi(a_k) A_k - entropy_weight * mean entropy.

    `block_weights` (L,) masks blocks out of the loss (a curriculum forces them on).
    """
    advantage = jax.lax.stop_gradient(advantage)
    w = jnp.ones(log_prob.shape[-1]) if block_weights is None else block_weights
    loss = -(log_prob * advantage * w).sum(-1).mean()
    if entropy is not None and entropy_weight:
        loss -= entropy_weight * (entropy * w).sum(-1).mean() / jnp.maximum(w.sum(), 1.0)
    return loss


def curriculum_weights(num_blocks: int, step: jax.Array, steps_per_block: int) -> jax.Array:
    """BlockDrop's curriculum, counted in steps: at step t only the last min(1 + t // steps_per_block,
    L) blocks are decided by the policy; the others are forced on and left out of the loss
    (BlockDrop releases one block per epoch). All ones when steps_per_block is 0."""
    if steps_per_block <= 0:
        return jnp.ones(num_blocks)
    released = jnp.minimum(1 + step // steps_per_block, num_blocks)
    return (jnp.arange(num_blocks) >= num_blocks - released).astype(jnp.float32)
