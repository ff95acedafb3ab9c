"""Pure, jit-compiled supervised train and eval steps.

State is a plain pytree (`TrainState`), and the NNX model enters only as its graph definition,
so the compiled step is a pure function: no Python work per call, donated buffers, and the same
function runs on one device or sharded over a mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from adaptive_jax.data.augment import augment, normalize
from adaptive_jax.models.resnet import survival_probabilities


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any            # nnx.State of nnx.Param
    batch_stats: Any       # nnx.State of nnx.BatchStat
    opt_state: Any
    rng: jax.Array         # uint32 (2,) raw key; step keys are fold_in(rng, step)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int):
    """Splits `model` into (graphdef, TrainState)."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params), rng=jax.random.PRNGKey(seed))
    return graphdef, state


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads, batch_stats,
                    loss: jax.Array, guard: bool = True) -> tuple[TrainState, jax.Array]:
    """One optimiser update, taken only when the loss and every update are finite.

    Returns (new state, `nonfinite`: 1.0 if this step's update was dropped, else 0.0). A dropped
    step keeps the params, batch statistics and optimiser state of the step before and only
    advances `step` (the data position): NaN never reaches the weights, so the loop can stop with
    the last good state intact or, by choice, skip the batch (docs/robustness.md). The check is
    one norm over the gradients and one select per array: no host sync, no measurable cost
    (`python -m benchmarks.robustness_cost`). `guard=False` applies every update unchecked (the
    benchmark's before).
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if not guard:
        params = optax.apply_updates(state.params, updates)
        return (state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state), jnp.zeros((), jnp.float32))
    # the updates, not the gradients: they carry any non-finite gradient, and also what an
    # optimiser makes non-finite from finite gradients
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(updates))
    params = optax.apply_updates(state.params, updates)
    updated = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    return kept.replace(step=state.step + 1), (~finite).astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy (nats) against (optionally smoothed) one-hot labels."""
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def soft_cross_entropy(logits: jax.Array, teacher_logits: jax.Array,
                       temperature: float = 1.0) -> jax.Array:
    """Per-example distillation loss (Hinton et al., 2015): cross-entropy against the teacher's
    distribution softened by `temperature`, times temperature^2 so that its gradient keeps its
    scale whatever the temperature. No gradient reaches the teacher."""
    targets = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature)
    return temperature ** 2 * optax.softmax_cross_entropy(logits / temperature, targets)


LossFn = Callable[..., tuple[jax.Array, dict]]


def make_step(graphdef, tx: optax.GradientTransformation, loss: LossFn, *, mean, std,
              guard_nonfinite: bool = True) -> Callable:
    """The one train step every method shares; the method supplies only its `loss`.

    `loss(model, images, labels, key, step) -> (scalar loss, metrics)`: `model` is merged from
    the differentiated params in training mode (its batch statistics move as it runs; they are
    kept), `images` augmented and normalised, `key` this step's own PRNG key. Returns the pure
    (state, images uint8 (B,H,W,C), labels int32 (B,)) -> (state, metrics); the caller jits it.
    A non-finite step is dropped and flagged in metrics["nonfinite"] (`apply_gradients`).
    """

    def loss_of_params(params, batch_stats, images, labels, key, step):
        # NNX states hold Variables; batch_stats is not differentiated, so it still belongs to
        # the outer (jit) trace. Re-wrap it so BatchNorm may update its statistics inside `grad`.
        batch_stats = jax.tree.map(lambda x: x, batch_stats)
        model = nnx.merge(graphdef, params, batch_stats)
        model.train()
        value, metrics = loss(model, images, labels, key, step)
        return value, (metrics, nnx.state(model, nnx.BatchStat))

    def train_step(state: TrainState, images_u8, labels):
        aug_key, loss_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        images = augment(aug_key, images_u8, mean, std)
        (value, (metrics, batch_stats)), grads = jax.value_and_grad(loss_of_params, has_aux=True)(
            state.params, state.batch_stats, images, labels, loss_key, state.step)
        state, nonfinite = apply_gradients(state, tx, grads, batch_stats, value, guard_nonfinite)
        return state, {**metrics, "nonfinite": nonfinite}

    return train_step


def make_train_step(graphdef, tx: optax.GradientTransformation, *, num_classes: int,
                    mean, std, label_smoothing: float = 0.0, stochastic_depth: float = 0.0,
                    guard_nonfinite: bool = True) -> Callable:
    """Supervised: (state, images uint8, labels) -> (state, metrics), jit-compiled (`make_step`).

    `stochastic_depth` > 0 (a CIFAR ResNet): each step drops blocks for the whole batch, block l
    of L with probability (l / L) * stochastic_depth (`CifarResNet.drop_blocks`: a dropped block
    does not run); metrics["blocks_run"] is the share of blocks that ran."""

    def loss(model, images, labels, key, step):
        metrics = {}
        if stochastic_depth:
            survival = jnp.asarray(survival_probabilities(model.spec.num_blocks, stochastic_depth),
                                   jnp.float32)
            keep = jax.random.bernoulli(key, survival)
            logits = model.drop_blocks(images, keep, survival)
            metrics["blocks_run"] = keep.mean()
        else:
            logits = model(images)
        value = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
        return value, {"loss": value, "accuracy": (logits.argmax(-1) == labels).mean(), **metrics}

    return jax.jit(make_step(graphdef, tx, loss, mean=mean, std=std,
                             guard_nonfinite=guard_nonfinite), donate_argnums=0)


def make_eval_step(graphdef, *, num_classes: int, mean, std) -> Callable:
    """(params, batch_stats, images uint8, labels, mask) -> summed loss / accuracy, and count."""

    def eval_step(params, batch_stats, images_u8, labels, mask):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        logits = model(normalize(images_u8, mean, std))
        loss = cross_entropy(logits, labels, num_classes)
        return {"loss_sum": (loss * mask).sum(),
                "accuracy_sum": ((logits.argmax(-1) == labels) * mask).sum(),
                "count": mask.sum()}

    return jax.jit(eval_step)
