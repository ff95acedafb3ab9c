"""Executors: execution modes as named values of pure functions (docs/architecture.md).

An `Executor` is to a plan what optax's `GradientTransformation` is to gradients: a small named
tuple of pure functions, made by a constructor that takes the mode's options. Every mode runs
any backbone that follows the protocol of `models.resnet.CifarResNet` (stem, `walk`,
`walk_active`, classify) under a block plan (bools) or an option plan (ints into the menu
`options`, `models.options`); none of them knows how a backbone stacks its blocks.

  masked(options)    every option of every block runs on every row, mixed by the plan (bools,
                     ints, or float gates / option weights); differentiable: the training path.
                     Saves no time at all.
  cond(options)      one plan for the call (batch 1, or a batch sharing its plan): an inactive
                     block does not run; an active one runs its option through `lax.switch`
                     (`switch` is the same mode). Inference only.
  bucketed(buckets, options)
                     one plan per sample: per block and option, the rows that chose it are
                     gathered to a capacity from a menu of multiples of B / `buckets`, run, and
                     scattered back over the shortcut. Inference only.
  static(options)    a static plan (`plans.StaticBlockPlan` / `StaticOptionPlan`) baked in at
                     trace time through the cond walk: XLA folds the decisions away.
                     `execution.StaticExecutor` keeps one compiled executable per plan.

`executor.forward(model, images, plan)` -> logits; `executor.run_units(model, features, plan)`
runs the blocks only (a policy that reads the stem's output plans in between).

`block_by_block(model, features, companions, decide)` is the mode of a decider that decides as
the walk goes (per-block gates), where no plan exists before the blocks run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptive_jax.config import check_count
from adaptive_jax.models.options import RUN_OR_SKIP, UnitOptions
from adaptive_jax.models.resnet import check_images
from adaptive_jax.plans import (BlockLayout, OptionLayout, StaticBlockPlan, StaticOptionPlan, as_block_plan,
                                check_block_plan, check_option_plan)

DEFAULT_BUCKETS = 8


class Executor(NamedTuple):
    """One execution mode. `run_units(model, features, plan) -> features` is pure."""

    name: str
    run_units: Callable
    options: UnitOptions
    differentiable: bool  # trains through the plan (masked) or inference only
    per_sample: bool      # takes (B, L) plans, one per row

    def forward(self, model, images: jax.Array, plan) -> jax.Array:
        """Logits of `model` on `images` under `plan`."""
        check_images(images, model.spec.in_channels)
        return model.classify(self.run_units(model, model.stem(images), plan))


# --- plans as the executors read them ---------------------------------------------------------


def _layout(model, options: UnitOptions) -> OptionLayout:
    return OptionLayout(model.layout, options.names)


def _check_plan(model, options: UnitOptions, plan, batch: int, soft: bool = False):
    """`plan` checked for `model` and the menu; returns (plan, kind): kind "block" (bools, or
    float gates when `soft`), "option" (ints) or "weights" (float option weights (..., L, K))."""
    plan = as_block_plan(plan)
    dtype = getattr(plan, "dtype", None)
    if dtype is not None and soft and jnp.issubdtype(dtype, jnp.floating):
        if options.num_options > 2 and plan.ndim >= 2 and plan.shape[-1] == options.num_options:
            shape = plan.shape[:-1]
            check_option_plan(jax.ShapeDtypeStruct(shape, jnp.int32), _layout(model, options), batch)
            return plan, "weights"
        if options.num_options != 2:
            raise ValueError(f"float gates blend a block with its shortcut; this menu has "
                             f"{options.num_options} options {options.names}: give option "
                             f"weights of shape (batch, units, {options.num_options})")
        check_block_plan(jax.ShapeDtypeStruct(plan.shape, jnp.bool_), model.layout, batch)
        return plan, "block"
    if dtype == np.bool_:
        if options.num_options != 2:
            raise TypeError(f"a bool block plan runs a block fully or not at all, but this "
                            f"executor's menu has {options.num_options} options {options.names}: "
                            "give an integer option plan")
        return check_block_plan(plan, model.layout, batch), "block"
    if dtype is not None and jnp.issubdtype(dtype, jnp.integer):
        return check_option_plan(plan, _layout(model, options), batch), "option"
    # anything else: the block-plan check names the problem
    return check_block_plan(plan, model.layout, batch), "block"


def _check_inference(model, name: str) -> None:
    if model.training:
        raise ValueError(f"the {name} executor is for inference: call model.eval() first "
                         "(training uses the masked executor)")


def _shared(plan: jax.Array, name: str) -> jax.Array:
    if plan.ndim == 2 and plan.shape[0] != 1:
        raise ValueError(f"the {name} executor runs one plan per call, got per-sample plans for "
                         f"{plan.shape[0]} samples; use a plan of shape (num_blocks,) shared by "
                         "the batch, or the bucketed executor")
    return plan.reshape(plan.shape[-1:])


def _units_first(plan: jax.Array, kind: str) -> jax.Array:
    """The unit axis moved to the front, as `walk` takes per-unit inputs."""
    return jnp.moveaxis(plan, -2 if kind == "weights" else -1, 0)


# --- masked ---------------------------------------------------------------------------------


def masked(options: UnitOptions = RUN_OR_SKIP) -> Executor:
    """Every option runs on every row; the plan (or soft weights) mixes them. Differentiable."""

    def run_units(model, features, plan):
        plan, kind = _check_plan(model, options, plan, features.shape[0], soft=True)
        if kind == "block":  # gates g: weights (1 - g, g) over (skip, run)
            gates = plan.astype(features.dtype)
            weights = jnp.stack([1 - gates, gates], axis=-1)
        elif kind == "option":
            weights = jax.nn.one_hot(plan, options.num_options, dtype=features.dtype)
        else:
            weights = plan

        def step(modules, h, unit_weights):
            return options.blend(modules[0], h, unit_weights), None

        x, _ = model.walk(features, step, per_unit=_units_first(weights, "weights"))
        return x

    return Executor("masked", run_units, options, differentiable=True, per_sample=True)


# --- cond / switch ----------------------------------------------------------------------------


def _run_option(options: UnitOptions):
    """step(block, h, option) running `option` (traced, >= 1) by `lax.switch` over the menu."""
    if options.num_options == 2:  # one way to run: no switch at all
        return lambda block, h, _: options.apply(block, h, 1, block.shortcut(h))

    def step(block, h, option):
        branches = [lambda h, k=k: options.apply(block, h, k, block.shortcut(h))
                    for k in range(1, options.num_options)]
        return jax.lax.switch(option - 1, branches, h)

    return step


def _cond_units(model, features, plan, options: UnitOptions, name: str):
    _check_inference(model, name)
    plan, kind = _check_plan(model, options, plan, features.shape[0])
    plan = _shared(jnp.asarray(plan), name)
    active = plan if kind == "block" else plan > 0
    return model.walk_active(features, active, _run_option(options), per_unit=plan)


def cond(options: UnitOptions = RUN_OR_SKIP) -> Executor:
    """One plan per call; inactive blocks do not run, active ones run their option."""
    return Executor("cond", lambda model, features, plan: _cond_units(model, features, plan,
                                                                      options, "cond"),
                    options, differentiable=False, per_sample=False)


switch = cond


# --- bucketed ---------------------------------------------------------------------------------


def capacities(batch: int, buckets: int) -> tuple[int, ...]:
    """The static row capacities a block may run at: multiples of batch / buckets, up to batch."""
    check_count("buckets", buckets, meaning="how many row capacities a block may run at")
    if batch % buckets:
        raise ValueError(f"batch {batch} is not a multiple of buckets={buckets}; "
                         f"pad the batch or choose buckets dividing it")
    step = batch // buckets
    return tuple(step * k for k in range(1, buckets + 1))


def _on_rows(run: Callable, x: jax.Array, shortcut: jax.Array, out: jax.Array, rows_on: jax.Array,
             caps: tuple[int, ...]) -> jax.Array:
    """`out` with the rows in `rows_on` replaced by `run(x[rows], shortcut[rows])`.

    The rows are gathered (active first, in batch order) to the smallest capacity that holds
    them, picked at run time by `lax.switch` among one compiled branch per capacity, one for no
    row (nothing runs) and one for every row (the batch as it is: no gather or scatter)."""
    batch = x.shape[0]
    order = jnp.argsort(~rows_on, stable=True)
    count = rows_on.sum()

    def at_capacity(capacity):
        def branch(x, shortcut, out):
            rows = order[:capacity]
            y = run(x[rows], shortcut[rows])
            keep = rows_on[rows].reshape((capacity,) + (1,) * (y.ndim - 1))
            return out.at[rows].set(jnp.where(keep, y, out[rows]))
        return branch

    branches = ([lambda x, shortcut, out: out] + [at_capacity(c) for c in caps]
                + [lambda x, shortcut, out: run(x, shortcut)])
    index = (count + caps[0] - 1) // caps[0]  # 0 when no row runs
    index = jnp.where(count == batch, len(caps) + 1, index)
    return jax.lax.switch(index, branches, x, shortcut, out)


def _options_on_rows(options: UnitOptions, block, h: jax.Array, choice: jax.Array,
                     caps: tuple[int, ...], kind: str = "option") -> jax.Array:
    """One block under per-row choices (B,): each option runs on the rows that chose it only."""
    shortcut = block.shortcut(h)
    out = shortcut
    for k in range(1, options.num_options):
        rows_on = choice if kind == "block" else choice == k
        out = _on_rows(lambda xs, ss, k=k: options.apply(block, xs, k, ss), h, shortcut,
                       out, rows_on, caps)
    return out


def bucketed(buckets: int = DEFAULT_BUCKETS, options: UnitOptions = RUN_OR_SKIP) -> Executor:
    """Per-sample plans; each block (and each of its options) runs on the rows that chose it.

    docs/design.md measured capacities in multiples of B/8 at 0.76-0.86 of the ideal speedup, and
    power-of-two capacities at 0.65-0.75; a finer menu (`buckets=32`) comes closer to the ideal
    and takes longer to compile. Never `vmap` over `lax.cond` instead: both branches would run
    for every row."""
    check_count("buckets", buckets, meaning="how many row capacities a block may run at")

    def run_units(model, features, plan):
        _check_inference(model, "bucketed")
        caps = capacities(features.shape[0], buckets)
        plan, kind = _check_plan(model, options, plan, features.shape[0])
        plan = jnp.broadcast_to(plan, features.shape[:1] + plan.shape[-1:])

        def step(modules, h, choice):
            return _options_on_rows(options, modules[0], h, choice, caps, kind), None

        x, _ = model.walk(features, step, per_unit=_units_first(plan, kind))
        return x

    return Executor("bucketed", run_units, options, differentiable=False, per_sample=True)


# --- block by block ---------------------------------------------------------------------------


def block_by_block(model, features, companions, decide: Callable,
                   options: UnitOptions = RUN_OR_SKIP, state=None, buckets: int = DEFAULT_BUCKETS):
    """The block-by-block decider mode (per-block gates; DFS's recurrent gate): the plan is not
    known up front, each block's decision is made on that block's input, as the walk reaches it.

    `companions`: per stage, modules walking in lockstep with the blocks (`first`, stacked
    `rest`: the gates); `decide(companion, h)` returns the block's decision, and its form says
    how the block runs: a shared scalar bool (or option int) runs only what it picks (`lax.cond`
    / `lax.switch`: batch 1 in inference); per-row option ints (B,) run each option on the rows
    that chose it (gathered to a capacity from `buckets` multiples of B / buckets, as the
    bucketed executor; inference); a per-row float gate (B,) or option weights (B, K) blends the
    options (training, or a batch). A recurrent decider carries `state` from block to
    block: with `state` given, `decide(companion, h, state) -> (decision, state)`.
    Returns (features, decisions with a leading unit axis), and the last state when one is given.
    """
    run_option = _run_option(options)
    recurrent = state is not None

    def step(modules, carry, _):
        block, companion = modules
        h, carried = carry if recurrent else (carry, None)
        if recurrent:
            decision, carried = decide(companion, h, carried)
        else:
            decision = decide(companion, h)
        if decision.ndim == 0 and decision.dtype == jnp.bool_:
            h = jax.lax.cond(decision, lambda h: run_option(block, h, 1), block.shortcut, h)
        elif decision.ndim == 0 and jnp.issubdtype(decision.dtype, jnp.integer):
            h = jax.lax.cond(decision > 0, lambda h: run_option(block, h, decision),
                             block.shortcut, h)
        elif decision.ndim == 1 and jnp.issubdtype(decision.dtype, jnp.integer):
            _check_inference(model, "block-by-block (per-row options)")
            caps = capacities(h.shape[0], math.gcd(h.shape[0], buckets))
            h = _options_on_rows(options, block, h, decision, caps)
        else:
            if options.num_options == 2 and decision.shape[-1:] != (2,):
                weights = jnp.stack([1 - decision, decision], axis=-1)
            else:
                weights = decision
            h = options.blend(block, h, weights)
        return ((h, carried) if recurrent else h), decision

    if not recurrent:
        return model.walk(features, step, companions=companions)
    (x, state), decisions = model.walk((features, state), step, companions=companions)
    return x, decisions, state


# --- static -----------------------------------------------------------------------------------


def static_plan(layout: BlockLayout, options: UnitOptions, plan):
    """`plan` (a static plan, or a concrete (L,) array / list) as the static plan it keys, for a
    model of `layout` and the menu `options`: a bool plan is a `StaticBlockPlan` (menus of two
    options), an integer one a `StaticOptionPlan`."""
    option_layout = OptionLayout(layout, options.names)
    if isinstance(plan, StaticBlockPlan):
        if options.num_options != 2:
            raise TypeError(f"a StaticBlockPlan runs blocks fully or not at all, but the menu has "
                            f"{options.num_options} options {options.names}: give a StaticOptionPlan")
        return plan.check_for(layout)
    if isinstance(plan, StaticOptionPlan):
        return plan.check_for(option_layout)
    if isinstance(plan, jax.core.Tracer):
        raise TypeError("a static plan needs a concrete plan, got a traced value; use a traced "
                        "plan with the masked / cond / bucketed executors")
    array = np.asarray(as_block_plan(plan))
    if array.dtype == np.bool_:
        if options.num_options != 2:
            raise TypeError(f"a bool block plan runs a block fully or not at all, but this "
                            f"executor's menu has {options.num_options} options {options.names}: "
                            "give an integer option plan")
        return StaticBlockPlan.from_array(array, layout)
    return StaticOptionPlan.from_array(array, option_layout)


def static(options: UnitOptions = RUN_OR_SKIP) -> Executor:
    """A static plan baked in at trace time, through the cond walk: XLA folds each stage's first
    decision and the loops' trip counts, while the stacked blocks keep their loop (a flat graph
    of only the active blocks ran 12.1 ms against 11.0 ms for this form: ResNet-110, batch 1,
    50 % active, one core, measured when the static executor was built; docs/design.md found
    looped stages 13-23 % faster than flat graphs too)."""

    def run_units(model, features, plan):
        plan = static_plan(model.layout, options, plan)
        return _cond_units(model, features, jnp.asarray(plan.to_array()), options, "static")

    return Executor("static", run_units, options, differentiable=False, per_sample=False)


def check_plan_values(plan, options: UnitOptions) -> None:
    """On the host, before a compiled call: every option of an integer plan is on the menu.
    (Inside a compiled function an option off the menu cannot raise; `lax.switch` would clamp
    it, so compiled predict functions check their plan arguments here first.)"""
    if isinstance(plan, (list, tuple)):
        plan = np.asarray(plan)
    if isinstance(plan, jax.core.Tracer) or not hasattr(plan, "dtype"):
        return
    if plan.dtype == np.bool_ or not np.issubdtype(plan.dtype, np.integer) or not plan.size:
        return
    plan = np.asarray(plan)
    low, high = int(plan.min()), int(plan.max())
    if low < 0 or high >= options.num_options:
        raise ValueError(f"option {low if low < 0 else high} is not on the menu {options.names} "
                         f"(0 to {options.num_options - 1})")


BY_NAME = {"masked": masked, "cond": cond, "switch": cond, "bucketed": bucketed, "static": static}


def get(executor, **options) -> Executor:
    """An `Executor`, or the name of one ("masked", "cond", "switch", "bucketed", "static") with
    its constructor's options (e.g. `get("bucketed", buckets=32)`)."""
    if isinstance(executor, Executor):
        if options:
            raise TypeError(f"options {sorted(options)} go to the executor's constructor, "
                            f"not with an executor already made ({executor.name})")
        return executor
    if executor not in BY_NAME:
        raise ValueError(f"unknown executor {executor!r}; expected one of {sorted(BY_NAME)}")
    return BY_NAME[executor](**options)
