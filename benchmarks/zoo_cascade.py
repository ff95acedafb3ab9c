"""Cascades of zoo backbones against the static zoo backbones at their MACs (docs/zoo.md).

    python -m benchmarks.zoo_cascade                          # resnet20_gpu -> resnet56
    python -m benchmarks.zoo_cascade --small=resnet20_gpu --large=resnet110 \
        --static=resnet32_gpu,resnet38,resnet56,resnet74

The small network answers every test image; the ones it is least sure of go on to the large one
(`methods.cascade`). For each static entry whose MACs lie between the small network's and the
pair's, the share escalated is the one that averages that entry's MACs, and the cascade is compared
with the entry and with the two networks mixed at random at the same share (what routing by
confidence adds). The zoo backbones trained on every training image, so no image is left unseen to
set the threshold on: `cascade.two_fold_statistics` sets it on one half of the test images'
small-network confidences (no labels) and scores the other half, then the halves swap.

Latency (one process, interleaved): at batch 1 over `--latency_images` test images, the cascade
at the first target, that target's static entry, and the large network; in batches of 64, each
answered before the next (`cascade.predictor`); and over `--throughput_batches` batches of 64
answered together, the escalated images of all of them pooled into full batches for the large
network (`cascade.pooled_predictor`), against the cascade batch by batch and the static entry
over the same images.
"""

from __future__ import annotations

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
flags.DEFINE_list("static", ["resnet32_gpu", "resnet38"], "Zoo entries compared at their MACs.")
flags.DEFINE_integer("num_examples", 0, "First this-many test images (0: all 10,000).")
flags.DEFINE_integer("latency_images", 16, "Test images timed one at a time (0: no timing).")
flags.DEFINE_integer("throughput_batches", 16, "Batches of 64 answered together for the pooled "
                     "cascade's throughput.")
flags.DEFINE_bool("record", True, "Append the figures to benchmarks/RESULTS.md and results.jsonl.")

DATASET = "cifar10"
COLUMNS = [("target", "MACs target", "s"), ("static_accuracy", "static", ".4f"),
           ("test_accuracy", "cascade", ".4f"), ("macs_mean", "MACs", ".4g"),
           ("escalated_share", "escalated", ".3f"), ("random_mixture", "random mix", ".4f"),
           ("cascade_minus_static", "- static", "+.4f"),
           ("cascade_minus_random", "- random", "+.4f")]


def accuracy(logits, labels) -> float:
    return float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(labels)))


def cascade_rows(small, large, statics, logits, labels) -> list[dict]:
    """One row per static entry the pair can match in MACs: the cascade at that entry's MACs
    (two-fold threshold), the entry itself, and the two networks mixed at random."""
    small_accuracy, large_accuracy = (accuracy(logits[r.name], labels) for r in (small, large))
    rows = []
    for rec in statics:
        if not small.macs < rec.macs < small.macs + large.macs:
            continue
        share = cascade.share_for_cost(rec.macs, small.macs, large.macs)
        stats = cascade.two_fold_statistics(logits[small.name], logits[large.name], labels,
                                            share, small.macs, large.macs)
        stats.pop("escalated")
        stats["macs_mean"], stats["macs_cv"] = stats.pop("cost_mean"), stats.pop("cost_cv")
        static_accuracy = accuracy(logits[rec.name], labels)
        mixed = ((1 - stats["escalated_share"]) * small_accuracy
                 + stats["escalated_share"] * large_accuracy)
        rows.append({"target": f"{rec.name} ({rec.macs / 1e6:.1f} M)", "static": rec.name,
                     "static_macs": rec.macs, "static_accuracy": static_accuracy,
                     "escalation_target_share": share, **stats, "random_mixture": mixed,
                     "cascade_minus_static": stats["test_accuracy"] - static_accuracy,
                     "cascade_minus_random": stats["test_accuracy"] - mixed})
    return rows


