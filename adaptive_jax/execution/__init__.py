"""Executors: one backbone and one set of weights, run under a block plan (adaptive_jax.plans).

  masked: every block runs, the plan blends block and shortcut; differentiable, the training path.
  cond:   one plan per call (batch 1); skipped blocks do not run.

`make_predict_fn(graphdef, executor)` gives a jit-compiled pure function
(params, batch_stats, images, plan) -> logits in inference mode.
"""

from collections.abc import Callable

import jax
from flax import nnx

from adaptive_jax.execution import cond, masked

EXECUTORS = {"masked": masked.forward, "cond": cond.forward}


def make_predict_fn(graphdef, executor: str) -> Callable:
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {sorted(EXECUTORS)}")
    forward = EXECUTORS[executor]

    def predict(params, batch_stats, images, plan):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return forward(model, images, plan)

    return jax.jit(predict)


__all__ = ["EXECUTORS", "cond", "make_predict_fn", "masked"]
