"""methods.cascade: the threshold, the measured statistics, and both compiled paths."""

import concurrent.futures
import math
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_jax.methods import cascade


def test_threshold_escalates_the_asked_share():
    conf = np.array([0.9, 0.3, 0.6, 0.8])
    for share, escalated in ((0.0, 0), (0.25, 1), (0.5, 2), (1.0, 4)):
        assert np.sum(conf < cascade.threshold_for_share(conf, share)) == escalated
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        cascade.threshold_for_share(conf, 1.5)
    with pytest.raises(ValueError, match="at least one held-out image"):
        cascade.threshold_for_share([], 0.5)


def test_share_for_cost_and_its_limits():
    assert cascade.share_for_cost(30.0, 20.0, 50.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="must lie between 20 and 70"):
        cascade.share_for_cost(80.0, 20.0, 50.0)


def test_statistics_hand_counted():
    # 4 images, 2 classes; the small network is unsure of images 1 and 3 (max softmax 0.5)
    small = np.array([[5.0, 0.0], [0.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
    large = np.array([[0.0, 5.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    got = cascade.statistics(small, large, labels, threshold=0.6, small_cost=10.0, large_cost=30.0)
    # answers: small 0, large 1, small 1, large 0 -> right on images 0, 1, 2
    assert got["test_accuracy"] == 0.75 and got["escalated_share"] == 0.5
    macs = np.array([10.0, 40.0, 10.0, 40.0])
    assert got["cost_mean"] == 25.0 and got["cost_cv"] == pytest.approx(macs.std() / macs.mean())
    with pytest.raises(ValueError, match="one row per image"):
        cascade.statistics(small, large[:3], labels, 0.6, 10.0, 30.0)


def _nets():
    w_small = jnp.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]])  # 2 features -> 3 classes
    w_large = jnp.array([[-2.0, 1.0, 0.0], [1.0, 0.0, 2.0]])

    def small(params, batch_stats, images):
        return images @ params

    def large(params, batch_stats, images):
        return images @ params + batch_stats

    return small, large, (w_small, None), (w_large, jnp.array([0.0, 1.0, 0.0]))


def test_the_predictor_answers_as_the_rule_at_any_batch():
    small, large, small_state, large_state = _nets()
    images = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)
    small_logits, large_logits = small(*small_state, images), large(*large_state, images)
    threshold = float(np.median(np.asarray(cascade.confidence(small_logits))))
    escalate = np.asarray(cascade.confidence(small_logits)) < threshold
    expected = np.where(escalate[:, None], large_logits, small_logits)
    assert 0 < escalate.sum() < 16
    predict = cascade.predictor(small, large, threshold, buckets=4)
    for batch in (images, images[:6]):  # 16 rows in capacities of 4; 6 rows: not divisible by 4
        got, escalated = predict(small_state, large_state, batch)
        np.testing.assert_allclose(got, expected[:len(batch)], rtol=1e-6)
        np.testing.assert_array_equal(escalated, escalate[:len(batch)])
    for i in range(16):  # batch 1
        logits, escalated = predict(small_state, large_state, images[i:i + 1])
        np.testing.assert_allclose(logits[0], expected[i], rtol=1e-6)
        assert bool(escalated[0]) == escalate[i]
    # nothing escalates under a threshold of 0: the small network's logits, untouched
    got, escalated = cascade.predictor(small, large, 0.0)(small_state, large_state, images)
    np.testing.assert_array_equal(got, small_logits)
    assert not escalated.any()


def test_the_pooled_predictor_answers_as_the_rule_and_pools_the_escalated_rows():
    small, large, small_state, large_state = _nets()
    images = jnp.asarray(np.random.default_rng(1).normal(size=(37, 2)), jnp.float32)
    small_logits, large_logits = small(*small_state, images), large(*large_state, images)
    threshold = float(np.quantile(np.asarray(cascade.confidence(small_logits)), 0.3))
    escalate = np.asarray(cascade.confidence(small_logits)) < threshold
    expected = np.where(escalate[:, None], large_logits, small_logits)
    shapes = []

    def counted(net):
        def run(params, batch_stats, x):
            shapes.append((net.__name__, x.shape[0]))  # traced once per compiled shape
            return net(params, batch_stats, x)
        return run

    predict = cascade.pooled_predictor(counted(small), counted(large), threshold, batch_size=8,
                                       buckets=4)
    got, escalated = predict(small_state, large_state, images)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(escalated, escalate)
    # 37 images: the small network on 4 batches of 8 and the last 5 rows at capacity 6; the
    # escalated 11 pooled into one batch of 8 and 3 rows at capacity 4
    assert escalate.sum() == 11
    assert sorted(shapes) == [("large", 4), ("large", 8), ("small", 6), ("small", 8)]
    # the same answers as the per-batch predictor, batch by batch
    per_batch = cascade.predictor(small, large, threshold, buckets=4)
    for start in range(0, 32, 8):
        want, _ = per_batch(small_state, large_state, images[start:start + 8])
        np.testing.assert_allclose(got[start:start + 8], want, rtol=1e-6)
    with pytest.raises(ValueError, match="at least one image"):
        predict(small_state, large_state, images[:0])


def _logits_with_confidence(p: np.ndarray, answer: np.ndarray, classes: int = 10) -> np.ndarray:
    """Logits whose softmax puts `p` on class `answer` and the rest evenly elsewhere."""
    probs = np.tile(((1 - p) / (classes - 1))[:, None], (1, classes))
    probs[np.arange(len(p)), answer] = p
    return np.log(probs)


def test_two_fold_sets_each_half_s_threshold_on_the_other_half():
    n, seed = 400, 3
    labels = np.arange(n) % 10
    order = np.random.default_rng(seed).permutation(n)
    first, second = order[: n // 2], order[n // 2:]
    p = np.empty(n)
    p[first], p[second] = 0.2, 0.99  # the first half unsure, the second sure
    small = _logits_with_confidence(p, (labels + 1) % 10)  # the small network is always wrong
    large = _logits_with_confidence(np.full(n, 0.9), labels)  # the large one always right
    stats = cascade.two_fold_statistics(small, large, labels, 0.25, 1.0, 4.0, seed=seed)
    # Pooled, a quarter would escalate; cross-fitted, the first half is measured against the
    # second's threshold (0.99: all of it escalates) and the second against the first's (none).
    np.testing.assert_array_equal(np.flatnonzero(stats["escalated"]), np.sort(first))
    assert stats["escalated_share"] == 0.5 and stats["test_accuracy"] == 0.5
    assert stats["cost_mean"] == 1.0 + 0.5 * 4.0


def test_two_fold_limits_and_share_on_exchangeable_images():
    rng = np.random.default_rng(0)
    n = 4000
    labels = rng.integers(0, 10, n)
    small = _logits_with_confidence(rng.uniform(0.15, 1.0, n), labels)
    large = _logits_with_confidence(np.full(n, 0.5), (labels + 1) % 10)
    none = cascade.two_fold_statistics(small, large, labels, 0.0, 1.0, 4.0)
    every = cascade.two_fold_statistics(small, large, labels, 1.0, 1.0, 4.0)
    assert none["escalated_share"] == 0.0 and none["test_accuracy"] == 1.0
    assert every["escalated_share"] == 1.0 and every["test_accuracy"] == 0.0
    assert every["cost_mean"] == 5.0 and every["cost_cv"] == 0.0
    half = cascade.two_fold_statistics(small, large, labels, 0.3, 1.0, 4.0)
    assert abs(half["escalated_share"] - 0.3) < 0.02
    with pytest.raises(ValueError, match="at least two images"):
        cascade.two_fold_statistics(small[:1], large[:1], labels[:1], 0.3, 1.0, 4.0)


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _counted(net, shapes):
    def run(params, batch_stats, x):
        shapes.append((net.__name__, x.shape[0]))  # traced once per compiled shape
        return net(params, batch_stats, x)
    return run


def test_the_streaming_cascade_answers_as_the_rule_and_pools_within_its_wait():
    small, large, small_state, large_state = _nets()
    images = np.asarray(np.random.default_rng(2).normal(size=(40, 2)), np.float32)
    small_logits, large_logits = small(*small_state, images), large(*large_state, images)
    sure = np.asarray(cascade.confidence(small_logits))
    threshold = float(np.quantile(sure, 0.5))
    escalate = sure < threshold
    expected = np.where(escalate[:, None], large_logits, small_logits)
    clock, shapes = _Clock(), []
    server = cascade.StreamingCascade(_counted(small, shapes), _counted(large, shapes),
                                      small_state, large_state, threshold, batch_size=8,
                                      max_wait_s=0.5, clock=clock)
    server.warm_up(images)
    compiled = sorted(shapes)
    # the default capacities: powers of two up to the batch
    assert compiled == sorted((net, n) for net in ("small", "large") for n in (1, 2, 4, 8))
    answered, pooled = {}, 0

    def take(answers):
        for i, logits, up, arrived in zip(answers.ids, answers.logits, answers.escalated,
                                          answers.arrived_at):
            assert i not in answered
            answered[int(i)] = (logits, up, arrived)
        return answers

    # requests of 5 images at t = 100.00, 100.05, ..., 100.35: the cheap network answers the sure ones at
    # once; the escalated ones wait until 8 are there (a full batch) or 0.5 s have passed
    for request, start in enumerate(range(0, 40, 5)):
        clock.now = 100.0 + 0.05 * request
        waiting_before = server.waiting
        sure_now = take(server.submit(images[start:start + 5], ids=np.arange(start, start + 5) + 1000))
        assert not sure_now.escalated.any() and len(sure_now) == 5 - escalate[start:start + 5].sum()
        assert server.waiting == waiting_before + escalate[start:start + 5].sum()
        polled = take(server.poll())
        assert len(polled) % 8 == 0  # nothing is 0.5 s old yet: full batches only
        pooled += len(polled)
        assert server.waiting < 8
        assert server.waiting == 0 or clock.now < server.deadline <= clock.now + 0.5
    assert escalate.sum() == 20 and pooled == 16  # two full batches went while requests came
    # the oldest waiting image reaches its deadline: everything waiting goes
    left = server.waiting
    assert left == 4
    clock.now = server.deadline - 1e-9
    assert len(server.poll()) == 0
    clock.now = server.deadline
    assert len(take(server.poll())) == left and server.waiting == 0 and server.deadline is None
    assert sorted(answered) == list(range(1000, 1040))
    for i in range(40):
        logits, up, arrived = answered[1000 + i]
        np.testing.assert_allclose(logits, expected[i], rtol=1e-6)
        assert up == escalate[i] and arrived == pytest.approx(100.0 + 0.05 * (i // 5))
    assert sorted(shapes) == compiled  # served on the shapes warm_up compiled: none traced again


def test_the_streaming_cascade_without_a_wait_answers_each_request_and_flushes():
    small, large, small_state, large_state = _nets()
    images = np.asarray(np.random.default_rng(3).normal(size=(12, 2)), np.float32)
    sure = np.asarray(cascade.confidence(small(*small_state, images)))
    threshold = float(np.quantile(sure, 0.6))
    clock = _Clock()
    now = cascade.StreamingCascade(small, large, small_state, large_state, threshold,
                                   batch_size=8, max_wait_s=0.0, clock=clock)
    first = now.submit(images[:6])
    escalated_first = int((sure[:6] < threshold).sum())
    assert now.waiting == escalated_first and len(now.poll()) == escalated_first
    np.testing.assert_array_equal(first.ids, np.flatnonzero(sure[:6] >= threshold))
    second = now.submit(images[6:])  # default ids go on counting
    assert set(second.ids) <= set(range(6, 12))
    # a backlog: the request arrived 10 s ago, but its escalated images wait from their queueing
    later = cascade.StreamingCascade(small, large, small_state, large_state, threshold,
                                     batch_size=8, max_wait_s=0.5, clock=clock)
    arrived = clock.now - 10.0
    later.submit(images[:6], arrived_at=arrived)
    assert later.waiting == escalated_first and later.deadline == clock.now + 0.5
    assert len(later.poll()) == 0
    clock.now += 0.5
    late = later.poll()
    assert len(late) == escalated_first and (late.arrived_at == arrived).all()
    never = cascade.StreamingCascade(small, large, small_state, large_state, threshold,
                                     batch_size=8, max_wait_s=math.inf, capacities=(4, 8),
                                     clock=clock)
    never.submit(images)
    clock.now += 1e6
    assert len(never.poll()) == 0  # fewer than 8 escalated, and no deadline
    flushed = never.flush()
    assert len(flushed) == int((sure < threshold).sum()) and flushed.escalated.all()
    assert never.waiting == 0 and len(never.flush()) == 0


def test_the_streaming_cascade_names_bad_input():
    small, large, small_state, large_state = _nets()
    make = lambda **kw: cascade.StreamingCascade(small, large, small_state, large_state,
                                                 kw.pop("threshold", 0.5), **kw)
    with pytest.raises(ValueError, match="max_wait_s must be >= 0"):
        make(max_wait_s=-1.0)
    with pytest.raises(ValueError, match="max_wait_s must be >= 0"):
        make(max_wait_s=float("nan"))
    with pytest.raises(ValueError, match="threshold must be a number"):
        make(threshold=float("nan"))
    for capacities in ((4, 16), (0, 8), (2.5, 8), ()):
        with pytest.raises(ValueError, match="the largest batch_size=8"):
            make(batch_size=8, capacities=capacities)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        make(batch_size=0)
    server = make(batch_size=8)
    with pytest.raises(ValueError, match=r"takes a batch of images \(n, ...\)"):
        server.submit(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="one id per image"):
        server.submit(np.zeros((3, 2), np.float32), ids=[1, 2])
    server.submit(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="one server serves one input shape"):
        server.submit(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="at least one image to compile on"):
        server.warm_up(np.zeros((0, 2), np.float32))


def _served(seed: int, n: int, quantile: float):
    """n random images, the threshold escalating the least sure `quantile` of them, and what
    the cascade rule answers: (images, threshold, expected logits, escalated)."""
    small, large, small_state, large_state = _nets()
    images = np.asarray(np.random.default_rng(seed).normal(size=(n, 2)), np.float32)
    small_logits, large_logits = small(*small_state, images), large(*large_state, images)
    sure = np.asarray(cascade.confidence(small_logits))
    threshold = float(np.quantile(sure, quantile))
    escalate = sure < threshold
    return images, threshold, np.where(escalate[:, None], large_logits, small_logits), escalate


def test_the_cascade_server_answers_callers_on_many_threads_as_the_rule():
    small, large, small_state, large_state = _nets()
    images, threshold, expected, escalate = _served(seed=4, n=60, quantile=0.4)
    streaming = cascade.StreamingCascade(small, large, small_state, large_state, threshold,
                                         batch_size=8, max_wait_s=0.01)
    streaming.warm_up(images)
    requests = [images[i:i + 3] for i in range(0, 60, 3)]
    futures = {}

    def caller(first):  # four callers, each its own requests
        for k in range(first, len(requests), 4):
            futures[k] = server.submit(requests[k])

    with cascade.CascadeServer(streaming) as server:
        threads = [threading.Thread(target=caller, args=(first,)) for first in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # the worker answers by the deadline on its own: no close, no poll
        results = {k: future.result(timeout=30) for k, future in futures.items()}
    for k, (logits, escalated) in results.items():
        np.testing.assert_allclose(logits, expected[3 * k:3 * k + 3], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(escalated, escalate[3 * k:3 * k + 3])
    assert 0 < escalate.sum() < 60 and streaming.waiting == 0
    with pytest.raises(RuntimeError, match="closed: make a new one"):
        server.submit(requests[0])
    with cascade.CascadeServer(streaming) as again:  # a closed server's cascade serves again
        np.testing.assert_allclose(again.submit(images[:5]).result(timeout=30)[0], expected[:5],
                                   rtol=1e-6, atol=1e-6)


def _server_of_full_batches(seed: int, n: int):
    """A server whose cascade sends only full batches of 4 (no deadline), on n images of which
    a number not divisible by 4 escalates: (server, its cascade, images, expected logits, the
    escalated images in the order queued, those of them in full batches)."""
    small, large, small_state, large_state = _nets()
    images, threshold, expected, escalate = _served(seed=seed, n=n, quantile=0.45)
    streaming = cascade.StreamingCascade(small, large, small_state, large_state, threshold,
                                         batch_size=4, max_wait_s=math.inf)
    order = np.flatnonzero(escalate)
    assert len(order) % 4 and len(order) >= 4
    return (cascade.CascadeServer(streaming), streaming, images, expected, order,
            set(order[:len(order) // 4 * 4].tolist()))


def test_the_cascade_server_holds_for_a_full_batch_and_close_answers_the_rest():
    server, streaming, images, expected, order, in_full = _server_of_full_batches(seed=5, n=40)
    futures = [server.submit(images[i:i + 2]) for i in range(0, 40, 2)]
    for k, future in enumerate(futures):
        rows = {2 * k, 2 * k + 1} & set(order)
        if rows <= in_full:  # answered without a close
            np.testing.assert_allclose(future.result(timeout=30)[0], expected[2 * k:2 * k + 2],
                                       rtol=1e-6, atol=1e-6)
    left = [f for k, f in enumerate(futures) if not {2 * k, 2 * k + 1} & set(order) <= in_full]
    assert left and not any(f.done() for f in left)  # waiting for a batch that never fills
    server.close()
    assert all(f.done() for f in left) and streaming.waiting == 0
    for k, future in enumerate(futures):
        np.testing.assert_allclose(future.result()[0], expected[2 * k:2 * k + 2], rtol=1e-6, atol=1e-6)


def test_the_cascade_server_answers_each_image_as_soon_as_it_is_known():
    server, _, images, expected, order, in_full = _server_of_full_batches(seed=7, n=24)
    futures = server.submit_each(images[:6]) + server.submit_each(images[6:])
    assert len(futures) == 24
    for i in sorted(set(range(24)) - set(order)):  # confident: answered within submit_each
        assert futures[i].done()
        logits, escalated = futures[i].result()
        np.testing.assert_allclose(logits, expected[i], rtol=1e-6, atol=1e-6)
        assert escalated is False
    # the escalated images of full batches come without a close, one by one as answered
    done = [f.result(timeout=30) for f in concurrent.futures.as_completed(
        [futures[i] for i in in_full], timeout=30)]
    assert len(done) == len(in_full) and all(escalated for _, escalated in done)
    rest = [futures[i] for i in order if i not in in_full]
    assert not any(f.done() for f in rest)  # waiting for a batch that never fills
    server.close()
    for i in order:
        logits, escalated = futures[i].result()
        np.testing.assert_allclose(logits, expected[i], rtol=1e-6, atol=1e-6)
        assert escalated is True


def test_the_cascade_server_fails_only_the_requests_its_large_network_failed():
    small, large, small_state, large_state = _nets()

    def fragile(params, batch_stats, x):
        if x.shape[0] == 1:  # (traced per call shape: every one-row batch fails)
            raise FloatingPointError("the large network failed")
        return large(params, batch_stats, x)

    images, threshold, expected, escalate = _served(seed=6, n=16, quantile=0.5)
    streaming = cascade.StreamingCascade(small, fragile, small_state, large_state, threshold,
                                         batch_size=2, max_wait_s=math.inf)
    with cascade.CascadeServer(streaming) as server:
        one = int(np.flatnonzero(escalate)[0])
        failed = server.submit(images[one:one + 1])  # one escalated row: it waits, alone
        sure = int(np.flatnonzero(~escalate)[0])
        confident = server.submit(images[sure:sure + 1])
        assert confident.done() and not failed.done()  # nothing escalated: answered in submit
    with pytest.raises(FloatingPointError, match="large network failed"):
        failed.result()
    with cascade.CascadeServer(streaming) as server:  # per image: only the escalated one fails
        each = server.submit_each(images[[sure, one]])
    np.testing.assert_allclose(each[0].result()[0], expected[sure], rtol=1e-6, atol=1e-6)
    with pytest.raises(FloatingPointError, match="large network failed"):
        each[1].result()
    with cascade.CascadeServer(streaming) as server:  # the worker survives its network's errors
        pairs = server.submit(images)
        assert escalate.sum() % 2 == 0  # full batches of 2 only
        np.testing.assert_allclose(pairs.result(timeout=30)[0], expected, rtol=1e-6, atol=1e-6)


def test_the_cascade_server_names_bad_input():
    small, large, small_state, large_state = _nets()
    with pytest.raises(TypeError, match="serves a StreamingCascade"):
        cascade.CascadeServer(cascade.predictor(small, large, 0.5))
    streaming = cascade.StreamingCascade(small, large, small_state, large_state, 2.0,
                                         batch_size=8, max_wait_s=math.inf)
    streaming.submit(np.zeros((3, 2), np.float32))  # confidence < 2: every image escalates
    with pytest.raises(ValueError, match="flush"):
        cascade.CascadeServer(streaming)
    streaming.flush()
    with cascade.CascadeServer(streaming) as server:
        with pytest.raises(ValueError, match="one server serves one input shape"):
            server.submit(np.zeros((3, 4), np.float32))


def test_every_cascade_path_refuses_nan_images_when_asked():
    small, large, small_state, large_state = _nets()
    images = np.ones((4, 2), np.float32)
    images[2, 1] = np.nan
    unchecked, _ = cascade.predictor(small, large, 0.5)(small_state, large_state, images)
    assert np.isnan(np.asarray(unchecked)[2]).all()  # off by default: answered with NaN logits
    refused = "1 of 4 images contain NaN or inf pixels \\(first: image 2\\)"
    for serve in (cascade.predictor(small, large, 0.5, check_finite=True),
                  cascade.pooled_predictor(small, large, 0.5, batch_size=4, buckets=2,
                                            check_finite=True)):
        with pytest.raises(ValueError, match=refused):
            serve(small_state, large_state, images)
    # threshold 2: every image escalates, and with no deadline waits for a full batch
    streaming = cascade.StreamingCascade(small, large, small_state, large_state, 2.0,
                                         batch_size=4, max_wait_s=math.inf, check_finite=True)
    with pytest.raises(ValueError, match=refused):
        streaming.submit(images)
    assert streaming.waiting == 0  # nothing of the refused request queued
    with cascade.CascadeServer(streaming) as server:
        with pytest.raises(ValueError, match=refused):
            server.submit_each(images)
        clean = server.submit(images[:2])
    np.testing.assert_allclose(clean.result()[0], large(*large_state, images[:2]), rtol=1e-6)


def test_the_demo_s_cascade_curve_runs_from_the_small_network_alone_to_every_image_up():
    from adaptive_jax import demo
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 3, 200)
    logits = {"small": rng.normal(size=(200, 3)), "large": rng.normal(size=(200, 3)) * 2}
    macs = {"small": 10.0, "large": 30.0}
    curve = demo.cascade_curve("small", "large", logits, macs, labels, shares=(0.0, 0.3, 1.0))
    alone, middle, up = curve
    assert alone == {"escalated_share": 0.0, "macs_mean": 10.0,
                     "test_accuracy": float(np.mean(logits["small"].argmax(-1) == labels))}
    assert up["escalated_share"] == 1.0 and up["macs_mean"] == 40.0
    assert up["test_accuracy"] == float(np.mean(logits["large"].argmax(-1) == labels))
    row = demo.cascade_rows("small", "large", None, (0.3,), logits, macs, labels)[0]
    assert middle["test_accuracy"] == row["test_accuracy"]
    assert middle["macs_mean"] == row["macs_mean"]
    assert middle["escalated_share"] == pytest.approx(0.3, abs=0.01)