def timings(models, row, split, num_images: int, throughput_batches: int) -> dict:
    """Batch 1 and batches of 64: the cascade at `row`'s threshold, its static entry, and the
    large network alone, interleaved; then ms per batch of 64 over `throughput_batches` batches
    answered together: the pooled cascade, the cascade batch by batch, the static entry."""
    calls, states = {}, {}
    for key, model in models.items():
        graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        calls[key], states[key] = pure_predict(graphdef), (params, batch_stats)
    cascaded = cascade.predictor(calls["small"], calls["large"], row["threshold"])
    static_jit, large_jit = jax.jit(calls["static"]), jax.jit(calls["large"])
    runs = {"cascade": lambda st, x: cascaded(st["small"], st["large"], x),
            "static": lambda st, x: static_jit(*st["static"], x),
            "large": lambda st, x: large_jit(*st["large"], x)}
    mean, std = datasets.CHANNEL_MEAN[DATASET], datasets.CHANNEL_STD[DATASET]
    count = max(num_images, 4 * 64, throughput_batches * 64)
    images = np.asarray(normalize(split.images[:count], mean, std), np.float32)
    b1 = latency.interleaved_batch1_ms(tuple(runs.values()), (states,), images[:num_images])
    batch = min(64, len(images))  # 4 batches of 64 test images (fewer on a smaller test set)
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    b64 = latency.interleaved_batch_ms(runs, (states,), batches[:4])
    pooled = cascade.pooled_predictor(calls["small"], calls["large"], row["threshold"], batch)
    many = images[:len(batches[:throughput_batches]) * batch]

    def batch_by_batch(run):
        return lambda st, x: [run(st, x[i:i + batch]) for i in range(0, len(x), batch)]

    together = {"cascade_pooled": lambda st, x: pooled(st["small"], st["large"], x),
                "cascade_per_batch": batch_by_batch(runs["cascade"]),
                "static_per_batch": batch_by_batch(runs["static"])}
    whole = latency.interleaved_batch_ms(together, (states,), [many])
    per_batch = len(many) // batch
    return {**{f"{k}_b1_ms": v for k, v in zip(runs, b1)},
            **{f"{k}_b64_ms": v for k, v in b64.items()},
            **{f"{k}_b64_ms_over_{per_batch}": v / per_batch for k, v in whole.items()}}


def main(argv):
    del argv
    split = datasets.load_split(DATASET, "test")
    if FLAGS.num_examples:
        split = datasets.Split(split.images[:FLAGS.num_examples],
                               split.labels[:FLAGS.num_examples], split.num_classes)
    names = [FLAGS.small, FLAGS.large, *FLAGS.static]
    models, records = {}, {}
    for name in dict.fromkeys(names):
        models[name], records[name] = zoo.load(name)
    logits = {name: zoo.logits(models[name], split.images, DATASET) for name in models}
    small, large = records[FLAGS.small], records[FLAGS.large]
    rows = cascade_rows(small, large, [records[n] for n in FLAGS.static], logits, split.labels)
    if not rows:
        raise SystemExit(f"no --static entry has MACs between {small.name}'s "
                         f"({small.macs / 1e6:.1f} M) and the pair's "
                         f"({(small.macs + large.macs) / 1e6:.1f} M)")
    table = report.format_table(rows, COLUMNS)
    pair = f"{small.name} -> {large.name}"
    print(f"cascade {pair}: small {accuracy(logits[small.name], split.labels):.4f}, "
          f"large {accuracy(logits[large.name], split.labels):.4f}, {len(split)} test images")
    print(table)
    time_row = {}
    if FLAGS.latency_images:
        time_row = timings({"small": models[small.name], "large": models[large.name],
                            "static": models[rows[0]["static"]]}, rows[0], split,
                           FLAGS.latency_images, FLAGS.throughput_batches)
        print(f"latency at {rows[0]['target']}: " + ", ".join(
            f"{k} {v:.2f} ms" for k, v in time_row.items()))
    if FLAGS.record:
        figures = []
        for row in rows:
            context = {"model": pair, "static": row["static"], "test_examples": len(split),
                       "macs_mean": row["macs_mean"], "escalated_share": row["escalated_share"],
                       "static_accuracy": row["static_accuracy"],
                       "random_mixture_accuracy": row["random_mixture"]}
            figures += [
                {"metric": "zoo_cascade_accuracy", "value": row["test_accuracy"], "unit": "fraction", **context},
                {"metric": "zoo_cascade_minus_static_accuracy", "value": row["cascade_minus_static"],
                 "unit": "fraction", **context},
                {"metric": "zoo_cascade_minus_random_mixture_accuracy",
                 "value": row["cascade_minus_random"], "unit": "fraction", **context}]
        if time_row:
            context = {"model": pair, "static": rows[0]["static"], **time_row}
            figures += [
                {"metric": "zoo_cascade_speedup_b1_vs_static",
                 "value": time_row["static_b1_ms"] / time_row["cascade_b1_ms"], "unit": "x", **context},
                {"metric": "zoo_cascade_speedup_b64_vs_static",
                 "value": time_row["static_b64_ms"] / time_row["cascade_b64_ms"], "unit": "x", **context}]
            pooled_key = next(k for k in time_row if k.startswith("cascade_pooled_b64_ms"))
            static_key = pooled_key.replace("cascade_pooled", "static_per_batch")
            figures.append({"metric": "zoo_cascade_pooled_speedup_b64_vs_static",
                            "value": time_row[static_key] / time_row[pooled_key], "unit": "x",
                            **context})
        notes = (f"{pair}; threshold per target set two-fold on the test images' small-network "
                 f"confidences; latency at {rows[0]['target']}: "
                 + ", ".join(f"{k} {v:.2f} ms" for k, v in time_row.items()))
        append_results("zoo_cascade", figures, table, notes)


if __name__ == "__main__":
    app.run(main)
