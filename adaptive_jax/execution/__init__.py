"""Executors: one backbone and one set of weights, run under a block plan (adaptive_jax.plans).

  masked: every block runs, the plan blends block and shortcut; differentiable, the training path.
  cond:   one plan per call (batch 1); skipped blocks do not run.
  bucketed: one plan per sample; each block runs on its active rows only, gathered to a capacity
          from a menu of multiples of B/8.
  static: a `StaticBlockPlan` baked in at trace time; `StaticExecutor` keeps one AOT-compiled
          executable per plan in a bounded LRU cache, with warm-up; `use_persistent_cache(DIR)`
          keeps executables across processes.
  subnets: `SubnetExecutor` serves a slimmable net's width sub-nets, each compiled on its own
          sliced weights, from the same kind of cache.

`make_predict_fn(graphdef, executor, **options)` gives a jit-compiled pure function
(params, batch_stats, images, plan) -> logits in inference mode (`check_finite=True`: NaN / inf
pixels are an error, at the cost of a reduction per call); options go to the executor
(e.g. `buckets=32` for bucketed: a finer capacity menu, closer to the ideal speedup, longer to
compile).
"""

from collections.abc import Callable

import jax
from flax import nnx

from adaptive_jax.execution import bucketed, cond, masked, static
from adaptive_jax.execution.static import ExecutableCache, StaticExecutor, use_persistent_cache
from adaptive_jax.execution.subnets import SubnetExecutor
from adaptive_jax.models.resnet import check_finite_images

EXECUTORS = {"masked": masked.forward, "cond": cond.forward, "bucketed": bucketed.forward}


def make_predict_fn(graphdef, executor: str, check_finite: bool = False, **options) -> Callable:
    """`check_finite=True` refuses images with NaN / inf pixels on every call (check_finite_images)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {sorted(EXECUTORS)}")
    forward = EXECUTORS[executor]

    def predict(params, batch_stats, images, plan):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return forward(model, images, plan, **options)

    return with_finite_check(jax.jit(predict), images_arg=2) if check_finite else jax.jit(predict)


def with_finite_check(fn: Callable, images_arg: int) -> Callable:
    """`fn` that first refuses non-finite images (its positional argument `images_arg`)."""

    def checked(*args):
        check_finite_images(args[images_arg])
        return fn(*args)

    return checked


__all__ = ["EXECUTORS", "ExecutableCache", "StaticExecutor", "SubnetExecutor", "use_persistent_cache", "bucketed", "cond", "make_predict_fn", "masked", "static", "with_finite_check"]
