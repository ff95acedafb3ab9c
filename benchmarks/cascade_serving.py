"""Serving a stream of requests: the static zoo network against the cascade answering each request
before the next, and the streaming cascade that pools escalated images for a bounded wait.

    python -m benchmarks.cascade_serving          # resnet20_gpu -> resnet56 at resnet32_gpu's MACs
    python -m benchmarks.cascade_serving --request_size=1 --loads=0.5,0.8 --max_wait_ms=5,20

Requests of `--request_size` test images arrive at a fixed interval (open loop: a request that
arrives while the server is busy waits, and its wait counts), set as a share (`--loads`) of the
static network's measured capacity at that request size; `saturated` sends them all at once.
The cascade's threshold escalates the share of images that averages the static entry's MACs (or
`--escalated_share`, a cheaper or dearer cascade); it is set on the first half of the test
images' small-network confidences (no labels), and the second half is the stream. Every server
answers every image; per image the latency is from its request's arrival to the return of the
call that answered it. Servers (one process, each compiled and warmed up before any is timed):

- `static`: the static entry, each request on arrival;
- `cascade, per request`: `methods.cascade.StreamingCascade` with no wait, so each request's
  escalated images go to the large network before the next request (as `cascade.predictor`);
- `cascade, wait W ms`: the escalated images pooled into batches of `--batch_size` for the large
  network, an image waiting at most W ms after the small network queued it (`inf`: `cascade,
  full batches`, the large network on full batches only and the rest at the end of the stream).
  These three run in one thread, which sleeps until the next arrival or the server's deadline;
- `threaded, wait W ms[, N threads]` (`--threaded`, finite waits): the same cascade behind
  `methods.cascade.CascadeServer`: N caller threads (`--caller_threads`; 1 if not named) submit
  the requests on arrival and run the small network, the server's worker thread runs the large
  one meanwhile; each image is answered as soon as it is known (`submit_each`: the confident
  ones by the caller's submit, each escalated one by the worker);
- `static, N threads` and `cascade, per request, N threads` (each count above 1 in
  `--caller_threads`): the static entry, or the cascade answering each request before the
  thread takes another (`methods.cascade.predictor`: no queue, no worker), called from N
  threads, each request by the next free one. The threaded cascade runs two networks on two
  threads, and a second thread lets XLA:CPU overlap two calls of one network as well: this is
  the footing on which the two compare fairly.

Figures: throughput (images over the time from the first arrival to the last answer), latency
median / p99 / max per image and median / p99 per request (its last image's: what a caller
waiting for the whole request sees, comparable across all servers), and accuracy over the
stream (the cascades answer alike, so theirs is one); each network's time per image at batch
1, 8, the request size and `--batch_size`, which bounds what pooling can buy: the large
network's drop from a request's few escalated rows to a full batch; and each network's time per
image at the request size and `--batch_size` while 1 and each `--caller_threads` count of
threads call it at once, which bounds what the threaded servers can gain from overlapping calls.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from adaptive_jax import latency, report, zoo
from adaptive_jax.data import datasets
from adaptive_jax.data.augment import normalize
from adaptive_jax.execution.predict import pure_predict
from adaptive_jax.methods import cascade
from benchmarks.common import append_results

FLAGS = flags.FLAGS
flags.DEFINE_string("small", "resnet20_gpu", "Zoo name of the network that answers every image.")
flags.DEFINE_string("large", "resnet56", "Zoo name of the network the unsure images go on to.")
flags.DEFINE_string("static", "resnet32_gpu", "Zoo entry whose MACs the cascade averages, "
                    "served alone for comparison.")
flags.DEFINE_integer("request_size", 16, "Images per request.")
flags.DEFINE_integer("num_images", 2048, "Images streamed (from the second half of the test "
                     "set; at most 5,000).")
flags.DEFINE_list("loads", ["0.5", "0.8", "0.95", "saturated"], "Arrival rates as shares of the "
                  "static network's capacity; 'saturated': every request at once.")
flags.DEFINE_list("max_wait_ms", ["20", "100"], "Waits of the streaming cascade, in ms ('inf': "
                  "full batches only, the rest answered at the end of the stream).")
flags.DEFINE_float("escalated_share", None, "Share of the images the cascade escalates; default: "
                   "the share that averages the static entry's MACs.")
flags.DEFINE_integer("batch_size", 64, "The streaming cascade's batch for the large network.")
flags.DEFINE_bool("threaded", True, "Also serve each finite wait through `cascade.CascadeServer` "
                  "(the large network on a worker thread).")
flags.DEFINE_list("caller_threads", ["1", "2"], "Caller threads of the `threaded` servers, one "
                  "row per count; a count above 1 also serves the static entry from that many "
                  "threads (the threaded cascade runs its networks on two, so the fair footing).")
flags.DEFINE_bool("record", True, "Append the figures to benchmarks/RESULTS.md and results.jsonl.")

DATASET = "cifar10"
COLUMNS = [("load", "load", "s"), ("server", "server", "s"), ("images_per_s", "img/s", ".0f"),
           ("vs_static", "vs static", ".2f"), ("latency_p50_ms", "p50 ms", ".1f"),
           ("latency_p99_ms", "p99 ms", ".1f"), ("latency_max_ms", "max ms", ".1f"),
           ("request_p50_ms", "request p50", ".1f"), ("request_p99_ms", "request p99", ".1f"),
           ("test_accuracy", "top-1", ".4f")]


class StaticServer:
    """One network answering each request on arrival, with `StreamingCascade`'s interface."""

    def __init__(self, net, state):
        self._jit, self._state = jax.jit(net), state
        self.waiting, self.deadline = 0, None

    def warm_up(self, images):
        jax.block_until_ready(self._jit(*self._state, images))

    def predict(self, images) -> np.ndarray:
        return np.asarray(self._jit(*self._state, images))

    def submit(self, images, ids, arrived_at):
        logits = self.predict(images)
        return cascade.Answers(ids=ids, logits=logits, escalated=np.zeros(ids.size, bool),
                               arrived_at=np.full(ids.size, arrived_at))

    def poll(self):
        return None

    def flush(self):
        return None


