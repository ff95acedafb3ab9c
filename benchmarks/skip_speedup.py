"""Does skipping blocks save time in proportion to the MACs it saves? Batch 1 and 64, random plans.

    taskset -c 0 python -m benchmarks.skip_speedup            # ResNet-110 and ResNet-38
    taskset -c 0 python -m benchmarks.skip_speedup --quick    # ResNet-110, fewer rounds (< 5 min)

For 75 / 50 / 25 % of blocks active (random plans, seeded), times at batch 1: the plain network
(all blocks), the masked executor (every block runs, as the references do), the cond executor
(skipped blocks do not run), the static executor (one compiled executable per plan), and PyTorch eager on the same ResNet and plan, both masked and truly
skipped; at batch 64 with an independent plan per sample: the plain network and the bucketed
executor. Variants interleaved in rounds; medians. speedup = full / executor; ideal = full MACs /
plan MACs (mean over samples; stem, head and kept projections included, `cost.block_costs`);
realized/ideal = their ratio.

Policy overhead at batch 1: the same plan produced by a policy inside the compiled call, against
the cond executor given that plan: the OFAS head (once after the stem, then the loop over active
blocks) and per-block gates (SkipNet / ConvNet-AIG style: a gate and a `lax.cond` at every block).
The policies' last layers are set to emit the benchmark's plan, so all three run the same blocks;
overhead = (policy path - cond) / full network. `policy_overhead_frac_b1` is the OFAS head's.

`--ofas_workdir=DIR` (a stage-B directory written by experiments/ofas, e.g. RUN/penalty_4, with
`--ofas_depth`) also times plans from that trained policy on CIFAR-10 test images: batch 1 (cond,
one image at a time) and batch 64 (bucketed), against the full network and the plans' MACs.
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
from adaptive_jax.execution import StaticExecutor, make_predict_fn
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.methods import GatedResNet, OFASNet
from adaptive_jax.policies import OFAS_VARIANTS
from adaptive_jax.plans import BlockLayout, StaticBlockPlan
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_list("depths", ["110", "38"], "ResNet depths.")
flags.DEFINE_list("fractions", ["0.75", "0.5", "0.25"], "Shares of blocks active.")
flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
flags.DEFINE_integer("calls", 10, "Timed calls per variant per round at batch 1 (median counts).")
flags.DEFINE_integer("calls_b64", 3, "Timed calls per variant per round at batch 64.")
flags.DEFINE_integer("buckets", 32, "Bucketed executor: capacities are multiples of 64 / buckets.")
flags.DEFINE_bool("torch", True, "Time PyTorch eager on the same plans.")
flags.DEFINE_bool("quick", False, "ResNet-110 only, 3 rounds.")
flags.DEFINE_string("ofas_workdir", "", "A trained OFAS stage-B workdir whose plans to time.")
flags.DEFINE_integer("ofas_depth", 32, "Depth of the ResNet in --ofas_workdir.")
flags.DEFINE_integer("ofas_images", 32, "Test images timed one at a time (batch 1).")


def random_plan(num_blocks: int, fraction: float, seed: int) -> np.ndarray:
    plan = np.zeros(num_blocks, bool)
    plan[np.random.default_rng(seed).permutation(num_blocks)[:round(fraction * num_blocks)]] = True
    return plan


def _min_max(values) -> tuple[float, float]:
    return float(np.min(values)), float(np.max(values))


def _emitting(logit_layer: nnx.Linear, bits: np.ndarray) -> None:
    """Makes a policy's last layer emit `bits` whatever its input: zero weights, +-8 biases."""
    logit_layer.kernel[...] = np.zeros(logit_layer.kernel[...].shape, np.float32)
    logit_layer.bias[...] = np.where(bits, 8.0, -8.0).astype(np.float32).reshape(
        logit_layer.bias[...].shape)


