"""What the hardening costs on the hot paths, side by side in one process (docs/robustness.md).

    taskset -c 0 python -m benchmarks.robustness_cost

1. Train step (ResNet-20, batch 128): the non-finite guard (one norm over the updates, one select
   per array) against the same step applying every update unchecked; the variants take turns,
   `--rounds` x `--steps` steps each, medians.
2. Batch-1 inference (ResNet-20, cond executor, every block on): `check_finite=True` against the
   default, on numpy images; interleaved per image (adaptive_jax.latency).
3. The static executor's Python around its executable (plan conversion, cache lookup) at batch 1:
   `executor(image, plan)` against calling the cached executable directly.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from adaptive_jax import latency, report
from adaptive_jax.data import datasets
from adaptive_jax.execution import StaticExecutor, make_predict_fn
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.plans import StaticBlockPlan
from adaptive_jax.train import loop, steps
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 20, "ResNet depth.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
flags.DEFINE_integer("steps", 3, "Timed train steps per variant per round.")
flags.DEFINE_integer("images", 16, "Test images for the batch-1 timings.")
flags.DEFINE_bool("record", True, "Append to benchmarks/RESULTS.md and results.jsonl.")


def train_step_ms(depth: int, batch_size: int, rounds: int, steps_per_round: int) -> dict:
    config = loop.default_config()
    config.model.depth = depth
    mean, std = datasets.CHANNEL_MEAN["cifar10"], datasets.CHANNEL_STD["cifar10"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch_size).astype(np.int32)
    variants, states = {}, {}
    for name, guard in (("unguarded", False), ("guarded", True)):
        tx, _ = loop.make_tx(config, 390, 390 * 15)
        graphdef, state = steps.create_train_state(loop.build_model(config, 10, 3), tx, 0)
        variants[name] = steps.make_train_step(graphdef, tx, num_classes=10, mean=mean, std=std,
                                               guard_nonfinite=guard)
        states[name], _ = jax.block_until_ready(variants[name](state, images, labels))  # compile
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            for _ in range(steps_per_round):
                start = time.perf_counter()
                states[name], metrics = jax.block_until_ready(step(states[name], images, labels))
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
    del argv
    train = train_step_ms(FLAGS.depth, FLAGS.batch_size, FLAGS.rounds, FLAGS.steps)

    model = CifarResNet(ResNetSpec(FLAGS.depth), rngs=nnx.Rngs(0))
    model.eval()
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    plan = np.ones(model.spec.depth // 2 - 1, bool)
    plain = make_predict_fn(graphdef, "cond")
    checked = make_predict_fn(graphdef, "cond", check_finite=True)
    images = np.random.default_rng(1).normal(size=(FLAGS.images, 32, 32, 3)).astype(np.float32)
    plain_ms, checked_ms = latency.interleaved_batch1_ms(
        (lambda p, s, x: plain(p, s, x, plan), lambda p, s, x: checked(p, s, x, plan)),
        (params, stats), images)

    executor = StaticExecutor(graphdef, params, stats)
    static_plan = StaticBlockPlan.from_array(plan, executor.layout)
    raw = executor.executable(static_plan, (1, 32, 32, 3))
    raw_ms, wrapped_ms = latency.interleaved_batch1_ms(
        (lambda p, s, x: raw(p, s, x), lambda p, s, x: executor(x, plan)), (params, stats), images)

    model_name = f"resnet{FLAGS.depth}"
    rows = [
        {"path": f"train step b{FLAGS.batch_size}", "before": train["unguarded"],
         "after": train["guarded"], "what": "non-finite guard"},
        {"path": "cond b1", "before": plain_ms, "after": checked_ms, "what": "check_finite=True"},
        {"path": "static b1", "before": raw_ms, "after": wrapped_ms,
         "what": "executor(image, bool array) vs its executable"},
    ]
    for r in rows:
        r["ratio"] = r["after"] / r["before"]
    table = report.format_table(rows, [("path", "path", "s"), ("what", "what", "s"),
                                       ("before", "before ms", ".3f"), ("after", "after ms", ".3f"),
                                       ("ratio", "after/before", ".3f")])
    print(table)
    if FLAGS.record:
        metrics = ("train_step_guard_ratio", "b1_check_finite_ratio", "static_executor_wrapper_ratio")
        figures = [{"metric": m, "value": round(r["ratio"], 4), "unit": "ratio", "model": model_name,
                    "before_ms": round(r["before"], 4), "after_ms": round(r["after"], 4)}
                   for m, r in zip(metrics, rows)]
        common.append_results("robustness_cost", figures, table,
                              notes=f"{FLAGS.rounds} interleaved rounds; medians")


if __name__ == "__main__":
    app.run(main)