def serve(server, requests: list[np.ndarray], interval_s: float) -> dict:
    """Send `requests` at `interval_s` apart (0: all at once) to `server` and answer them as it
    can: one thread, which sleeps until the next arrival or the server's deadline. Returns per
    image id its answer's logits and latency (s)."""
    clock = time.perf_counter
    start = clock() + 0.01
    arrivals = start + interval_s * np.arange(len(requests))
    logits, latency = {}, {}
    sizes = np.cumsum([0] + [len(r) for r in requests])

    def answered(answers):
        if answers is None or len(answers) == 0:
            return
        done = clock()
        for i, row, arrived in zip(answers.ids, answers.logits, answers.arrived_at):
            logits[int(i)], latency[int(i)] = row, done - arrived

    sent = 0
    while sent < len(requests) or server.waiting:
        now = clock()
        if sent < len(requests) and arrivals[sent] <= now:
            ids = np.arange(sizes[sent], sizes[sent + 1])
            answered(server.submit(requests[sent], ids=ids, arrived_at=arrivals[sent]))
            answered(server.poll())
            sent += 1
        elif server.waiting and now >= server.deadline:
            answered(server.poll())
        else:
            wake = min(arrivals[sent] if sent < len(requests) else math.inf,
                       server.deadline if server.waiting else math.inf)
            if math.isinf(wake):  # no more requests and no deadline: answer what waits
                answered(server.flush())
            else:
                time.sleep(max(0.0, wake - now))
    last = clock()
    return {"logits": logits, "latency": latency, "seconds": last - start}


