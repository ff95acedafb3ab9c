"""Compiled inference of a trained model: a pure function of (state, images) under `jax.jit`.

`nnx.jit` costs milliseconds of Python per call (docs/design.md), so latency-critical paths split the
model once and jit a pure function instead.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from adaptive_jax.execution import with_finite_check


def make_predict_fn(graphdef, check_finite: bool = False) -> Callable:
    """jit'd (params, batch_stats, float images) -> logits, in inference mode (running BN stats).
    `check_finite=True`: NaN / inf pixels are an error (a reduction per call)."""

    def predict(params, batch_stats, images):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return model(images)

    return with_finite_check(jax.jit(predict), 2) if check_finite else jax.jit(predict)


def make_ofas_predictors(graphdef, executor: str = "cond",
                         check_finite: bool = False) -> tuple[Callable, Callable]:
    """jit'd (params, batch_stats, images) -> logits of an OFAS model: its own plans run by
    `executor` ("cond" at batch 1, "bucketed" for a batch), and the full backbone (every block).
    `check_finite=True`: both refuse NaN / inf pixels (a reduction per call)."""

    def planned(params, batch_stats, images):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return model.predict(images, executor)[0]

    def full(params, batch_stats, images):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return model.backbone(images)

    if check_finite:
        return with_finite_check(jax.jit(planned), 2), with_finite_check(jax.jit(full), 2)
    return jax.jit(planned), jax.jit(full)
