"""benchmarks.runners.fixed_keep_step, the steps `benchmarks.stochastic_depth_cost` times against
stochastic depth: a pattern read through the step counter keeps its conds, a constant one does
not (XLA folds each cond into its branch), and both train the same blocks."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax.data import CHANNEL_MEAN, CHANNEL_STD
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.train import create_train_state, make_optimizer
from benchmarks.runners import fixed_keep_step


def test_fixed_keep_step_keeps_its_conds_only_when_read_at_run_time():
    model = CifarResNet(ResNetSpec(8), rngs=nnx.Rngs(0))  # 3 blocks
    tx = make_optimizer(learning_rate=0.1)
    graphdef, state = create_train_state(model, tx, seed=0)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 4).astype(np.int32))
    args = dict(num_classes=10, mean=CHANNEL_MEAN["cifar10"], std=CHANNEL_STD["cifar10"])
    keep = np.array([True, False, True])
    out = {}
    for through_conds in (True, False):
        step = fixed_keep_step(graphdef, tx, keep, through_conds=through_conds, **args)
        hlo = step.lower(state, images, labels).compile().as_text()
        out[through_conds] = hlo.count(" conditional("), step(jax.tree.map(jnp.copy, state),
                                                              images, labels)
    assert out[True][0] >= 3, "a pattern read at run time: one cond per block at least"
    assert out[False][0] == 0, "a constant pattern: XLA folds every cond into its branch"
    (state_a, metrics_a), (state_b, metrics_b) = out[True][1], out[False][1]
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
