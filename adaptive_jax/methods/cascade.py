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
runs on full batches, not on a small remainder per batch. `StreamingCascade` serves images as
they arrive: the cheap network answers each request at once, and the escalated images wait, at
most a set time, to be pooled into full batches for the expensive network. `CascadeServer` puts
it behind a worker thread: callers on any thread submit requests and get futures.
Each network is a pure function `(params, batch_stats, images) -> logits`
(`execution.predict.pure_predict`); a state is its `(params, batch_stats)`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import numbers
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_jax.config import check_count
from adaptive_jax.execution.executors import capacities
from adaptive_jax.models.resnet import check_finite_images

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


def predictor(small: PureNet, large: PureNet, threshold: float, buckets: int = 8,
              check_finite: bool = False) -> Callable:
    """(small_state, large_state, images) -> (logits, escalated) for a batch of any size: the
    cheap network's compiled call (logits and confidence), then, only if a row escalates, the
    expensive network's on the escalated rows, gathered into the smallest of `buckets` row
    capacities that holds them (`execution.capacities`; all rows when the batch does not divide
    into `buckets`, one at batch 1). The decision is on the host, between two executables: one
    executable holding both networks under `lax.cond` ran a confident image in 6.5-7.8 ms where
    the cheap network alone took 3.4-3.7 ms and this path 4.2-5.2 ms (ResNet-32 sub-net of 8
    blocks and the full backbone, batch 1, one core with the other training; docs/ofas.md).
    `check_finite=True` refuses NaN / inf pixels (as every compiled predict path of the package
    does when asked; `models.resnet.check_finite_images`): unchecked, such an image is answered
    with whatever the cheap network returns for it, escalated or not."""
    small_jit, large_jit = _compiled(small, large)

    def predict(small_state, large_state, images):
        if check_finite:
            check_finite_images(images)
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


def _in_batches(run: Callable, images: np.ndarray, rows: np.ndarray, batch_size: int,
                sizes: tuple[int, ...]) -> list:
    """run(images[chunk]) over `rows` in chunks of `batch_size`, the last padded to the smallest
    of `sizes` that holds it; each chunk's outputs (a pytree of arrays) cut to its own rows, in
    order. Every chunk is dispatched before any answer is read, so the host's work overlaps the
    computation instead of waiting on each chunk."""
    pending = []
    for start in range(0, rows.size, batch_size):
        chunk = rows[start:start + batch_size]
        padded = _padded_to_capacity(chunk, sizes)
        pending.append((chunk.size, run(jnp.asarray(images[padded]))))
    return [jax.tree.map(lambda a, n=n: np.asarray(a)[:n], out) for n, out in pending]


def pooled_predictor(small: PureNet, large: PureNet, threshold: float, batch_size: int = 64,
                     buckets: int = 8, check_finite: bool = False) -> Callable:
    """(small_state, large_state, images) -> (logits, escalated) for any number of images,
    answered together: the cheap network on batches of `batch_size`, then the expensive one on
    the escalated images of all of them, pooled into batches of `batch_size` (the last rounded up
    to the smallest of `execution.capacities` that holds it). The same answers as `predictor`
    batch by batch; what changes is the expensive network's batch: with a share s escalated,
    `predictor` runs it on ~s x `batch_size` rows per batch, rounded up, where throughput per row
    is lower (docs/zoo.md, "Cascades of zoo backbones"). Each network compiles at most `buckets`
    shapes: a last batch is padded to a capacity by repeating its first image. `StreamingCascade`
    is the same pooling for images that arrive over time, with a bound on how long an escalated
    image waits for its batch. `check_finite`: as for `predictor`."""
    sizes = capacities(batch_size, buckets)
    small_jit, large_jit = _compiled(small, large)

    def predict(small_state, large_state, images):
        images = np.asarray(images)
        if images.shape[0] == 0:
            raise ValueError("pooled_predictor needs at least one image")
        if check_finite:
            check_finite_images(images)
        answers = _in_batches(lambda x: small_jit(*small_state, x), images,
                              np.arange(images.shape[0]), batch_size, sizes)
        logits = np.concatenate([a for a, _ in answers])
        escalated = np.concatenate([c for _, c in answers]) < threshold
        rows = np.flatnonzero(escalated)
        if rows.size:
            large_answers = _in_batches(lambda x: large_jit(*large_state, x), images, rows,
                                        batch_size, sizes)
            logits[rows] = np.concatenate(large_answers)
        return logits, escalated

    return predict


