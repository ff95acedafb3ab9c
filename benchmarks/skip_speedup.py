"""Does skipping blocks save time in proportion to the MACs it saves? Batch 1, random plans.

    taskset -c 0 python -m benchmarks.skip_speedup            # ResNet-110 and ResNet-38
    taskset -c 0 python -m benchmarks.skip_speedup --quick    # ResNet-110, fewer rounds (< 5 min)

For 75 / 50 / 25 % of blocks active (random plans, seeded), times at batch 1: the plain network
(all blocks), the masked executor (every block runs, as the references do), the cond executor
(skipped blocks do not run), and PyTorch eager on the same ResNet and plan, both masked and truly
skipped. Variants interleaved in rounds; medians. speedup = full / cond; ideal = full MACs / plan
MACs (stem, head and kept projections included, `cost.block_costs`); realized/ideal = their ratio.

Built so far (issue 4): batch 1 and the masked / cond executors. The bucketed and static executors,
batch 64 and plans from a trained OFAS policy come with them; their keys in the last line are null.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from adaptive_jax import cost, report
from adaptive_jax.execution import make_predict_fn
from adaptive_jax.inference import make_predict_fn as make_plain_predict_fn
from adaptive_jax.models import CifarResNet, ResNetSpec
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("depths", ["110", "38"], "ResNet depths.")
flags.DEFINE_list("fractions", ["0.75", "0.5", "0.25"], "Shares of blocks active.")
flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
flags.DEFINE_integer("calls", 10, "Timed calls per variant per round (their median counts).")
flags.DEFINE_bool("torch", True, "Time PyTorch eager on the same plans.")
flags.DEFINE_bool("quick", False, "ResNet-110 only, 3 rounds.")


def random_plan(num_blocks: int, fraction: float, seed: int) -> np.ndarray:
    plan = np.zeros(num_blocks, bool)
    plan[np.random.default_rng(seed).permutation(num_blocks)[:round(fraction * num_blocks)]] = True
    return plan


def _median_call_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def jax_variants(depth: int, plans: dict[float, np.ndarray]) -> tuple[dict, cost.BlockCosts]:
    model = CifarResNet(ResNetSpec(depth), rngs=nnx.Rngs(0))
    costs = cost.block_costs(model)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    image = np.zeros((1, 32, 32, 3), np.float32)
    plain = make_plain_predict_fn(graphdef)
    masked, cond = make_predict_fn(graphdef, "masked"), make_predict_fn(graphdef, "cond")
    variants = {("full", 1.0): lambda: jax.block_until_ready(plain(params, stats, image))}
    for fraction, plan in plans.items():
        variants[("masked", fraction)] = lambda p=plan: jax.block_until_ready(
            masked(params, stats, image, p[None]))
        variants[("cond", fraction)] = lambda p=plan: jax.block_until_ready(
            cond(params, stats, image, p))
    return variants, costs


def torch_variants(depth: int, plans: dict[float, np.ndarray]) -> dict:
    import torch
    from benchmarks.torch_resnet import resnet as torch_resnet

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = torch_resnet(depth).eval()
    image = torch.zeros(1, 3, 32, 32)

    def run(fn):
        with torch.inference_mode():
            fn()

    variants = {("torch_full", 1.0): lambda: run(lambda: model(image))}
    for fraction, plan in plans.items():
        bits = [bool(b) for b in plan]
        variants[("torch_masked", fraction)] = lambda b=bits: run(lambda: model.forward_plan(image, b, False))
        variants[("torch_skip", fraction)] = lambda b=bits: run(lambda: model.forward_plan(image, b, True))
    return variants


def main(argv):
    del argv
    depths = [110] if FLAGS.quick else [int(d) for d in FLAGS.depths]
    rounds = 3 if FLAGS.quick else FLAGS.rounds
    fractions = [float(f) for f in FLAGS.fractions]
    rows, figures, last = [], [], {}
    for depth in depths:
        num_blocks = 3 * ((depth - 2) // 6)
        plans = {f: random_plan(num_blocks, f, seed=depth + int(100 * f)) for f in fractions}
        variants, costs = jax_variants(depth, plans)
        if FLAGS.torch:
            variants.update(torch_variants(depth, plans))
        for fn in variants.values():  # compile and warm up
            fn(), fn()
        samples = {key: [] for key in variants}
        for _ in range(rounds):
            for key, fn in variants.items():
                samples[key].append(_median_call_ms(fn, FLAGS.calls))
        ms = {key: float(np.median(v)) for key, v in samples.items()}
        spread = {key: (float(np.min(v)), float(np.max(v))) for key, v in samples.items()}
        full = ms[("full", 1.0)]
        for fraction, plan in plans.items():
            ideal = costs.full_macs / float(costs.plan_macs(plan))
            for name in ("masked", "cond") + (("torch_masked", "torch_skip") if FLAGS.torch else ()):
                reference = ms[("torch_full", 1.0)] if name.startswith("torch") else full
                speedup = reference / ms[(name, fraction)]
                rows.append({"model": f"resnet{depth}", "active": f"{fraction:.0%}", "variant": name,
                             "ms": ms[(name, fraction)],
                             "range": "[{:.2f}, {:.2f}]".format(*spread[(name, fraction)]),
                             "speedup": speedup, "ideal": ideal, "realized": speedup / ideal})
                figures.append({"metric": "realized_over_ideal", "value": round(speedup / ideal, 3),
                                "unit": "ratio", "model": f"resnet{depth}", "executor": name,
                                "batch_size": 1, "active_blocks": fraction,
                                "latency_ms": round(ms[(name, fraction)], 3),
                                "plan_macs": int(costs.plan_macs(plan)), "full_macs": costs.full_macs})
            if depth == 110 and fraction == 0.5:
                last["realized_over_ideal_b1_50"] = round(rows[-3 if FLAGS.torch else -1]["realized"], 3)
                if FLAGS.torch:
                    last["speedup_vs_torch_eager_b1"] = round(
                        ms[("torch_skip", fraction)] / ms[("cond", fraction)], 3)
        rows.append({"model": f"resnet{depth}", "active": "100%", "variant": "full", "ms": full,
                     "range": "[{:.2f}, {:.2f}]".format(*spread[("full", 1.0)])})
    table = report.format_table(rows, [
        ("model", "model", "s"), ("active", "blocks on", "s"), ("variant", "executor", "s"),
        ("ms", "b1 ms", ".2f"), ("range", "[min, max]", "s"), ("speedup", "speedup", ".2f"),
        ("ideal", "ideal", ".2f"), ("realized", "realized/ideal", ".3f")])
    print(table)
    common.append_results("skip_speedup", figures, table,
                          notes=f"batch 1, random plans, rounds {rounds}, calls {FLAGS.calls}")
    last.update({"realized_over_ideal_b64_50": None, "policy_overhead_frac_b1": None})
    last.setdefault("speedup_vs_torch_eager_b1", None)
    print(json.dumps(last))


if __name__ == "__main__":
    app.run(main)
