"""A confidence cascade (docs/ofas.md, "Routing by confidence"): a cheap network answers every
image; the images it is least sure of (top softmax probability below a threshold) go on to an
expensive network, whose answer replaces the cheap one's.

Why it is here: an OFAS head decides every block at the stem, where nothing linear tells the images
a network gets wrong from those it gets right better than AUC ~0.6; the network's own top softmax
probability does (~0.88; `benchmarks.ofas_difficulty`). A cascade routes by that signal, after
the cheap network has run. Its cost per image is the cheap network's, plus the expensive one's
for an escalated image: the mean follows the share escalated, set by the threshold
(`threshold_for_share`, on images the cheap network did not train on).

`predictor` runs it so that the expensive network only runs for the images that escalate: the
cheap network on the batch, then the expensive one on the escalated rows only, gathered into
the smallest of `execution.capacities` that holds them (a few compiled shapes, not one per count).
Each batch is answered before the next (serving). `pooled_predictor` answers many images at once
(offline, throughput): the escalated images of every batch are pooled, so the expensive network
runs on full batches, not on a small remainder per batch.
Each network is a pure function `(params, batch_stats, images) -> logits`
(`execution.predict.pure_predict`); a state is its `(params, batch_stats)`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_jax.execution.executors import capacities

PureNet = Callable[..., jax.Array]  # (params, batch_stats, images) -> logits


def confidence(logits) -> jax.Array:
    """(B,) the top softmax probability of each row of (B, classes) logits."""
    return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1).max(axis=-1)


def threshold_for_share(confidences, share: float) -> float:
    """The threshold under which `share` of `confidences` fall (escalation is `confidence <
    threshold`): 0 escalates none, 1 all."""
    confidences = np.sort(np.asarray(confidences, np.float64).ravel())
    if confidences.size == 0:
        raise ValueError("a threshold needs confidences of at least one held-out image")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the escalated share must be in [0, 1], got {share}")
    k = int(round(share * confidences.size))
    return float(np.inf) if k >= confidences.size else float(confidences[k])


def share_for_cost(target_cost: float, small_cost: float, large_cost: float) -> float:
    """The share of images to escalate for a mean of `target_cost` per image, when every image
    costs `small_cost` and an escalated one `large_cost` more (MACs, BitOPs: any cost that adds
    up over the two networks)."""
    share = (target_cost - small_cost) / large_cost
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"a cascade of {small_cost:.4g} + {large_cost:.4g} per escalated "
                         f"image cannot average {target_cost:.4g}: the target must lie between "
                         f"{small_cost:.4g} and {small_cost + large_cost:.4g}")
    return share


def statistics(small_logits, large_logits, labels, threshold: float, small_cost: float,
               large_cost: float) -> dict:
    """The cascade over a labelled set, from both networks' logits on every image: its accuracy,
    the share escalated, and the measured cost per image (`cost_mean`, `cost_cv`: in the unit of
    `small_cost` and `large_cost`, MACs or BitOPs)."""
    small_logits, large_logits = np.asarray(small_logits), np.asarray(large_logits)
    labels = np.asarray(labels)
    if small_logits.shape != large_logits.shape or small_logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {small_logits.shape} and {large_logits.shape} for "
                         f"{labels.shape[0]} labels: one row per image from each network")
    escalated = np.asarray(confidence(small_logits)) < threshold
    answer = np.where(escalated, large_logits.argmax(-1), small_logits.argmax(-1))
    cost = small_cost + escalated * float(large_cost)
    return {"test_accuracy": float(np.mean(answer == labels)),
            "escalated_share": float(escalated.mean()), "cost_mean": float(cost.mean()),
            "cost_cv": float(cost.std() / cost.mean()), "threshold": float(threshold)}


def two_fold_statistics(small_logits, large_logits, labels, share: float, small_cost: float,
                        large_cost: float, seed: int = 0) -> dict:
    """`statistics` where no held-out images are left (networks that trained on every training
    image): the set is split in two halves at random; the threshold for `share` is set on one
    half's small-network confidences (no labels) and applied to the other, then the halves swap,
    so every image is answered under a threshold set without it. Accuracy, escalated share and
    cost are over the whole set; `threshold` is the two halves' mean."""
    small_logits, large_logits = np.asarray(small_logits), np.asarray(large_logits)
    labels = np.asarray(labels)
    n = labels.shape[0]
    if n < 2:
        raise ValueError(f"two folds need at least two images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    folds = (order[: n // 2], order[n // 2:])
    sure = np.asarray(confidence(small_logits))
    answered, cost, escalated, thresholds = np.zeros(n, bool), np.zeros(n), np.zeros(n, bool), []
    for fit, score in (folds, folds[::-1]):
        # share 0 is the small network alone: the other half's minimum would still let its
        # least sure images through
        threshold = 0.0 if share == 0 else threshold_for_share(sure[fit], share)
        thresholds.append(threshold)
        up = sure[score] < threshold
        answer = np.where(up, large_logits[score].argmax(-1), small_logits[score].argmax(-1))
        answered[score] = answer == labels[score]
        escalated[score] = up
        cost[score] = small_cost + up * float(large_cost)
    return {"test_accuracy": float(answered.mean()), "escalated_share": float(escalated.mean()),
            "cost_mean": float(cost.mean()), "cost_cv": float(cost.std() / cost.mean()),
            "threshold": float(np.mean(thresholds)), "escalated": escalated}


def _compiled(small: PureNet, large: PureNet) -> tuple[Callable, Callable]:
    """The two compiled calls both predictors make: the cheap network with its confidence, and
    the expensive network."""

    def small_and_confidence(params, batch_stats, images):
        logits = small(params, batch_stats, images)
        return logits, confidence(logits)

    return jax.jit(small_and_confidence), jax.jit(large)


def _padded_to_capacity(rows: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """`rows` padded to the smallest of `sizes` that holds them by repeating the first row, so
    the expensive network compiles one shape per capacity, not one per count."""
    capacity = next(c for c in sizes if c >= rows.size)
    return np.concatenate([rows, np.full(capacity - rows.size, rows[0])])


def predictor(small: PureNet, large: PureNet, threshold: float, buckets: int = 8) -> Callable:
    """(small_state, large_state, images) -> (logits, escalated) for a batch of any size: the
    cheap network's compiled call (logits and confidence), then, only if a row escalates, the
    expensive network's on the escalated rows, gathered into the smallest of `buckets` row
    capacities that holds them (`execution.capacities`; all rows when the batch does not divide
    into `buckets`, one at batch 1). The decision is on the host, between two executables: one
    executable holding both networks under `lax.cond` ran a confident image in 6.5-7.8 ms where
    the cheap network alone took 3.4-3.7 ms and this path 4.2-5.2 ms (ResNet-32 sub-net of 8
    blocks and the full backbone, batch 1, one core with the other training; docs/ofas.md)."""
    small_jit, large_jit = _compiled(small, large)

    def predict(small_state, large_state, images):
        logits, sure = small_jit(*small_state, images)
        escalated = np.asarray(sure) < threshold
        rows = np.flatnonzero(escalated)
        if rows.size == 0:
            return logits, escalated
        batch = images.shape[0]
        sizes = capacities(batch, buckets) if batch % buckets == 0 else (batch,)
        gathered = _padded_to_capacity(rows, sizes)
        answers = large_jit(*large_state, jnp.asarray(images)[gathered])[:rows.size]
        return logits.at[rows].set(answers), escalated

    return predict


def pooled_predictor(small: PureNet, large: PureNet, threshold: float, batch_size: int = 64,
                     buckets: int = 8) -> Callable:
    """(small_state, large_state, images) -> (logits, escalated) for any number of images,
    answered together: the cheap network on batches of `batch_size`, then the expensive one on
    the escalated images of all of them, pooled into batches of `batch_size` (the last rounded up
    to the smallest of `execution.capacities` that holds it). The same answers as `predictor`
    batch by batch; what changes is the expensive network's batch: with a share s escalated,
    `predictor` runs it on ~s x `batch_size` rows per batch, rounded up, where throughput per row
    is lower (docs/zoo.md, "Cascades of zoo backbones"). Each network compiles at most `buckets`
    shapes: a last batch is padded to a capacity by repeating its first image."""
    sizes = capacities(batch_size, buckets)
    small_jit, large_jit = _compiled(small, large)

    def in_batches(run, images, rows):
        """run(images[chunk]) over `rows` in chunks of batch_size, the last padded to a
        capacity; the answers of `rows`, in order. Every chunk is dispatched before any answer
        is read, so the host's work overlaps the computation instead of waiting on each chunk."""
        pending = []
        for start in range(0, rows.size, batch_size):
            chunk = rows[start:start + batch_size]
            padded = _padded_to_capacity(chunk, sizes)
            pending.append((chunk.size, run(jnp.asarray(images[padded]))))
        return [jax.tree.map(lambda a, n=n: np.asarray(a)[:n], out) for n, out in pending]

    def predict(small_state, large_state, images):
        images = np.asarray(images)
        if images.shape[0] == 0:
            raise ValueError("pooled_predictor needs at least one image")
        answers = in_batches(lambda x: small_jit(*small_state, x), images,
                             np.arange(images.shape[0]))
        logits = np.concatenate([a for a, _ in answers])
        escalated = np.concatenate([c for _, c in answers]) < threshold
        rows = np.flatnonzero(escalated)
        if rows.size:
            large_answers = in_batches(lambda x: large_jit(*large_state, x), images, rows)
            logits[rows] = np.concatenate(large_answers)
        return logits, escalated

    return predict