def policy_variants(model: CifarResNet, plan: np.ndarray, image: np.ndarray) -> dict:
    """Batch-1 calls of the OFAS head and of per-block gates, each emitting `plan`."""
    depth = model.spec.depth
    variant = OFAS_VARIANTS["II_rl" if depth >= 110 else "I"]
    ofas_net = OFASNet(model, variant, rngs=nnx.Rngs(1))
    _emitting(ofas_net.policy.layers[-1], plan)
    gated_net = GatedResNet(model, rngs=nnx.Rngs(2))
    layout = BlockLayout.of(model.spec)
    for gates, cols in zip(gated_net.gates, layout.stage_slices()):
        bits = plan[cols]
        _emitting(gates.first.out, bits[:1])
        if gates.rest is not None:
            gates.rest.out.kernel[...] = np.zeros(gates.rest.out.kernel[...].shape, np.float32)
            gates.rest.out.bias[...] = np.where(bits[1:], 8.0, -8.0).astype(np.float32)[:, None]

    def predictor(net):
        graphdef, state = nnx.split(net)

        @jax.jit
        def predict(state, image):
            m = nnx.merge(graphdef, state)
            m.eval()
            return m.predict(image)

        logits, got = predict(state, image)
        if not np.array_equal(np.asarray(got).reshape(-1), plan):
            raise AssertionError(f"{type(net).__name__} did not emit the benchmark's plan")
        return lambda: jax.block_until_ready(predict(state, image))

    return {"ofas_cond": predictor(ofas_net), "gated_cond": predictor(gated_net)}


def jax_variants(depth: int, plans: dict[float, np.ndarray]) -> tuple[dict, cost.BlockCosts]:
    model = CifarResNet(ResNetSpec(depth), rngs=nnx.Rngs(0))
    costs = cost.block_costs(model)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    image = np.zeros((1, 32, 32, 3), np.float32)
    plain = make_predict_fn(graphdef)
    masked, cond = make_predict_fn(graphdef, "masked"), make_predict_fn(graphdef, "cond")
    static = StaticExecutor(graphdef, params, stats)
    layout = BlockLayout.of(model.spec)
    variants = {("full", 1.0): lambda: jax.block_until_ready(plain(params, stats, image))}
    for fraction, plan in plans.items():
        static_plan = StaticBlockPlan.from_array(plan, layout)
        variants[("static", fraction)] = lambda p=static_plan: jax.block_until_ready(static(image, p))
        variants[("masked", fraction)] = lambda p=plan: jax.block_until_ready(
            masked(params, stats, image, p[None]))
        variants[("cond", fraction)] = lambda p=plan: jax.block_until_ready(
            cond(params, stats, image, p))
    if 0.5 in plans:
        for name, fn in policy_variants(model, plans[0.5], image).items():
            variants[(name, 0.5)] = fn
    return variants, costs


def batch64_variants(depth: int, fractions: list[float]) -> tuple[dict, dict, float]:
    model = CifarResNet(ResNetSpec(depth), rngs=nnx.Rngs(0))
    costs = cost.block_costs(model)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = np.zeros((64, 32, 32, 3), np.float32)
    plain = make_predict_fn(graphdef)
    run = make_predict_fn(graphdef, "bucketed", buckets=FLAGS.buckets)
    variants = {("full_b64", 1.0): lambda: jax.block_until_ready(plain(params, stats, images))}
    ideal = {}
    for fraction in fractions:
        rng = np.random.default_rng(depth + int(100 * fraction))
        plans = rng.random((64, len(costs.run_macs))) < fraction
        ideal[fraction] = costs.full_macs / float(costs.plan_macs(plans).mean())
        variants[("bucketed", fraction)] = lambda p=plans: jax.block_until_ready(
            run(params, stats, images, p))
    start = time.perf_counter()
    jax.block_until_ready(variants[("bucketed", fractions[0])]())
    return variants, ideal, time.perf_counter() - start


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


