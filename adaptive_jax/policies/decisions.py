"""Decision rules: from execute probabilities p (B, L) to a plan.

- `threshold`: inference, m = 1[p >= 0.5].
- `straight_through`: OFAS stage A / SkipNet supervised pre-training: the hard decision going
  forward, the identity going backward (dm/dp = 1).
- `bounded_bernoulli`: policy gradient (BlockDrop): sample from p' = a p + (1 - a)(1 - p), so that
  every action keeps probability >= 1 - a and exploration never dies; returns log-probabilities.
- `ofas_code_epsilon_greedy`: the OFAS reference code's estimator, for comparison only (see there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-7


def threshold(probs: jax.Array, level: float = 0.5) -> jax.Array:
    return probs >= level


def straight_through(probs: jax.Array, level: float = 0.5) -> jax.Array:
    hard = (probs >= level).astype(probs.dtype)
    # (p - stopgrad(p)) is exactly 0 going forward, so the value is exactly the hard decision
    return hard + (probs - jax.lax.stop_gradient(probs))


def bound(probs: jax.Array, alpha: float) -> jax.Array:
    """BlockDrop's bounded probability: alpha p + (1 - alpha)(1 - p)."""
    if not 0.5 <= alpha <= 1.0:
        raise ValueError(f"the probability bound alpha must be in [0.5, 1], got {alpha}")
    return alpha * probs + (1.0 - alpha) * (1.0 - probs)


def bernoulli_log_prob(probs: jax.Array, actions: jax.Array) -> jax.Array:
    probs = jnp.clip(probs, _EPS, 1.0 - _EPS)
    return jnp.where(actions, jnp.log(probs), jnp.log1p(-probs))


def bernoulli_entropy(probs: jax.Array) -> jax.Array:
    probs = jnp.clip(probs, _EPS, 1.0 - _EPS)
    return -(probs * jnp.log(probs) + (1.0 - probs) * jnp.log1p(-probs))


def bounded_bernoulli(key: jax.Array, probs: jax.Array, alpha: float = 0.9):
    """Samples actions from the bounded probabilities; returns (actions bool, log_prob, entropy)."""
    bounded = bound(probs, alpha)
    actions = jax.random.uniform(key, probs.shape) < jax.lax.stop_gradient(bounded)
    return actions, bernoulli_log_prob(bounded, actions), bernoulli_entropy(bounded)


def ofas_code_epsilon_greedy(key: jax.Array, probs: jax.Array, epsilon: float = 0.1):
    """The reference code's estimator (docs/methods.md 3.3, stage B), reproduced for comparison only.

    The greedy action 1[p >= 0.5] gets weight 1 - epsilon, the other epsilon; the straight-through
    offset p - stopgrad(p) is added to both weights, and the pair is normalised as a categorical
    distribution does. Its gradient is not that of any distribution we sample from; prefer
    `bounded_bernoulli`. Returns (actions bool, log_prob, entropy) like it.
    """
    greedy = probs >= 0.5
    offset = probs - jax.lax.stop_gradient(probs)
    w_execute = jnp.where(greedy, 1.0 - epsilon, epsilon) + offset
    w_skip = jnp.where(greedy, epsilon, 1.0 - epsilon) + offset
    p_execute = w_execute / (w_execute + w_skip)
    actions = jax.random.uniform(key, probs.shape) < jax.lax.stop_gradient(p_execute)
    log_prob = jnp.log(jnp.where(actions, w_execute, w_skip) / (w_execute + w_skip))
    return actions, log_prob, bernoulli_entropy(p_execute)


def straight_through_argmax(probs: jax.Array) -> jax.Array:
    """Categorical decisions (..., K): the one-hot argmax going forward, the softmax's gradient
    going back (DFS's gate, docs/methods.md 7.2)."""
    hard = jax.nn.one_hot(probs.argmax(-1), probs.shape[-1], dtype=probs.dtype)
    return hard + (probs - jax.lax.stop_gradient(probs))
