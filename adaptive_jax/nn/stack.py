"""Stacked modules: n modules of one shape held as one module whose every variable has a leading
axis of n, and the two ways to run them (docs/architecture.md, "the walk").

- `scan`: every module of one or more stacks in order, under `lax.scan`, batch statistics written
  back in training. A scan over identical blocks compiles ~7x faster than a flat graph of
  ResNet-110 and runs as fast (docs/design.md); training may unroll it (see `models.resnet`).
- `loop_over`: only the modules at some indices, in a `fori_loop` whose trip count is traced; each
  module's weights are picked from the stack by a dynamic index. A skipped module then costs
  nothing at all, where a skipped `lax.cond` inside a scan costs ~10 us on CPU (docs/design.md).
  Inference only: a loop with a traced trip count has no reverse-mode gradient.

Everything that walks stacked blocks (the backbone, executors, per-block gates, cost) goes
through these two functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
    """One module like `modules[0]` whose every variable gains a leading axis over `modules`."""
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.split(m)[1] for m in modules]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def _index(leaf, i):
    # abstract modules (nnx.eval_shape) hold ShapeDtypeStructs, which cannot be indexed
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[i]


def module_at(stack: nnx.Module, index) -> nnx.Module:
    """The module at `index` (a Python int or a traced index) of a stack."""
    graphdef, state = nnx.split(stack)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: _index(leaf, index), state))


ScanStep = Callable[[tuple, jax.Array, object], tuple[jax.Array, object]]


def scan(stacks: Sequence[nnx.Module], step: ScanStep, carry: jax.Array, xs=None, *,
         length: int | None = None, training: bool = False, unroll: bool = False):
    """`step(modules, carry, x) -> (carry, y)` over the modules of `stacks` in lockstep.

    `stacks`: stacked modules of equal length (a stage's blocks and, say, their gates); `step`
    gets one module of each, as a tuple. `xs`: a pytree with the same leading axis (or None with
    `length`). Returns (carry, ys stacked). `training`: every module's batch statistics, as the
    steps leave them, are written back to the stacks.
    """
    splits = [nnx.split(stack) for stack in stacks]

    def body(carry, inputs):
        states, x = inputs
        modules = tuple(nnx.merge(graphdef, state) for (graphdef, _), state in zip(splits, states))
        carry, y = step(modules, carry, x)
        stats = tuple(nnx.state(m, nnx.BatchStat) for m in modules) if training else None
        return carry, (y, stats)

    carry, (ys, stats) = jax.lax.scan(body, carry, (tuple(s for _, s in splits), xs),
                                      length=length, unroll=unroll)
    if training:
        for stack, new in zip(stacks, stats):
            nnx.update(stack, new)
    return carry, ys


def loop_over(stack: nnx.Module, indices: jax.Array, count: jax.Array,
              step: Callable[[nnx.Module, jax.Array, jax.Array], jax.Array],
              carry: jax.Array) -> jax.Array:
    """`step(module, carry, index)` for the first `count` of `indices` (traced), in that order."""
    graphdef, state = nnx.split(stack)

    def body(i, carry):
        index = indices[i]
        # jnp.asarray: a leaf may be a numpy array (weights a user set from numpy), which a
        # traced index cannot index
        module = nnx.merge(graphdef, jax.tree.map(lambda leaf: jnp.asarray(leaf)[index], state))
        return step(module, carry, index)

    return jax.lax.fori_loop(0, count, body, carry)
