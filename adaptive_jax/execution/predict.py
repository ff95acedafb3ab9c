"""Compiling predict functions: the one place a model becomes a pure, compiled function.

`nnx.jit` costs milliseconds of Python per call (docs/design.md), so latency-critical paths split
the model once (graphdef, params, batch statistics) and compile a pure function of the state:
`pure_predict` builds it (merge, inference mode, `call(model, images, *args)`), `jit_predict`
jit-compiles it and `compile_predict` compiles it ahead of time for one input shape (what the
executable caches hold).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from adaptive_jax.models.resnet import check_finite_images


def _call_model(model, images):
    return model(images)


def pure_predict(graphdef, call: Callable = _call_model) -> Callable:
    """(params, batch_stats, images, *args) -> call(model, images, *args), in inference mode."""

    def predict(params, batch_stats, images, *args):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        return call(model, images, *args)

    return predict


def with_finite_check(fn: Callable, images_arg: int = 2) -> Callable:
    """`fn` that first refuses non-finite images (its positional argument `images_arg`)."""

    def checked(*args):
        check_finite_images(args[images_arg])
        return fn(*args)

    return checked


def jit_predict(graphdef, call: Callable = _call_model, check_finite: bool = False) -> Callable:
    """jit'd (params, batch_stats, images, *args) -> `call(model, images, *args)`.
    `check_finite=True`: NaN / inf pixels are an error (a reduction and a host sync per call)."""
    compiled = jax.jit(pure_predict(graphdef, call))
    return with_finite_check(compiled) if check_finite else compiled


def compile_predict(graphdef, params, batch_stats, images_shape: tuple[int, ...],
                    call: Callable = _call_model):
    """`call` compiled ahead of time for float32 images of `images_shape`: an executable of
    (params, batch_stats, images)."""
    images = jax.ShapeDtypeStruct(tuple(images_shape), np.float32)
    return jax.jit(pure_predict(graphdef, call)).lower(params, batch_stats, images).compile()
