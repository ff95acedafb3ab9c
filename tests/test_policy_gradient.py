"""Reward shapes, self-critical advantage and the REINFORCE loss, checked against hand-computed
values, and a bandit that the loss must solve."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adaptive_jax.policies import decisions
from adaptive_jax.train import policy_gradient as pg


def test_skipnet_returns_by_hand():
    actions = jnp.array([[True, False, False], [True, True, True]])
    ce = jnp.array([0.5, 2.0])
    # bonus per skipped block = 0.3 / 3 = 0.1; the terminal reward -CE sits on the last block
    want = [[0.1 + 0.1 - 0.5, 0.1 + 0.1 - 0.5, 0.1 - 0.5], [-2.0, -2.0, -2.0]]
    np.testing.assert_allclose(pg.skipnet_returns(ce, actions, 0.3), want, rtol=1e-6)


def test_blockdrop_returns_by_hand():
    actions = jnp.array([[True, True, False, False], [True, True, True, True]])
    correct = jnp.array([True, False])
    r = pg.blockdrop_returns(correct, actions, penalty=2.0, wrong_penalty=5.0)
    np.testing.assert_allclose(r, [[1 - 2.0 * 0.25] * 4, [-5.0] * 4])


def test_ofas_code_returns_by_hand():
    actions = jnp.array([[True, False]])
    ce = jnp.array([1.0])
    a = 0.1 / 2
    r2 = 0 + 1.0 * a * 0.99 ** 1             # block 2 skipped: no execution penalty
    r1 = -a + 1.0 * a * 0.99 ** 2 + 0.9 * r2
    np.testing.assert_allclose(pg.ofas_code_returns(ce, actions, 0.1), [[r1, r2]], rtol=1e-6)


def test_unknown_reward_shape_is_named():
    with pytest.raises(ValueError, match="unknown reward shape 'a2c'"):
        pg.returns("a2c", ce=jnp.zeros(1), correct=jnp.ones(1, bool), actions=jnp.ones((1, 2), bool),
                   penalty=1.0)


def test_curriculum_releases_the_last_blocks_first():
    np.testing.assert_array_equal(pg.curriculum_weights(4, jnp.asarray(0), 10), [0, 0, 0, 1])
    np.testing.assert_array_equal(pg.curriculum_weights(4, jnp.asarray(25), 10), [0, 1, 1, 1])
    np.testing.assert_array_equal(pg.curriculum_weights(4, jnp.asarray(99), 10), [1, 1, 1, 1])
    np.testing.assert_array_equal(pg.curriculum_weights(4, jnp.asarray(0), 0), [1, 1, 1, 1])


@pytest.mark.parametrize("penalty, want_on", [(0.2, True), (3.0, False)])
def test_reinforce_learns_when_a_block_is_worth_its_cost(penalty, want_on):
    """A bandit: running block 0 lowers the loss by 0.5 (block 1 does nothing); the skip bonus is
    penalty / 2 per block. Self-critical REINFORCE on skipnet returns must keep block 0 exactly
    when the loss it saves beats the bonus, and skip block 1 either way."""
    logits = jnp.zeros((2,))
    opt = optax.adam(0.1)
    opt_state = opt.init(logits)

    def loss(logits, key):
        probs = jnp.broadcast_to(jax.nn.sigmoid(logits), (64, 2))
        actions, log_prob, _ = decisions.bounded_bernoulli(key, probs, 0.9)
        greedy = decisions.threshold(probs)
        ce = lambda a: 1.0 - 0.5 * a[:, 0]
        advantage = (pg.skipnet_returns(ce(actions), actions, penalty)
                     - pg.skipnet_returns(ce(greedy), greedy, penalty))
        return pg.reinforce_loss(log_prob, advantage)

    @jax.jit
    def step(logits, opt_state, key):
        updates, opt_state = opt.update(jax.grad(loss)(logits, key), opt_state)
        return optax.apply_updates(logits, updates), opt_state

    for i in range(150):
        logits, opt_state = step(logits, opt_state, jax.random.key(i, impl="rbg"))
    probs = jax.nn.sigmoid(logits)
    assert bool(probs[0] > 0.5) == want_on, probs
    assert probs[1] < 0.5, probs


def test_normalized_advantage_keeps_sign_and_zeros():
    adv = jnp.array([[0.0, 4.0], [-2.0, 0.0]])
    out = pg.normalize_advantage(adv)
    assert float(jnp.std(out)) == pytest.approx(1.0, rel=1e-4)
    assert (jnp.sign(out) == jnp.sign(adv)).all()
    assert float(pg.normalize_advantage(jnp.zeros((3, 2))).max()) == 0.0
