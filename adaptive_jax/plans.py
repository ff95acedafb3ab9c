"""Plans: what a network runs, as plain data (docs/architecture.md: decide -> plan -> execute).

One kind per decision axis, and one per way a plan reaches an executor:
  * a **block plan**: an array of bools, per sample `(B, L)` or shared by the batch `(L,)`, True =
    execute block l, False = its shortcut. Traced data: one compiled executor serves every plan.
  * an **option plan**: an array of integers of the same shapes, one option per decision unit
    from a menu (`OptionLayout.options`); option 0 is always the skip (the unit's shortcut), the
    others are what the method offers: a bitwidth (DFS), a channel count (ACS), a narrower
    block. A block plan is the option plan of the menu ("skip", "run").
  * **static plans** (`StaticPlan`): one plan as a frozen, hashable value, baked in at trace time,
    keying a cache of compiled executables: `StaticBlockPlan`, `StaticOptionPlan`, and the
    slimmable net's `WidthSubnet` (models.slimmable), a width per stage.

Plans are checked against the layout of the model they are meant for, so a plan made for
ResNet-110 fed to ResNet-38, a plan of 0/1 floats, an option outside the menu or a plan of the
wrong length is an error that names the problem instead of silently running something else.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """The residual blocks a plan addresses: how many in each stage, and of which model."""

    blocks_per_stage: tuple[int, ...]
    model: str = ""

    def __post_init__(self):
        counts = tuple(int(n) for n in self.blocks_per_stage)
        if not counts or min(counts) < 1:
            raise ValueError(f"every stage needs at least one block, got {self.blocks_per_stage}")
        object.__setattr__(self, "blocks_per_stage", counts)

    @classmethod
    def of(cls, spec) -> BlockLayout:
        """The layout of a CIFAR ResNet (`adaptive_jax.models.ResNetSpec`)."""
        return cls((spec.blocks_per_stage,) * len(spec.widths), f"resnet{spec.depth}")

    @property
    def num_blocks(self) -> int:
        return sum(self.blocks_per_stage)

    def stage_slices(self) -> list[slice]:
        """The plan columns of each stage, in order."""
        ends = np.cumsum(self.blocks_per_stage)
        return [slice(int(e - n), int(e)) for n, e in zip(self.blocks_per_stage, ends)]

    def describe(self) -> str:
        stages = "+".join(str(n) for n in self.blocks_per_stage)
        return f"{self.model or 'a model'} ({self.num_blocks} blocks: {stages})"


def as_block_plan(plan):
    """`plan` as an array: a Python list or tuple (of bools or option ints, or rows of them)
    becomes a numpy array; arrays and tracers pass through. The checks then read dtype and shape."""
    if isinstance(plan, (list, tuple)):
        return np.asarray(plan)
    return plan


def check_block_plan(plan, layout: BlockLayout, batch_size: int | None = None):
    """Returns `plan` if it is a valid block plan for `layout`, else raises naming the problem.

    Accepts (L,) (one plan for the whole batch) or (B, L) (one per sample) arrays of bools; works
    on numpy arrays and on jax arrays / tracers alike (only shape and dtype are read).
    """
    shape, dtype = getattr(plan, "shape", None), getattr(plan, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"a block plan is an array of bools, got {type(plan).__name__}")
    if dtype != np.bool_:
        raise TypeError(f"a block plan must have dtype bool (True = run the block), got {dtype}; "
                        "threshold probabilities first, e.g. `probs > 0.5`")
    if len(shape) not in (1, 2):
        raise ValueError(f"a block plan has shape (num_blocks,) or (batch, num_blocks), got {shape}")
    if shape[-1] != layout.num_blocks:
        raise ValueError(f"block plan of shape {tuple(shape)} has {shape[-1]} block bits, but "
                         f"{layout.describe()} needs {layout.num_blocks}")
    if batch_size is not None and len(shape) == 2 and shape[0] != batch_size:
        raise ValueError(f"per-sample block plan has {shape[0]} rows for a batch of {batch_size}")
    return plan


class StaticPlan:
    """A plan fixed at trace time: frozen and hashable (it keys compiled executables), named."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    def check_for(self, layout):
        """This plan, if it was made for `layout`; else an error naming both."""
        if layout != self.layout:
            raise ValueError(f"this plan was made for {self.layout.describe()}, "
                             f"not for {layout.describe()}")
        return self

    @classmethod
    def _concrete(cls, plan, layout, check) -> np.ndarray | StaticPlan:
        """`plan` as one concrete (L,) array checked by `check(array, layout)`, or `plan` itself
        when it is already a static plan of this kind (checked against `layout`)."""
        if isinstance(plan, jax.core.Tracer):
            raise TypeError(f"a {cls.__name__} needs a concrete plan, got a traced value; use a "
                            "traced plan with the masked / cond / bucketed executors")
        if isinstance(plan, cls):
            return plan.check_for(layout)
        array = np.asarray(check(np.asarray(plan), layout))
        if array.ndim != 1:
            raise ValueError(f"a static plan is one plan of shape (num_units,), got {array.shape}")
        return array


