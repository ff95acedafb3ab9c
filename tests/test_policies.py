"""Policies and decision rules: the OFAS head, the per-block gate, and the rules that turn
probabilities into plans."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive_jax.policies import BlockGate, OFASHead, decisions


def _rngs(seed=0):
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))  # rbg: threefry compiles slowly on XLA:CPU


def test_ofas_head_shape_initial_probability_and_stop_gradient():
    head = OFASHead(16, 15, (48, 32), initial_execute_prob=0.9, rngs=_rngs())
    features = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 16), np.float32))
    logits = head(features)
    assert logits.shape == (4, 15)
    # the bias sets the starting probability; small random weights move it a little
    assert 0.8 < float(jax.nn.sigmoid(logits).mean()) < 0.97
    # the head never shapes the stem: no gradient reaches its input ...
    grad_in = jax.grad(lambda f: head(f).sum())(features)
    assert not np.any(grad_in)
    # ... while its own weights do get one
    grads = nnx.grad(lambda h: h(features).sum())(head)
    assert all(np.any(g) for g in jax.tree.leaves(grads))


def test_ofas_head_errors_name_the_argument():
    with pytest.raises(ValueError, match="initial_execute_prob"):
        OFASHead(16, 9, initial_execute_prob=1.0, rngs=_rngs())
    with pytest.raises(ValueError, match="num_blocks"):
        OFASHead(16, 0, rngs=_rngs())
    with pytest.raises(ValueError, match="initial_execute_prob"):
        BlockGate(16, initial_execute_prob=0.0, rngs=_rngs())


def test_block_gate_reads_its_block_input():
    gate = BlockGate(32, rngs=_rngs())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8, 8, 32), np.float32))
    logits = gate(x)
    assert logits.shape == (3,)
    assert np.any(jax.grad(lambda v: gate(v).sum())(x))  # unlike the OFAS head, it is end to end


def test_threshold_and_straight_through():
    probs = jnp.array([[0.2, 0.5, 0.8]])
    np.testing.assert_array_equal(decisions.threshold(probs), [[False, True, True]])
    np.testing.assert_array_equal(decisions.straight_through(probs), [[0.0, 1.0, 1.0]])
    grad = jax.grad(lambda p: (decisions.straight_through(p) * jnp.array([1.0, 2.0, 3.0])).sum())(probs)
    np.testing.assert_array_equal(grad, [[1.0, 2.0, 3.0]])  # identity going backward


def test_bounded_bernoulli_samples_the_bounded_probability():
    probs = jnp.array([0.0, 0.3, 1.0])
    key = jax.random.key(0, impl="rbg")
    keys = jax.random.split(key, 20000)
    actions, log_prob, entropy = jax.vmap(lambda k: decisions.bounded_bernoulli(k, probs, 0.8))(keys)
    bounded = 0.8 * np.array([0.0, 0.3, 1.0]) + 0.2 * np.array([1.0, 0.7, 0.0])
    np.testing.assert_allclose(actions.mean(0), bounded, atol=0.015)
    want = np.where(actions, np.log(bounded), np.log1p(-bounded))
    np.testing.assert_allclose(log_prob, want, rtol=1e-5)
    assert np.all(entropy > 0)  # exploration never dies, even at p = 0 or 1
    with pytest.raises(ValueError, match="alpha must be in"):
        decisions.bounded_bernoulli(key, probs, 0.3)


def test_bernoulli_log_prob_gradient_moves_probability_toward_the_action():
    def logp(p, actions):
        return decisions.bernoulli_log_prob(decisions.bound(p, 0.9), actions).sum()

    p = jnp.array([0.5, 0.5])
    g = jax.grad(logp)(p, jnp.array([True, False]))
    assert g[0] > 0 and g[1] < 0


def test_ofas_code_estimator_keeps_the_greedy_action_nine_times_in_ten():
    probs = jnp.array([0.2, 0.7])
    keys = jax.random.split(jax.random.key(1, impl="rbg"), 20000)
    actions, log_prob, _ = jax.vmap(lambda k: decisions.ofas_code_epsilon_greedy(k, probs, 0.1))(keys)
    np.testing.assert_allclose(actions.mean(0), [0.1, 0.9], atol=0.015)
    np.testing.assert_allclose(np.exp(log_prob), np.where(actions, [0.1, 0.9], [0.9, 0.1]), rtol=1e-5)
    # the straight-through offset lets a gradient reach p although the weights are constants
    grad = jax.grad(lambda p: decisions.ofas_code_epsilon_greedy(keys[0], p, 0.1)[1].sum())(probs)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_ofas_head_grid_pool_relu_and_layer_norm():
    head = OFASHead(16, 9, (32,), pool_grid=4, activation="relu", input_norm="layer", rngs=_rngs())
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 32, 16))
    pooled = head.pooled(x)
    assert pooled.shape == (3, 256)
    # cell (i, j) of the grid is the mean of its 8 x 8 window
    np.testing.assert_allclose(pooled[:, :16], x[:, :8, :8].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert head(x).shape == (3, 9)
    # Layer norm: a common offset on every pooled feature does not change the logits.
    np.testing.assert_allclose(head(x + 3.0), head(x), rtol=1e-4, atol=1e-4)
    assert head.config()["input_norm"] == "layer"
    with pytest.raises(ValueError, match="pool_grid 3 must divide"):
        OFASHead(16, 9, pool_grid=3, rngs=_rngs())(x)
    with pytest.raises(ValueError, match="unknown OFAS head input_norm 'batch'"):
        OFASHead(16, 9, input_norm="batch", rngs=_rngs())


def test_ofas_head_batch_logit_norm_separates_rate_from_ranking():
    head = OFASHead(16, 5, (32,), pool_grid=4, activation="relu", logit_norm="batch",
                    logit_scale=2.0, initial_execute_prob=0.9, rngs=_rngs())
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 32, 32, 16))
    head.train()
    logits = np.asarray(head(x))
    # over the batch, every block's logits have mean = its bias (logit(0.9)) and std = the scale
    np.testing.assert_allclose(logits.mean(0), np.log(9.0), atol=1e-4)
    np.testing.assert_allclose(logits.std(0), 2.0, rtol=1e-2)
    # the score ranks images; the batch-common part of its gradient is removed by the norm, so
    # a loss that pushes every image's logit up moves the bias only
    graphdef, params, stats = nnx.split(head, nnx.Param, nnx.BatchStat)

    def common_push(params):
        model = nnx.merge(graphdef, params, jax.tree.map(lambda s: s, stats))
        model.train()
        return model(x).sum()

    grads = jax.grad(common_push)(params)
    assert np.abs(grads["layers"][0]["kernel"][...]).max() < 1e-4
    np.testing.assert_allclose(grads["gate_bias"][...], 64.0 * 20.0)  # BIAS_STEP
    head.eval()  # running statistics: one image gets a logit alone
    assert head(x[:1]).shape == (1, 5)
    assert head.config()["logit_norm"] == "batch"
    with pytest.raises(ValueError, match="unknown OFAS head logit_norm 'layer'"):
        OFASHead(16, 5, logit_norm="layer", rngs=_rngs())
