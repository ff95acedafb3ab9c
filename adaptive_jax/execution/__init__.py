"""Execution: one backbone and one set of weights, run under a plan (adaptive_jax.plans) so that
skipped work does not run (docs/architecture.md).

  executors   the execution modes as values (`Executor`): `masked()` (the training path),
              `cond()` / `switch()` (one plan per call), `bucketed(buckets)` (one plan per
              sample), `static()` (a plan baked in); each takes a menu of options
              (`models.options`) and runs block plans and option plans alike.
  predict     the one helper that turns a model into a pure compiled predict function.
  cache       the bounded LRU cache of AOT executables; XLA's persistent cache across processes.
  serving     `StaticExecutor`: one executable per static plan, served from the cache.
  subnets     `SubnetExecutor`: a slimmable net's width sub-nets, each compiled on its own weights.

`make_predict_fn(graphdef, executor=None, **options)` gives a jit-compiled pure function in
inference mode: (params, batch_stats, images) -> logits of the model as it is, or, with an
executor (an `Executor` or its name, options to its constructor, e.g. `buckets=32`),
(params, batch_stats, images, plan) -> logits. `check_finite=True`: NaN / inf pixels are an
error, at the cost of a reduction per call.
"""

from collections.abc import Callable

from adaptive_jax.execution import cache, executors, predict
from adaptive_jax.execution.cache import ExecutableCache, persistent_cache_hits, use_persistent_cache
from adaptive_jax.execution.predict import compile_predict, jit_predict, with_finite_check
from adaptive_jax.execution.executors import (Executor, bucketed, capacities, check_plan_values,
                                              cond, masked, static, switch)
from adaptive_jax.execution.serving import StaticExecutor
from adaptive_jax.execution.subnets import SubnetExecutor


def make_predict_fn(graphdef, executor=None, check_finite: bool = False, **options) -> Callable:
    """jit'd predict function of a model (see the module docstring)."""
    if executor is None:
        if options:
            raise TypeError(f"options {sorted(options)} configure an executor; none was given")
        return jit_predict(graphdef, check_finite=check_finite)
    executor = executors.get(executor, **options)
    compiled = jit_predict(graphdef, executor.forward, check_finite=check_finite)

    def predict(params, batch_stats, images, plan):
        check_plan_values(plan, executor.options)
        return compiled(params, batch_stats, images, plan)

    return predict


__all__ = ["ExecutableCache", "Executor", "StaticExecutor", "SubnetExecutor", "bucketed", "cache",
           "capacities", "check_plan_values", "compile_predict", "cond", "executors",
           "jit_predict", "make_predict_fn", "masked", "persistent_cache_hits", "predict", "static", "switch",
           "use_persistent_cache", "with_finite_check"]