def serve_from_threads(answer, requests: list[np.ndarray], interval_s: float,
                       threads: int) -> dict:
    """Send `requests` at `interval_s` apart (0: all at once) to `answer`, called on arrival by
    the next free one of `threads` caller threads (as a web server's handler threads). `answer`
    returns the request's logits, or a future per image of its `(logits, escalated)`, each
    answered when known (`cascade.CascadeServer.submit_each`): an image's latency runs to its
    own answer. Returns what `serve` does."""
    clock = time.perf_counter
    start = clock() + 0.01
    arrivals = start + interval_s * np.arange(len(requests))
    firsts = np.cumsum([0] + [len(r) for r in requests])
    finished = {}

    def call(k):
        result = answer(requests[k])
        if isinstance(result, np.ndarray):
            finished.update(dict.fromkeys(range(firsts[k], firsts[k + 1]), clock()))
            return list(result)
        for i, future in enumerate(result, start=firsts[k]):
            future.add_done_callback(lambda _, i=i: finished.setdefault(i, clock()))
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        calls = []
        for k in range(len(requests)):
            time.sleep(max(0.0, arrivals[k] - clock()))
            calls.append(pool.submit(call, k))
        rows = [row for c in calls for row in c.result()]
    logits = {i: row.result()[0] if isinstance(row, concurrent.futures.Future) else row
              for i, row in enumerate(rows)}
    latency = {i: finished[i] - arrivals[np.searchsorted(firsts, i, side="right") - 1]
               for i in logits}
    return {"logits": logits, "latency": latency, "seconds": max(finished.values()) - start}


def serve_threaded(streaming: cascade.StreamingCascade, requests: list[np.ndarray],
                   interval_s: float, threads: int = 1) -> dict:
    """`serve_from_threads` through a `cascade.CascadeServer` around `streaming`, a future per
    image: the small network runs in the caller threads, the server's worker runs the large one
    meanwhile."""
    with cascade.CascadeServer(streaming) as server:
        return serve_from_threads(server.submit_each, requests, interval_s, threads)


def summary(result: dict, labels: np.ndarray) -> dict:
    """Throughput, latency per image and per request (its last image's: what a caller waiting
    for the whole request sees), and accuracy. Requests are `--request_size` consecutive ids."""
    ids = np.arange(labels.size)
    latency_ms = np.array([result["latency"][i] for i in ids]) * 1e3
    request_ms = latency_ms.reshape(-1, FLAGS.request_size).max(axis=1)
    answers = np.stack([result["logits"][i] for i in ids]).argmax(-1)
    return {"images_per_s": labels.size / result["seconds"],
            "latency_p50_ms": float(np.percentile(latency_ms, 50)),
            "latency_p99_ms": float(np.percentile(latency_ms, 99)),
            "latency_max_ms": float(latency_ms.max()),
            "request_p50_ms": float(np.percentile(request_ms, 50)),
            "request_p99_ms": float(np.percentile(request_ms, 99)),
            "test_accuracy": float(np.mean(answers == labels))}


def per_image_ms(calls, states, images, batches) -> dict:
    """Each network's time per image at each batch size, the three networks taking turns
    (`latency.interleaved_batch_ms`): what pooling the escalated images can buy is the large
    network's drop from small batches to `--batch_size`."""
    runs = {role: jax.jit(calls[role]) for role in ("small", "large", "static")}
    out = {role: {} for role in runs}
    for batch in batches:
        x = jax.numpy.asarray(np.resize(images, (batch,) + images.shape[1:]))
        ms = latency.interleaved_batch_ms(
            {role: (lambda x, run=run, state=states[role]: run(*state, x))
             for role, run in runs.items()},
            (), [x])
        for role in runs:
            out[role][batch] = ms[role] / batch
    return out