@dataclasses.dataclass(frozen=True)
class StaticBlockPlan(StaticPlan):
    """One block plan as a hashable value, for executables compiled per plan."""

    layout: BlockLayout
    active: tuple[bool, ...]

    def __post_init__(self):
        bits = tuple(self.active)
        if not all(isinstance(b, (bool, np.bool_)) for b in bits):
            raise TypeError(f"StaticBlockPlan.active must hold bools, got {bits}")
        if len(bits) != self.layout.num_blocks:
            raise ValueError(f"static plan has {len(bits)} block bits, but "
                             f"{self.layout.describe()} needs {self.layout.num_blocks}")
        object.__setattr__(self, "active", tuple(bool(b) for b in bits))

    @classmethod
    def from_array(cls, plan, layout: BlockLayout) -> StaticBlockPlan:
        """From a concrete (L,) bool array (not a tracer: a static plan is fixed at trace time)."""
        plan = cls._concrete(plan, layout, check_block_plan)
        return plan if isinstance(plan, cls) else cls(layout, tuple(bool(b) for b in plan))

    def to_array(self) -> np.ndarray:
        return np.array(self.active, dtype=bool)

    def active_in_stages(self) -> tuple[tuple[int, ...], ...]:
        """Per stage, the indices (within the stage) of the blocks that run."""
        return tuple(tuple(i for i, on in enumerate(self.active[s]) if on)
                     for s in self.layout.stage_slices())

    @property
    def fraction_active(self) -> float:
        return sum(self.active) / len(self.active)

    @property
    def name(self) -> str:
        return "".join("1" if b else "0" for b in self.active)

    def to_json(self) -> str:
        return json.dumps({"model": self.layout.model,
                           "blocks_per_stage": list(self.layout.blocks_per_stage),
                           "active": "".join("1" if b else "0" for b in self.active)})

    @classmethod
    def from_json(cls, text: str) -> StaticBlockPlan:
        try:
            record = json.loads(text)
            bits = record["active"]
            layout = BlockLayout(tuple(record["blocks_per_stage"]), record.get("model", ""))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a serialised StaticBlockPlan: {text[:80]!r} ({e})") from None
        if set(bits) - {"0", "1"}:
            raise ValueError(f"static plan bits must be a string of 0 and 1, got {bits!r}")
        return cls(layout, tuple(b == "1" for b in bits))


# --- Option plans -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptionLayout:
    """The decision units of a model and the menu of options each unit picks from (option 0 is
    the skip). The menu's meaning lives with the model (`models.options`); here only its names."""

    units: BlockLayout
    options: tuple[str, ...]

    def __post_init__(self):
        options = tuple(str(o) for o in self.options)
        if len(options) < 2:
            raise ValueError(f"an option menu needs the skip and at least one more option, got {options}")
        object.__setattr__(self, "options", options)

    @property
    def num_units(self) -> int:
        return self.units.num_blocks

    @property
    def num_options(self) -> int:
        return len(self.options)

    def describe(self) -> str:
        return f"{self.units.describe()} with options {self.options}"


def check_option_plan(plan, layout: OptionLayout, batch_size: int | None = None):
    """Returns `plan` if it is a valid option plan for `layout`, else raises naming the problem.

    Accepts (L,) or (B, L) integer arrays (numpy, jax arrays, tracers: shape and dtype are read;
    the values too when they are on the host)."""
    shape, dtype = getattr(plan, "shape", None), getattr(plan, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"an option plan is an array of integers, got {type(plan).__name__}")
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise TypeError(f"an option plan holds integer option indices into {layout.options}, got "
                        f"dtype {dtype}" + ("; a bool plan is a block plan (run or skip)"
                                            if dtype == np.bool_ else ""))
    if len(shape) not in (1, 2):
        raise ValueError(f"an option plan has shape (num_units,) or (batch, num_units), got {shape}")
    if shape[-1] != layout.num_units:
        raise ValueError(f"option plan of shape {tuple(shape)} has {shape[-1]} decisions, but "
                         f"{layout.describe()} needs {layout.num_units}")
    if batch_size is not None and len(shape) == 2 and shape[0] != batch_size:
        raise ValueError(f"per-sample option plan has {shape[0]} rows for a batch of {batch_size}")
    if isinstance(plan, np.ndarray) and plan.size:
        low, high = int(plan.min()), int(plan.max())
        if low < 0 or high >= layout.num_options:
            bad = low if low < 0 else high
            raise ValueError(f"option {bad} is not on the menu {layout.options} (0 to "
                             f"{layout.num_options - 1})")
    return plan


@dataclasses.dataclass(frozen=True)
class StaticOptionPlan(StaticPlan):
    """One option plan as a hashable value, for executables compiled per plan."""

    layout: OptionLayout
    choices: tuple[int, ...]

    def __post_init__(self):
        choices = tuple(self.choices)
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))
                   for c in choices):
            raise TypeError(f"StaticOptionPlan.choices must hold integers, got {choices}")
        check_option_plan(np.asarray(choices, np.int64).reshape(len(choices)), self.layout)
        object.__setattr__(self, "choices", tuple(int(c) for c in choices))

    @classmethod
    def from_array(cls, plan, layout: OptionLayout) -> StaticOptionPlan:
        """From a concrete (L,) integer array (not a tracer: a static plan is fixed at trace time)."""
        plan = cls._concrete(plan, layout, check_option_plan)
        return plan if isinstance(plan, cls) else cls(layout, tuple(int(c) for c in plan))

    def to_array(self) -> np.ndarray:
        return np.array(self.choices, dtype=np.int32)

    @property
    def name(self) -> str:
        return "-".join(str(c) for c in self.choices)
