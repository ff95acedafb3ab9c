"""Serving static plans: one AOT-compiled executable per plan, from a bounded LRU cache.

`StaticExecutor(graphdef, params, batch_stats, options=...)`: `executor(images, plan)` runs the
plan through the static executor (`executors.static`: the plan is a constant of the executable,
so XLA folds its decisions away), compiling each (plan, input shape) once. Plans are
`StaticBlockPlan`s, `StaticOptionPlan`s, or concrete (L,) arrays / lists that become them (the
same cache entry).
"""

from __future__ import annotations

import jax
from flax import nnx

from adaptive_jax.execution.cache import ExecutableCache
from adaptive_jax.execution.predict import compile_predict
from adaptive_jax.execution.executors import static, static_plan
from adaptive_jax.models.options import RUN_OR_SKIP, UnitOptions
from adaptive_jax.models.resnet import check_finite_images


class StaticExecutor(ExecutableCache):
    """`executor(images, plan)`: logits from per-plan executables in an LRU cache."""

    def __init__(self, graphdef, params, batch_stats, max_executables: int = 16,
                 check_finite: bool = False, options: UnitOptions = RUN_OR_SKIP):
        super().__init__(max_executables, check_finite)
        self.graphdef = graphdef
        self.params, self.batch_stats = params, batch_stats
        self.options = options
        self.layout = nnx.merge(graphdef, params, batch_stats).layout
        self._forward = static(options).forward

    def executable(self, plan, images_shape: tuple[int, ...]):
        """`plan`: a static plan, or a (num_blocks,) array or list (made into one)."""
        return super().executable(static_plan(self.layout, self.options, plan), images_shape)

    def _compile(self, plan, images_shape: tuple[int, ...]):
        return compile_predict(self.graphdef, self.params, self.batch_stats, images_shape,
                               lambda model, images: self._forward(model, images, plan))

    def __call__(self, images, plan) -> jax.Array:
        if self.check_finite:
            check_finite_images(images)
        return self.executable(plan, tuple(images.shape))(self.params, self.batch_stats, images)
