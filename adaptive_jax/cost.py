"""Analytic compute cost: MACs, FLOPs (= 2 x MACs) and parameters.

MACs are counted from the jaxpr of the function itself, not from a hand-kept table: every
`conv_general_dilated` and `dot_general` contributes (output elements) x (contraction size), and
`scan` bodies count once per iteration. So any model, and later any plan's executable, is priced
by what it actually computes. Normalisation, activations, pooling and additions are not MACs
(the convention of SkipNet, BlockDrop and OFA, docs/methods.md 1.2); FLOPs here are exactly 2 x MACs.

`xla_flops` reads XLA's own `cost_analysis()` of the compiled function as an independent cross-check.

Plans are priced per decision unit and option (`unit_costs` -> `PlanCosts`): MACs of each unit
under each option of a menu, and BitOPs (bits_w x bits_a x MACs) for options at lower precision.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax.models.options import RUN_OR_SKIP


@dataclasses.dataclass(frozen=True)
class Cost:
    macs: int
    params: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _valid_taps(size: int, kernel: int, stride: int, pad_lo: int, out: int) -> int:
    """Sum over output positions of the kernel taps that land inside the (unpadded) input."""
    total = 0
    for o in range(out):
        start = o * stride - pad_lo
        total += max(0, min(kernel, size - start) - max(0, -start))
    return total


def _conv_macs(eqn, count_padding: bool = True) -> int:
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    # rhs spec: (out_feature_dim, in_feature_dim, *spatial_dims); the in-feature dim is already
    # in_channels / groups, which is what each output element sums over.
    rhs_in = rhs.shape[dn.rhs_spec[1]]
    out_channels = out.shape[dn.out_spec[1]]
    batch = out.shape[dn.out_spec[0]]
    if count_padding:
        return int(math.prod(out.shape)) * rhs_in * math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
    if any(d != 1 for d in eqn.params["lhs_dilation"] + eqn.params["rhs_dilation"]):
        raise NotImplementedError("count_padding=False supports undilated convolutions only")
    taps = 1
    for i, (lo, _) in enumerate(eqn.params["padding"]):
        taps *= _valid_taps(lhs.shape[dn.lhs_spec[2 + i]], rhs.shape[dn.rhs_spec[2 + i]],
                            eqn.params["window_strides"][i], lo, out.shape[dn.out_spec[2 + i]])
    return batch * out_channels * rhs_in * taps


def _dot_macs(eqn) -> int:
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contraction = math.prod(lhs.shape[d] for d in lhs_contract)
    return int(math.prod(eqn.outvars[0].aval.shape)) * contraction


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def jaxpr_macs(jaxpr, count_padding: bool = True) -> int:
    """MACs of one evaluation of `jaxpr` (a Jaxpr or ClosedJaxpr).

    count_padding=True is the papers' convention (every output sums over the full kernel window);
    False leaves out taps that fall on zero padding, as XLA's cost analysis does.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_macs(eqn, count_padding)
        elif name == "dot_general":
            total += _dot_macs(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_macs(eqn.params["jaxpr"], count_padding)
        elif name in ("cond", "switch"):
            # A branch that runs is data dependent; price the dearest one (an upper bound).
            total += max(jaxpr_macs(b, count_padding) for b in eqn.params["branches"])
        elif name == "while":
            raise NotImplementedError(
                "MACs of a while loop depend on its trip count; price the plan instead")
        else:
            total += sum(jaxpr_macs(sub, count_padding) for sub in _sub_jaxprs(eqn))
    return total


def function_macs(fn: Callable, *args, count_padding: bool = True) -> int:
    """MACs of `fn(*args)`; args may be arrays or `jax.ShapeDtypeStruct`s."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args), count_padding)


def param_count(model: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def model_cost(model: nnx.Module, input_shape: tuple[int, ...] = (1, 32, 32, 3)) -> Cost:
    """Per-example MACs (inference, batch statistics frozen) and parameters of `model`."""
    graphdef, state = nnx.split(model)

    def forward(state, images):
        m = nnx.merge(graphdef, state)
        m.eval()
        return m(images)

    images = jax.ShapeDtypeStruct(input_shape, np.float32)
    macs = function_macs(forward, state, images)
    return Cost(macs=macs // input_shape[0], params=param_count(model))


def xla_flops(fn: Callable, *args) -> float:
    """FLOPs that XLA's cost analysis reports for the compiled `fn(*args)`.

    XLA counts a multiply-add as 2 FLOPs and also counts elementwise work (BN, ReLU, adds), so it
    sits a few percent above `2 x MACs`; that gap is what the cross-check test bounds.
    """
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


@dataclasses.dataclass(frozen=True)
class PlanCosts:
    """Per-example cost of every decision unit under every option of a menu, for pricing plans.

    base_macs: stem and classifier (always run); option_macs[l][k]: unit l under option k (option
    0, the skip: its shortcut, 0 or a transition's 1x1 projection); option_bits[k]: the (weight,
    activation) bitwidths option k computes at (BitOPs = bits_w x bits_a x MACs; the base at
    32 x 32); policy_macs: a policy that plans every input (the OFAS head), in every plan's MACs.
    A block plan is the option plan of the menu ("skip", "run"): `run_macs` / `skip_macs`.
    """

    base_macs: int
    option_macs: tuple[tuple[int, ...], ...]
    policy_macs: int = 0
    options: tuple[str, ...] = ("skip", "run")
    option_bits: tuple[tuple[int, int], ...] | None = None  # None: 32 x 32 for every option

    def __post_init__(self):
        if any(len(row) != len(self.options) for row in self.option_macs):
            raise ValueError(f"every unit needs a cost for each of the {len(self.options)} options")
        if self.option_bits is None:
            object.__setattr__(self, "option_bits", ((32, 32),) * len(self.options))

    @property
    def num_units(self) -> int:
        return len(self.option_macs)

    @property
    def run_macs(self) -> tuple[int, ...]:
        """Each unit at its last (fullest) option: the whole block."""
        return tuple(row[-1] for row in self.option_macs)

    @property
    def skip_macs(self) -> tuple[int, ...]:
        return tuple(row[0] for row in self.option_macs)

    @property
    def full_macs(self) -> int:
        """The plain backbone, every unit at its fullest option and no policy."""
        return self.base_macs + sum(self.run_macs)

    def _choices(self, plan) -> np.ndarray:
        plan = np.asarray(plan)
        if plan.shape[-1:] != (self.num_units,):
            raise ValueError(f"expected a bool plan of {self.num_units} blocks (or an option plan "
                             f"of {self.num_units} units), got {plan.dtype} {plan.shape}")
        if plan.dtype == np.bool_:
            if len(self.options) != 2:
                raise TypeError(f"a bool block plan prices a two-option menu, not {self.options}; "
                                "give an integer option plan")
            return plan.astype(np.int64)
        if not np.issubdtype(plan.dtype, np.integer):
            raise TypeError(f"expected a bool block plan or an integer option plan, got {plan.dtype}")
        if plan.size and (plan.min() < 0 or plan.max() >= len(self.options)):
            raise ValueError(f"options must be in 0..{len(self.options) - 1} ({self.options}), "
                             f"got {plan.min()}..{plan.max()}")
        return plan

    def _chosen(self, table: np.ndarray, plan) -> np.ndarray:
        """Sum over units of table[unit, chosen option], per sample."""
        choices = self._choices(plan)
        per_unit = np.take_along_axis(np.broadcast_to(table, choices.shape + table.shape[-1:]),
                                      choices[..., None], -1)[..., 0]
        return per_unit.sum(-1)

    def plan_macs(self, plan) -> np.ndarray:
        """MACs per example of a (L,) or (B, L) plan (bools or option ints): a scalar or one per
        sample."""
        return self.base_macs + self.policy_macs + self._chosen(np.asarray(self.option_macs), plan)

    def plan_bitops(self, plan) -> np.ndarray:
        """BitOPs per example: sum over units of bits_w x bits_a x MACs of the chosen option, the
        stem, classifier and policy at 32 x 32."""
        scale = np.asarray([w * a for w, a in self.option_bits])
        return ((self.base_macs + self.policy_macs) * 32 * 32
                + self._chosen(np.asarray(self.option_macs) * scale, plan))

    def block_fraction(self, plan) -> np.ndarray:
        """The share of the units' full MACs a plan spends (stem, head and policy left out)."""
        return (self.plan_macs(plan) - self.base_macs - self.policy_macs) / sum(self.run_macs)

    def plan_macs_jnp(self, plan: jax.Array) -> jax.Array:
        """`plan_macs` of a block plan inside a compiled function (float32 per sample; exact below
        2**24 MACs per block, and the sum's rounding is far below a block's MACs)."""
        per_block = jnp.where(plan, jnp.asarray(self.run_macs, jnp.float32),
                              jnp.asarray(self.skip_macs, jnp.float32))
        return self.base_macs + self.policy_macs + per_block.sum(-1)


BlockCosts = PlanCosts  # the costs of a block plan: the menu ("skip", "run")


def _macs_and_shape(module: nnx.Module, run: Callable, x):
    """MACs and output shape of `run(module, x)` in inference mode."""
    graphdef, state = nnx.split(module)

    def call(state, x):
        m = nnx.merge(graphdef, state)
        m.eval()
        return run(m, x)

    return function_macs(call, state, x), jax.eval_shape(call, state, x)


def unit_costs(backbone: nnx.Module, options=None, *, policy: nnx.Module | None = None,
               input_shape: tuple[int, ...] = (1, 32, 32, 3)) -> PlanCosts:
    """The one entry point for pricing plans: MACs of each part of `backbone` (stem, each decision
    unit under each option of the menu `options`, default run-or-skip, classifier), each counted
    from the jaxpr of that part; `policy`: a module reading the stem's output that plans every
    input (the OFAS head), priced too."""
    options = RUN_OR_SKIP if options is None else options
    if not all(hasattr(backbone, a) for a in ("stem", "units", "classify")):
        raise TypeError(f"unit_costs prices a backbone (stem, units, classify: a CifarResNet), not "
                        f"{type(backbone).__name__}; for a method, price its backbone and pass "
                        "its policy (e.g. `OFASNet.costs()`)")
    per = input_shape[0]
    x = jax.ShapeDtypeStruct(input_shape, np.float32)
    base, x = _macs_and_shape(backbone, lambda m, x: m.stem(x), x)
    policy_macs = 0
    if policy is not None:
        policy_macs = _macs_and_shape(policy, lambda m, x: m(x), x)[0] // per
    rows = []
    for block in backbone.units():
        row = [_macs_and_shape(block, lambda m, x: m.shortcut(x), x)[0] // per]
        for k in range(1, options.num_options):
            macs, out = _macs_and_shape(
                block, lambda m, x, k=k: options.apply(m, x, k, m.shortcut(x)), x)
            row.append(macs // per)
        rows.append(tuple(row))
        x = out
    base += _macs_and_shape(backbone, lambda m, x: m.classify(x), x)[0]
    bits = tuple(options.bits(k) for k in range(options.num_options))
    return PlanCosts(base // per, tuple(rows), policy_macs, options.names, bits)


def block_costs(backbone: nnx.Module, input_shape: tuple[int, ...] = (1, 32, 32, 3), *,
                policy: nnx.Module | None = None) -> BlockCosts:
    """`unit_costs` for block plans (run or skip)."""
    return unit_costs(backbone, policy=policy, input_shape=input_shape)