def trained_policy_rows(workdir: str, depth: int, rounds: int) -> tuple[list, list]:
    """Batch-1 cond and batch-64 bucketed latency of a trained OFAS policy's own plans."""
    from adaptive_jax.data import load_split, normalize, CHANNEL_MEAN, CHANNEL_STD
    from adaptive_jax.train import Checkpointer, create_train_state, ofas

    config = ofas.default_config()
    config.model.depth = depth
    model = ofas.build_model(config, 10, 3)
    tx, _ = ofas.make_stage_b_tx(config, 1, 1)
    graphdef, state = create_train_state(model, tx, 0)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    state, _ = ckpt.restore(state)
    ckpt.close()
    test = load_split("cifar10", "test")
    images = np.asarray(normalize(test.images[:64], CHANNEL_MEAN["cifar10"], CHANNEL_STD["cifar10"]))
    params, stats = state.params, state.batch_stats
    costs = nnx.merge(graphdef, params, stats).costs()

    def call(fn):
        jitted = jax.jit(fn)
        return lambda *a: jitted(params, stats, *a)

    def merged(p, s):
        m = nnx.merge(graphdef, p, s)
        m.eval()
        return m

    full = call(lambda p, s, x: merged(p, s).backbone(x))
    planned = call(lambda p, s, x: merged(p, s).predict(x, "cond")[0])
    planned64 = call(lambda p, s, x: merged(p, s).predict(x, "bucketed",
                                                          buckets=FLAGS.buckets)[0])
    plans = np.asarray(call(lambda p, s, x: merged(p, s).plan(x))(images))
    ideal_b64 = costs.full_macs / float(costs.plan_macs(plans).mean())
    one = [images[i:i + 1] for i in range(min(FLAGS.ofas_images, 64))]
    ideal_b1 = costs.full_macs / float(costs.plan_macs(plans[:len(one)]).mean())
    variants = {"full b1": lambda: [jax.block_until_ready(full(x)) for x in one],
                "ofas cond b1": lambda: [jax.block_until_ready(planned(x)) for x in one],
                "full b64": lambda: jax.block_until_ready(full(images)),
                "ofas bucketed b64": lambda: jax.block_until_ready(planned64(images))}
    for fn in variants.values():
        fn(), fn()
    samples = {k: [] for k in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            samples[key].append(common.median_call_ms(fn, 3))
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    name = f"ofas_resnet{depth} ({os.path.basename(os.path.normpath(workdir))})"
    rows, figures = [], []
    for exe, full_key, ideal, batch in [("ofas cond b1", "full b1", ideal_b1, 1),
                                        ("ofas bucketed b64", "full b64", ideal_b64, 64)]:
        speedup = ms[full_key] / ms[exe]
        per = len(one) if batch == 1 else 1
        rows.append({"model": name, "active": f"{float(costs.block_fraction(plans).mean()):.0%} MACs",
                     "variant": f"{exe} (trained plans)", "ms": ms[exe] / per,
                     "range": "[{:.2f}, {:.2f}]".format(*(np.array(_min_max(samples[exe])) / per)),
                     "speedup": speedup, "ideal": ideal, "realized": speedup / ideal})
        figures.append({"metric": "realized_over_ideal", "value": round(speedup / ideal, 3),
                        "unit": "ratio", "model": f"ofas_resnet{depth}", "executor": exe.split()[1],
                        "batch_size": batch, "plans": "trained OFAS policy", "workdir": workdir,
                        "mean_block_macs_frac": round(float(costs.block_fraction(plans).mean()), 4),
                        "latency_ms": round(ms[exe] / per, 3)})
    return rows, figures


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
                samples[key].append(common.median_call_ms(fn, FLAGS.calls))
        ms = {key: float(np.median(v)) for key, v in samples.items()}
        spread = {key: _min_max(v) for key, v in samples.items()}
        full = ms[("full", 1.0)]
        for fraction, plan in plans.items():
            ideal = costs.full_macs / float(costs.plan_macs(plan))
            names = ("masked", "cond", "static") + (("torch_masked", "torch_skip") if FLAGS.torch else ())
            for name in names:
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
            if fraction == 0.5:
                for name in ("ofas_cond", "gated_cond"):
                    overhead = (ms[(name, fraction)] - ms[("cond", fraction)]) / full
                    rows.append({"model": f"resnet{depth}", "active": "50%", "variant": name,
                                 "ms": ms[(name, fraction)],
                                 "range": "[{:.2f}, {:.2f}]".format(*spread[(name, fraction)]),
                                 "overhead": overhead})
                    figures.append({"metric": "policy_overhead_frac", "value": round(overhead, 4),
                                    "unit": "fraction of full b1 latency", "model": f"resnet{depth}",
                                    "policy": name.removesuffix("_cond"), "batch_size": 1,
                                    "active_blocks": fraction, "latency_ms": round(ms[(name, fraction)], 3),
                                    "cond_latency_ms": round(ms[("cond", fraction)], 3)})
                    if depth == 110 and name == "ofas_cond":
                        last["policy_overhead_frac_b1"] = round(overhead, 4)
            if depth == 110 and fraction == 0.5:
                last["realized_over_ideal_b1_50"] = round(
                    next(r for r in rows[::-1] if r["variant"] == "cond")["realized"], 3)
                if FLAGS.torch:
                    last["speedup_vs_torch_eager_b1"] = round(
                        ms[("torch_skip", fraction)] / ms[("cond", fraction)], 3)
        rows.append({"model": f"resnet{depth}", "active": "100%", "variant": "full", "ms": full,
                     "range": "[{:.2f}, {:.2f}]".format(*spread[("full", 1.0)])})

        variants, ideal, compile_s = batch64_variants(depth, fractions)
        for fn in variants.values():
            fn()
        samples = {key: [] for key in variants}
        for _ in range(rounds):
            for key, fn in variants.items():
                samples[key].append(common.median_call_ms(fn, FLAGS.calls_b64))
        ms = {key: float(np.median(v)) for key, v in samples.items()}
        full = ms[("full_b64", 1.0)]
        for fraction in fractions:
            speedup = full / ms[("bucketed", fraction)]
            realized = speedup / ideal[fraction]
            rows.append({"model": f"resnet{depth}", "active": f"{fraction:.0%}",
                         "variant": f"bucketed b64 ({FLAGS.buckets})", "ms": ms[("bucketed", fraction)],
                         "range": "[{:.1f}, {:.1f}]".format(*_min_max(samples[("bucketed", fraction)])),
                         "speedup": speedup, "ideal": ideal[fraction], "realized": realized})
            figures.append({"metric": "realized_over_ideal", "value": round(realized, 3), "unit": "ratio",
                            "model": f"resnet{depth}", "executor": "bucketed", "buckets": FLAGS.buckets,
                            "batch_size": 64, "active_blocks": fraction,
                            "latency_ms": round(ms[("bucketed", fraction)], 2),
                            "compile_s": round(compile_s, 1)})
            if depth == 110 and fraction == 0.5:
                last["realized_over_ideal_b64_50"] = round(realized, 3)
        rows.append({"model": f"resnet{depth}", "active": "100%", "variant": "full b64", "ms": full})
    if FLAGS.ofas_workdir:
        more_rows, more_figures = trained_policy_rows(FLAGS.ofas_workdir, FLAGS.ofas_depth, rounds)
        rows += more_rows
        figures += more_figures
    table = report.format_table(rows, [
        ("model", "model", "s"), ("active", "blocks on", "s"), ("variant", "executor", "s"),
        ("ms", "ms", ".2f"), ("range", "[min, max]", "s"), ("speedup", "speedup", ".2f"),
        ("ideal", "ideal", ".2f"), ("realized", "realized/ideal", ".3f"),
        ("overhead", "policy overhead", "+.4f")])
    print(table)
    common.append_results("skip_speedup", figures, table,
                          notes=f"random plans, rounds {rounds}, calls {FLAGS.calls} (b1) / {FLAGS.calls_b64} (b64), "
                                f"buckets {FLAGS.buckets}")
    last.setdefault("realized_over_ideal_b64_50", None)
    last.setdefault("speedup_vs_torch_eager_b1", None)
    last.setdefault("policy_overhead_frac_b1", None)
    print(json.dumps(last))


if __name__ == "__main__":
    app.run(main)