@dataclasses.dataclass(frozen=True)
class Answers:
    """Images a `StreamingCascade` answered in one call: the ids given to `submit`, their logits,
    whether the expensive network gave them, and when their request arrived (the server's clock)."""

    ids: np.ndarray
    logits: np.ndarray
    escalated: np.ndarray
    arrived_at: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.size)


class StreamingCascade:
    """A cascade serving images as they arrive: the cheap network answers each request at once,
    and the images it escalates wait, at most `max_wait_s`, to be pooled into full batches for
    the expensive network.

    `pooled_predictor` gives the expensive network full batches when every image is at hand;
    `predictor` answers each batch before the next and runs the expensive network on the few
    rows each one escalates (~14 of 64 at ResNet-32's MACs), rounded up to a capacity. A server
    sees images over time; holding the escalated ones for the next requests trades their
    latency for the expensive network's batch. This is that trade, with the wait bounded.
    It pays only when batches fill: choose `batch_size` where the expensive network's time per
    image stops falling (8-16 on XLA:CPU; more on an accelerator) and a wait long enough to
    gather it at the escalated rate. A deadline that passes first flushes a padded partial
    batch, whose padding costs what pooling saved (docs/zoo.md, "Serving a stream").

    The server is synchronous and owns no thread (`CascadeServer` gives it one): `submit` runs
    the cheap network on a request and returns its confident answers; `poll` runs the expensive
    network on what is due (every full batch waiting, and everything waiting once the oldest
    escalated image has waited `max_wait_s` since `submit` queued it) and returns those answers.
    The bound holds when the caller polls by `deadline` (an event loop sleeps until the next
    request or `deadline`, whichever is first): an escalated image is answered within
    `max_wait_s` of its request's `submit`, plus the expensive network's time on what is due.
    The wait runs from the queueing, not from the request's arrival, so a server that falls
    behind still pools (a wait from arrival would be over for every image of a backlog the
    moment it is queued).
    `max_wait_s=0` answers each request's escalated images before the next (as `predictor`),
    `math.inf` only full batches (`flush` answers the rest). A request, and a last batch of the
    expensive network, is padded to the smallest of `capacities` that holds it (a request
    larger than `batch_size` runs in batches of it); each network compiles one shape per
    capacity. The default, powers of two up to `batch_size`, pads at most to twice the rows
    and runs a one-image request at batch 1.
    Each network is a pure function `(params, batch_stats, images) -> logits` and a state its
    `(params, batch_stats)`, as for `predictor`; `check_finite=True` refuses a request with NaN /
    inf pixels before anything of it runs or queues (a `CascadeServer` around it too)."""

    def __init__(self, small: PureNet, large: PureNet, small_state, large_state, threshold: float,
                 *, batch_size: int = 64, max_wait_s: float = 0.05,
                 capacities: tuple[int, ...] | None = None,
                 clock: Callable[[], float] = time.perf_counter, check_finite: bool = False):
        if not isinstance(threshold, numbers.Real) or math.isnan(threshold):
            raise ValueError(f"threshold must be a number (confidences under it escalate), got "
                             f"{threshold!r}")
        if not isinstance(max_wait_s, numbers.Real) or not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0 seconds (math.inf: wait for full "
                             f"batches only), got {max_wait_s!r}")
        check_count("batch_size", batch_size, meaning="the expensive network's batch")
        if capacities is None:
            capacities = tuple(2 ** k for k in range(batch_size.bit_length())
                               if 2 ** k < batch_size)
            capacities += (batch_size,)
        sizes = tuple(capacities)
        counts = all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 1
                     for c in sizes)
        if not (sizes and counts and max(sizes) == batch_size):
            raise ValueError(f"capacities must be row counts >= 1, the largest batch_size="
                             f"{batch_size}; got {capacities!r}")
        self._sizes = tuple(sorted(set(int(c) for c in sizes)))
        self.batch_size, self.max_wait_s, self.threshold = batch_size, float(max_wait_s), threshold
        self._small_jit, self._large_jit = _compiled(small, large)
        self._small_state, self._large_state = small_state, large_state
        self._clock = clock
        self._check_finite = check_finite
        self._image_shape = None
        self._classes = 0
        self._next_id = 0
        # the escalated images, oldest first: images, ids, when their request arrived, when
        # they were queued
        self._queue: dict[str, np.ndarray] | None = None

    def warm_up(self, images) -> None:
        """Compile both networks at every row capacity now, on copies of the first of `images`
        (a batch, as `submit` takes), so that no request pays a compilation."""
        images = self._checked(images)
        if images.shape[0] == 0:
            raise ValueError("warm_up needs at least one image to compile on")
        for capacity in self._sizes:
            batch = jnp.asarray(np.repeat(images[:1], capacity, axis=0))
            jax.block_until_ready((self._small_jit(*self._small_state, batch),
                                   self._large_jit(*self._large_state, batch)))

    @property
    def waiting(self) -> int:
        """How many escalated images wait for the expensive network."""
        return 0 if self._queue is None else int(self._queue["ids"].size)

    @property
    def deadline(self) -> float | None:
        """The clock time by which `poll` must run for the oldest waiting image to keep its
        bound (None when nothing waits)."""
        return None if not self.waiting else float(self._queue["queued"][0]) + self.max_wait_s

    def submit(self, images, ids=None, arrived_at: float | None = None) -> Answers:
        """Answer a request's confident images; queue the rest. `ids` (one per image; default:
        consecutive integers over all submitted images) come back with the answers, and so
        does `arrived_at` (default: now, on the server's `clock`), when the request arrived:
        a caller's latency is from there."""
        images = self._checked(images)
        count = images.shape[0]
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + count)
        ids = np.asarray(ids)
        if ids.shape != (count,):
            raise ValueError(f"ids of shape {ids.shape} for {count} images: one id per image")
        self._next_id += count
        arrived = self._clock() if arrived_at is None else float(arrived_at)
        logits, escalated = self._run_small(images)
        if escalated.any():
            self._enqueue(images[escalated], ids[escalated], arrived)
        sure = ~escalated
        return self._answers(ids[sure], logits[sure], False, arrived)

    def poll(self) -> Answers:
        """The expensive network on what is due: every full batch waiting, and everything
        waiting once the oldest image has reached `deadline`. Empty answers when nothing is."""
        return self._run_large(self._take(self._due()))

    def flush(self) -> Answers:
        """The expensive network on everything waiting, now (the end of a stream)."""
        return self._run_large(self._take(self.waiting))

    # The steps of `submit` and `poll`, apart: `CascadeServer` runs the networks outside its
    # lock and touches the queue only under it.

    def _run_small(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cheap network's (logits, escalated) for checked `images`; touches no queue."""
        if images.shape[0] == 0:
            return np.zeros((0, self._classes), np.float32), np.zeros(0, bool)
        answers = _in_batches(lambda x: self._small_jit(*self._small_state, x), images,
                              np.arange(images.shape[0]), self.batch_size, self._sizes)
        logits = np.concatenate([a for a, _ in answers])
        self._classes = logits.shape[-1]
        return logits, np.concatenate([c for _, c in answers]) < self.threshold

    def _due(self) -> int:
        """How many waiting images `poll` answers now."""
        if self.waiting and self._clock() >= self.deadline:
            return self.waiting
        return self.waiting // self.batch_size * self.batch_size

    def _checked(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim < 2:
            raise ValueError(f"a server takes a batch of images (n, ...), got shape {images.shape}")
        if self._image_shape is None:
            self._image_shape = images.shape[1:]
        elif images.shape[1:] != self._image_shape:
            raise ValueError(f"images of shape {images.shape[1:]} after images of shape "
                             f"{self._image_shape}: one server serves one input shape")
        if self._check_finite:
            check_finite_images(images)
        return images

    def _enqueue(self, images, ids, arrived: float) -> None:
        rows = {"images": images, "ids": ids, "arrived": np.full(ids.size, arrived),
                "queued": np.full(ids.size, self._clock())}
        self._queue = rows if self._queue is None else {
            key: np.concatenate([self._queue[key], rows[key]]) for key in rows}

    def _take(self, count: int) -> dict[str, np.ndarray] | None:
        """The oldest `count` waiting images, taken off the queue (None for none)."""
        if count == 0:
            return None
        queue = self._queue
        self._queue = None if count == self.waiting else {
            key: rows[count:] for key, rows in queue.items()}
        return {key: rows[:count] for key, rows in queue.items()}

    def _run_large(self, taken: dict[str, np.ndarray] | None) -> Answers:
        """The expensive network's answers for images `_take` took off the queue."""
        if taken is None:
            return self._answers(np.zeros(0, np.int64), None, True, np.zeros(0))
        answers = _in_batches(lambda x: self._large_jit(*self._large_state, x), taken["images"],
                              np.arange(taken["ids"].size), self.batch_size, self._sizes)
        return self._answers(taken["ids"], np.concatenate(answers), True, taken["arrived"])

    def _answers(self, ids, logits, escalated: bool, arrived) -> Answers:
        if logits is None:
            logits = np.zeros((ids.size, self._classes), np.float32)
        return Answers(ids=ids, logits=logits, escalated=np.full(ids.size, escalated),
                       arrived_at=np.broadcast_to(np.asarray(arrived, np.float64),
                                                  ids.shape).copy())


@dataclasses.dataclass
class _Request:
    """A request a `CascadeServer` is answering: its rows' logits as they come, its future, and
    one future per row when the caller asked for them (`submit_each`). The counts change under
    the server's lock; the futures are set outside it (their callbacks may submit again)."""

    future: concurrent.futures.Future
    logits: np.ndarray
    escalated: np.ndarray
    pending: int
    row_futures: list[concurrent.futures.Future] | None = None
    failed: bool = False

    def record(self, row: int, row_logits: np.ndarray) -> bool:
        """The expensive network's answer for an escalated row (under the lock): whether it was
        the request's last."""
        self.logits[row] = row_logits
        self.pending -= 1
        return self.pending == 0 and not self.failed

    def record_failure(self) -> bool:
        """An escalated row failed (under the lock): whether it is the request's first."""
        first, self.failed = not self.failed, True
        return first

    def resolve(self, row: int, outcome: np.ndarray | BaseException, request_done: bool) -> None:
        """Set the row's future (and the request's, when `request_done`) to `outcome`: its
        logits, or the error that failed it."""
        failed = isinstance(outcome, BaseException)
        if self.row_futures is not None:
            if failed:
                self.row_futures[row].set_exception(outcome)
            else:
                self.row_futures[row].set_result((outcome, True))
        if request_done:
            if failed:
                self.future.set_exception(outcome)
            else:
                self.future.set_result((self.logits, self.escalated))


class CascadeServer:
    """A `StreamingCascade` served to any number of threads, with a worker thread of its own for
    the expensive network: `submit(images)` returns a `concurrent.futures.Future` of the
    request's `(logits, escalated)` in its row order, as `predictor` returns them.

    `StreamingCascade` leaves time to its caller's loop, so one thread runs both networks and a
    request that arrives while the expensive network runs waits for it. Here the cheap network
    runs in the thread that submits (several callers' requests at once, as a web server's handler
    threads), and the worker sleeps until a batch is full or the oldest escalated image reaches
    the cascade's `deadline`, then runs the expensive network while requests go on arriving:
    JAX releases the GIL while a computation runs, so on two cores or an accelerator the two
    networks overlap. On two CPU cores, from two caller threads, it served 0.77-0.93x the
    images per second of the static network of the same mean MACs called from two threads
    (`StreamingCascade` in one thread: 0.73-0.94x of the static network in one); on one core
    the worker buys nothing (docs/zoo.md, "Behind a worker thread"). A request with nothing
    escalated is answered within its `submit`; `submit_each` gives a future per image instead,
    so that the confident images of a request are answered at once and each escalated one as
    the worker answers it.
    The waits follow the cascade's clock (real time: its default `time.perf_counter`).
    `close()` (or leaving a `with` block) answers everything waiting and stops the worker; the
    cascade can then be served again. An error of the expensive network fails the futures of
    the images it was answering, and the worker goes on."""

    def __init__(self, streaming: StreamingCascade):
        if not isinstance(streaming, StreamingCascade):
            raise TypeError(f"a CascadeServer serves a StreamingCascade, got "
                            f"{type(streaming).__name__}")
        if streaming.waiting:
            raise ValueError(f"the cascade has {streaming.waiting} escalated images of requests "
                             "no server will answer: flush() it before serving it here")
        self._cascade = streaming
        self._condition = threading.Condition()
        self._rows: dict[int, tuple[_Request, int]] = {}  # escalated id -> its request and row
        self._next_id = 0
        self._submitting = 0  # submits between their two locked steps
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="cascade-server", daemon=True)
        self._worker.start()

    def __enter__(self) -> CascadeServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, images) -> concurrent.futures.Future:
        """Answer a request (a batch of images): the cheap network now, in this thread; the
        escalated images later, on the worker. The future's result: (logits (n, classes),
        escalated (n,) bools)."""
        return self._submit(images, each=False).future

    def submit_each(self, images) -> list[concurrent.futures.Future]:
        """As `submit`, with a future per image, so that a caller can answer each as soon as it
        is known (`concurrent.futures.as_completed`): a confident image's future is done when
        this returns, an escalated one's when the worker has answered it. Each result:
        (logits (classes,), escalated)."""
        return self._submit(images, each=True).row_futures

    def _submit(self, images, each: bool) -> _Request:
        cascade = self._cascade
        with self._condition:
            if self._closed:
                raise RuntimeError("this CascadeServer is closed: make a new one to serve again")
            images = cascade._checked(images)
            ids = np.arange(self._next_id, self._next_id + images.shape[0])
            self._next_id += images.shape[0]
            arrived = cascade._clock()
            self._submitting += 1  # (a close meanwhile waits for this request's escalated rows)
        try:
            logits, escalated = cascade._run_small(images)  # outside the lock: callers overlap
        except BaseException:
            with self._condition:
                self._submitting -= 1
                self._condition.notify_all()
            raise
        row_futures = None
        if each:
            row_futures = [concurrent.futures.Future() for _ in range(images.shape[0])]
            for row in np.flatnonzero(~escalated):
                row_futures[row].set_result((logits[row], False))
        request = _Request(concurrent.futures.Future(), logits, escalated, int(escalated.sum()),
                           row_futures)
        with self._condition:
            self._submitting -= 1
            for row, i in zip(np.flatnonzero(escalated), ids[escalated]):
                self._rows[int(i)] = (request, int(row))
            if request.pending:
                cascade._enqueue(images[escalated], ids[escalated], arrived)
            self._condition.notify_all()
        if not request.pending:
            request.future.set_result((logits, escalated))
        return request

    def close(self) -> None:
        """Answer everything waiting, then stop the worker (idempotent)."""
        if threading.current_thread() is self._worker:
            raise RuntimeError("close() from a future's callback would wait for itself: close "
                               "the server from another thread")
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._worker.join()

    def _serve(self) -> None:
        cascade = self._cascade
        while True:
            with self._condition:
                while True:
                    count = cascade.waiting if self._closed else cascade._due()
                    if count:
                        taken = cascade._take(count)
                        break
                    if self._closed and not self._submitting:
                        return
                    deadline = cascade.deadline
                    self._condition.wait(None if deadline is None or math.isinf(deadline)
                                         else max(0.0, deadline - cascade._clock()))
            try:
                answers = cascade._run_large(taken)
            except Exception as error:  # noqa: BLE001 (the callers get it, the worker goes on)
                with self._condition:
                    outcomes = [(request, row, error, request.record_failure()) for request, row
                                in (self._rows.pop(int(i)) for i in taken["ids"])]
            else:
                with self._condition:
                    outcomes = [(request, row, row_logits, request.record(row, row_logits))
                                for (request, row), row_logits in zip(
                                    (self._rows.pop(int(i)) for i in answers.ids), answers.logits)]
            for request, row, outcome, request_done in outcomes:  # outside the lock
                request.resolve(row, outcome, request_done)
