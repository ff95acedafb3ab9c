"""Analytic compute cost: MACs, FLOPs (= 2 x MACs) and parameters.

MACs are counted from the jaxpr of the function itself, not from a hand-kept table: every
`conv_general_dilated` and `dot_general` contributes (output elements) x (contraction size), and
`scan` bodies count once per iteration. So any model, and later any plan's executable, is priced
by what it actually computes. Normalisation, activations, pooling and additions are not MACs
(the convention of SkipNet, BlockDrop and OFA, docs/methods.md 1.2); FLOPs here are exactly 2 x MACs.

`xla_flops` reads XLA's own `cost_analysis()` of the compiled function as an independent cross-check.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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
class BlockCosts:
    """Per-example MACs of a block-skipping ResNet, for pricing block plans.

    base_macs: stem and classifier (always run); run_macs[l]: block l when it runs; skip_macs[l]:
    block l when skipped (its shortcut: 0, or the 1x1 projection of a stage transition);
    policy_macs: a policy that plans every input (the OFAS head), counted in every plan's MACs.
    """

    base_macs: int
    run_macs: tuple[int, ...]
    skip_macs: tuple[int, ...]
    policy_macs: int = 0

    @property
    def full_macs(self) -> int:
        """The plain backbone, every block run and no policy."""
        return self.base_macs + sum(self.run_macs)

    def plan_macs(self, plan) -> np.ndarray:
        """MACs per example of a (L,) or (B, L) bool plan: a scalar or one per sample."""
        plan = np.asarray(plan)
        if plan.dtype != np.bool_ or plan.shape[-1] != len(self.run_macs):
            raise ValueError(f"expected a bool plan of {len(self.run_macs)} blocks, "
                             f"got {plan.dtype} {plan.shape}")
        per_block = np.where(plan, np.asarray(self.run_macs), np.asarray(self.skip_macs))
        return self.base_macs + self.policy_macs + per_block.sum(-1)

    def block_fraction(self, plan) -> np.ndarray:
        """The share of the blocks' MACs a plan spends (stem, head and policy left out)."""
        return (self.plan_macs(plan) - self.base_macs - self.policy_macs) / sum(self.run_macs)

    def plan_macs_jnp(self, plan: jax.Array) -> jax.Array:
        """`plan_macs` inside a compiled function (float32 per sample; exact below 2**24 MACs
        per block, and the sum's rounding is far below a block's MACs)."""
        per_block = jnp.where(plan, jnp.asarray(self.run_macs, jnp.float32),
                              jnp.asarray(self.skip_macs, jnp.float32))
        return self.base_macs + self.policy_macs + per_block.sum(-1)


def _first_of_stack(v):
    # abstract models (nnx.eval_shape) hold ShapeDtypeStructs, which cannot be indexed
    if isinstance(v, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(v.shape[1:], v.dtype)
    return v[0]


def _macs_and_shape(module: nnx.Module, method: str, x):
    """MACs and output shape of `module.<method>(x)` in inference mode."""
    graphdef, state = nnx.split(module)

    def run(state, x):
        m = nnx.merge(graphdef, state)
        m.eval()
        return getattr(m, method)(x)

    return function_macs(run, state, x), jax.eval_shape(run, state, x)


def block_costs(model: nnx.Module, input_shape: tuple[int, ...] = (1, 32, 32, 3)) -> BlockCosts:
    """MACs of each part of a `CifarResNet`, each counted from the jaxpr of that part; for a model
    with a `backbone` and a `policy` reading the stem's output (OFASNet), the policy's too."""
    per = input_shape[0]
    x = jax.ShapeDtypeStruct(input_shape, np.float32)
    if hasattr(model, "backbone"):
        if not hasattr(model, "policy"):
            # e.g. GatedResNet: a gate per block, which this block-level table cannot price
            raise TypeError(f"block_costs prices a CifarResNet or a backbone with one `policy` "
                            f"reading the stem (OFASNet), not {type(model).__name__}")
        costs = block_costs(model.backbone, input_shape)
        stem_out = _macs_and_shape(model.backbone, "stem", x)[1]
        policy = _macs_and_shape(model.policy, "__call__", stem_out)[0]
        return dataclasses.replace(costs, policy_macs=policy // per)
    base, x = _macs_and_shape(model, "stem", x)
    run, skip = [], []
    for stage in model.stages:
        blocks = [stage.first]
        if stage.rest is not None:  # the stacked blocks share one shape: price the first of them
            graphdef, state = nnx.split(stage.rest)
            blocks += [nnx.merge(graphdef, jax.tree.map(_first_of_stack, state))] * stage.num_rest
        for block in blocks:
            skip.append(_macs_and_shape(block, "shortcut", x)[0] // per)
            block_macs, x = _macs_and_shape(block, "__call__", x)
            run.append(block_macs // per)
    base += _macs_and_shape(model, "classify", x)[0]
    return BlockCosts(base // per, tuple(run), tuple(skip))
