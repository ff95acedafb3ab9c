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
(params, batch_stats, images, plan) -> logits in inference mode; options go to the executor
(e.g. `buckets=32` for bucketed: a finer capacity menu, closer to the ideal speedup, longer to
compile).
"""

from collections.abc import Callable

import jax
from flax import nnx

from adaptive_jax.execution import bucketed, cond, masked, static
from adaptive_jax.execution.static import ExecutableCache, StaticExecutor, use_persistent_cache
from adaptive_jax.execution.subnets import SubnetExecutor

EXECUTORS = {"masked": masked.forward, "cond": cond.forward, "bucketed": bucketed.forward}


def make_predict_fn(graphdef, executor: str, **options) -> Callable:
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {sorted(EXECUTORS)}")
    forward = EXECUTORS[executor]

    def predict(params, batch_stats, images, plan):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return forward(model, images, plan, **options)

    return jax.jit(predict)


__all__ = ["EXECUTORS", "ExecutableCache", "StaticExecutor", "SubnetExecutor", "use_persistent_cache", "bucketed", "cond", "make_predict_fn", "masked", "static"]