def per_image_ms_from_threads(calls, states, images, batches, threads, images_per_run=512,
                              rounds=3) -> dict:
    """Each network's time per image while `t` threads call it at once, each on batches of its
    own, for each `t` in `threads`: `images_per_run` images per run, the networks and thread
    counts taking turns, medians of `rounds`. What a second caller buys each network is what
    the threaded servers can gain from overlapping calls (XLA:CPU spreads one call over the
    cores, but not all of its time). {role: {(batch, t): ms}}."""
    runs = {role: jax.jit(calls[role]) for role in ("small", "large", "static")}
    times = {role: {(b, t): [] for b in batches for t in threads} for role in runs}
    inputs = {b: jax.numpy.asarray(np.resize(images, (b,) + images.shape[1:])) for b in batches}
    for _ in range(rounds):
        for b, x in inputs.items():
            for role, run in runs.items():
                call = functools.partial(run, *states[role], x)
                np.asarray(call())  # compiled before any run is timed
                for t in threads:
                    count = max(t, images_per_run // b)
                    with concurrent.futures.ThreadPoolExecutor(max_workers=t) as pool:
                        start = time.perf_counter()
                        list(pool.map(lambda _: np.asarray(call()), range(count)))
                        seconds = time.perf_counter() - start
                    times[role][(b, t)].append(seconds * 1e3 / (count * b))
    return {role: {key: float(np.median(ms)) for key, ms in by_key.items()}
            for role, by_key in times.items()}


def main(argv):
    del argv
    split = datasets.load_split(DATASET, "test")
    half = len(split) // 2
    count = min(FLAGS.num_images, len(split) - half)
    count -= count % FLAGS.request_size
    if count <= 0:
        raise SystemExit(f"--num_images={FLAGS.num_images} holds no request of "
                         f"--request_size={FLAGS.request_size}")
    caller_threads = [int(n) for n in FLAGS.caller_threads]
    if not caller_threads or min(caller_threads) < 1:
        raise SystemExit(f"--caller_threads={','.join(FLAGS.caller_threads)}: give one or more "
                         "counts of at least 1 (1: one caller thread, as `serve`)")
    calls, states, records = {}, {}, {}
    for role, name in (("small", FLAGS.small), ("large", FLAGS.large), ("static", FLAGS.static)):
        model, records[role] = zoo.load(name)
        graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        calls[role], states[role] = pure_predict(graphdef), (params, batch_stats)
    small, large, static = records["small"], records["large"], records["static"]
    share = (cascade.share_for_cost(static.macs, small.macs, large.macs)
             if FLAGS.escalated_share is None else FLAGS.escalated_share)
    cascade_macs = small.macs + share * large.macs
    mean, std = datasets.CHANNEL_MEAN[DATASET], datasets.CHANNEL_STD[DATASET]
    held_out = np.asarray(normalize(split.images[:half], mean, std), np.float32)
    confidences = np.concatenate([
        np.asarray(cascade.confidence(jax.jit(calls["small"])(*states["small"], held_out[i:i + 500])))
        for i in range(0, half, 500)])
    threshold = cascade.threshold_for_share(confidences, share)
    stream = np.asarray(normalize(split.images[half:half + count], mean, std), np.float32)
    labels = np.asarray(split.labels[half:half + count])
    requests = [stream[i:i + FLAGS.request_size] for i in range(0, count, FLAGS.request_size)]

    servers = {"static": StaticServer(calls["static"], states["static"]),
               "cascade, per request": cascade.StreamingCascade(
                   calls["small"], calls["large"], states["small"], states["large"], threshold,
                   batch_size=FLAGS.request_size, max_wait_s=0.0)}
    threaded = {f"static, {n} threads": functools.partial(
        serve_from_threads, servers["static"].predict, threads=n)
        for n in caller_threads if n > 1}
    if any(n > 1 for n in caller_threads):
        per_request = cascade.predictor(calls["small"], calls["large"], threshold)

        def answer_per_request(images):
            return np.asarray(per_request(states["small"], states["large"], images)[0])

        for request in requests:  # compiles every gathered shape the stream will need
            answer_per_request(request)
        threaded.update({f"cascade, per request, {n} threads": functools.partial(
            serve_from_threads, answer_per_request, threads=n) for n in caller_threads if n > 1})
    for wait in FLAGS.max_wait_ms:
        name = "cascade, full batches" if math.isinf(float(wait)) else f"cascade, wait {wait} ms"
        servers[name] = cascade.StreamingCascade(
            calls["small"], calls["large"], states["small"], states["large"], threshold,
            batch_size=FLAGS.batch_size, max_wait_s=float(wait) / 1e3)
        if FLAGS.threaded and not math.isinf(float(wait)):
            for n in caller_threads:
                threaded[f"threaded, wait {wait} ms" + (f", {n} threads" if n > 1 else "")] = (
                    functools.partial(serve_threaded, servers[name], threads=n))
    for server in servers.values():  # every shape compiled before anything is timed
        server.warm_up(requests[0])
    # a served stream leaves nothing waiting, so each server serves every load in turn
    capacity = summary(serve(servers["static"], requests, 0.0), labels)["images_per_s"]
    rows = []
    for load in FLAGS.loads:
        interval = 0.0 if load == "saturated" else FLAGS.request_size / (float(load) * capacity)
        at_load = [{"load": load, "server": name,
                    **summary(serve(server, requests, interval), labels)}
                   for name, server in servers.items()]
        at_load += [{"load": load, "server": name,
                     **summary(serve_other(requests, interval), labels)}
                    for name, serve_other in threaded.items()]
        for row in at_load:
            row["vs_static"] = row["images_per_s"] / at_load[0]["images_per_s"]
        rows += at_load
    per_image = per_image_ms(calls, states, stream, sorted({1, 8, FLAGS.request_size,
                                                           FLAGS.batch_size}))
    thread_counts = sorted({1} | set(caller_threads))
    from_threads = per_image_ms_from_threads(calls, states, stream,
                                             sorted({FLAGS.request_size, FLAGS.batch_size}),
                                             thread_counts)
    table = report.format_table(rows, COLUMNS)
    header = (f"{small.name} -> {large.name} at {cascade_macs / 1e6:.1f} M MACs ({static.name}: "
              f"{static.macs / 1e6:.1f} M; {share:.1%} escalated, threshold {threshold:.3f} set "
              f"on the first {half} test images); {count} images in requests of "
              f"{FLAGS.request_size}; {static.name}'s capacity {capacity:.0f} img/s")
    cost_line = "ms per image by batch size: " + "; ".join(
        f"{records[role].name} " + ", ".join(f"b{b} {ms:.2f}" for b, ms in by_batch.items())
        for role, by_batch in per_image.items())
    threads_line = (f"ms per image from {' / '.join(map(str, thread_counts))} caller threads: "
                    + "; ".join(f"{records[role].name} " + ", ".join(
                        f"b{b} " + " / ".join(f"{by_key[(b, t)]:.2f}" for t in thread_counts)
                        for b in sorted({b for b, _ in by_key}))
                        for role, by_key in from_threads.items()))
    print(header)
    print(cost_line)
    print(threads_line)
    print(table)
    if FLAGS.record:
        figures = []
        for row in rows:
            model = (static.name if row["server"].startswith("static")
                     else f"{small.name} -> {large.name}")
            context = {"model": model, "server": row["server"],
                       "load": row["load"], "static": static.name,
                       "request_size": FLAGS.request_size, "images": count,
                       "static_capacity_images_per_s": capacity, "escalated_share": share,
                       "cascade_macs": cascade_macs}
            figures += [
                {"metric": "serving_images_per_s", "value": row["images_per_s"], "unit": "img/s", **context},
                {"metric": "serving_throughput_vs_static", "value": row["vs_static"], "unit": "x", **context},
                {"metric": "serving_latency_p50_ms", "value": row["latency_p50_ms"], "unit": "ms", **context},
                {"metric": "serving_latency_p99_ms", "value": row["latency_p99_ms"], "unit": "ms", **context},
                {"metric": "serving_request_latency_p50_ms", "value": row["request_p50_ms"], "unit": "ms", **context},
                {"metric": "serving_request_latency_p99_ms", "value": row["request_p99_ms"], "unit": "ms", **context},
                {"metric": "serving_accuracy", "value": row["test_accuracy"], "unit": "fraction", **context}]
        for role, by_batch in per_image.items():
            figures += [{"metric": "serving_network_ms_per_image", "value": ms, "unit": "ms",
                         "model": records[role].name, "batch": b} for b, ms in by_batch.items()]
        for role, by_key in from_threads.items():
            figures += [{"metric": "serving_network_ms_per_image_from_threads", "value": ms,
                         "unit": "ms", "model": records[role].name, "batch": b, "threads": t}
                        for (b, t), ms in by_key.items()]
        append_results("cascade_serving", figures, table,
                       f"{header}; {cost_line}; {threads_line}")


if __name__ == "__main__":
    app.run(main)
