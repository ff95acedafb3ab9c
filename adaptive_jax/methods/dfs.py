"""DFS, dynamic fractional skipping (docs/methods.md 7, docs/dfs.md): per image and residual block,
a bitwidth for the block's weights and activations from a menu (`models.options.Bitwidths`);
0 bits is the skip.

`DFSNet(backbone, options, gate)`: the backbone (a zoo ResNet), its activation ranges per block
and option, and one of two gates:
- "recurrent", the paper's: decided block by block on each block's input (`policies.dfs`), so
  the plan is known only as the blocks run (`execution.block_by_block`);
- "once", beyond the paper: every block's option decided once after the stem by an OFAS-style
  head (`policies.OFASHead` with an output per block and option), so the whole plan exists
  before the blocks run and the cond / bucketed / static executors apply, as for OFAS.

`model(images)`: logits; `forward(images)` also gives the decisions (B, L, K), straight-through
one-hot in training (each row runs only its chosen option: `Bitwidths.blend`), hard in eval.
`plan(images)`: (B, L) option ints. `predict(image)`: batch 1, running only what is chosen.
`costs()`: MACs and BitOPs per unit and option (`cost.unit_costs`) with the gate's MACs.
`prepare_weights()`: every option's kernels quantised once; passed as `weights=` to `forward`,
`plan`, `predict` or `quantized`, inference gives the same outputs without quantising kernels per
call (what latency is measured with).

Call them compiled (`nnx.jit`, as docs/dfs.md's example does, or inside a jitted step): called
eagerly, JAX compiles every block's `lax.switch` again on every call, so each eager call costs
about what compiling once does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive_jax import cost, execution
from adaptive_jax.execution.executors import block_by_block
from adaptive_jax.models.options import Bitwidths
from adaptive_jax.models.quantized import PreparedWeights, QuantizedResNet, prepare_weights
from adaptive_jax.models.resnet import CifarResNet, check_images
from adaptive_jax.policies import OFASHead, decisions
from adaptive_jax.policies.dfs import RecurrentGate

GATES = ("recurrent", "once")


class DFSNet(nnx.Module):
    def __init__(self, backbone: CifarResNet, options: Bitwidths = Bitwidths(),
                 gate: str = "recurrent", *, embed: int = 10, hidden: int = 10,
                 rngs: nnx.Rngs):
        if gate not in GATES:
            raise ValueError(f"unknown DFS gate {gate!r}; expected one of {GATES}")
        if not isinstance(options, Bitwidths):
            raise TypeError(f"DFS chooses bitwidths: options must be a Bitwidths menu, got "
                            f"{type(options).__name__}")
        self.backbone, self.spec, self.options, self.gate_kind = backbone, backbone.spec, options, gate
        num_units, num_options = backbone.layout.num_blocks, options.num_options
        self.ranges = nnx.BatchStat(jnp.zeros((num_units, num_options, 2), jnp.float32))
        full = num_options - 1  # the gate starts at the fullest option
        if gate == "recurrent":
            self.gate = RecurrentGate(backbone.spec.widths, backbone.spec.blocks_per_stage,
                                      num_options, embed, hidden, initial_option=full, rngs=rngs)
        else:
            self.gate = OFASHead(backbone.spec.widths[0], num_units * num_options, (32,),
                                 pool_grid=4, activation="relu", input_norm="layer", rngs=rngs)
            bias = self.gate.layers[-1].bias
            bias[...] = jnp.zeros_like(bias[...]).reshape(num_units, num_options).at[:, full].set(
                2.0).reshape(-1)

    @property
    def training(self) -> bool:
        return self.backbone.training

    def quantized(self, weights: PreparedWeights | None = None) -> QuantizedResNet:
        """The backbone walked with each block bound to its ranges: what executors run."""
        return QuantizedResNet(self.backbone, self.ranges, weights)

    def prepare_weights(self) -> PreparedWeights:
        """Every quantised option's kernels, computed once for inference. A snapshot: prepare
        again after the backbone or the ranges change."""
        return prepare_weights(self.backbone, self.ranges[...], self.options.widths,
                               self.options.per_bitwidth_ranges)

    def __call__(self, images: jax.Array, weights: PreparedWeights | None = None) -> jax.Array:
        return self.forward(images, weights)[0]

    def _decide(self, logits: jax.Array) -> jax.Array:
        """Training: straight-through one-hot weights (B, ..., K); eval: option ints (B, ...)."""
        if self.training:
            return decisions.straight_through_argmax(jax.nn.softmax(logits, axis=-1))
        return logits.argmax(-1).astype(jnp.int32)

    def option_logits(self, stem_features: jax.Array) -> jax.Array:
        """The once-for-all gate's (B, L, K) logits from the stem's output."""
        return self.gate(stem_features).reshape(stem_features.shape[0], -1, self.options.num_options)

    def forward(self, images: jax.Array, weights: PreparedWeights | None = None,
                plan: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(logits, decisions (B, L, K)): straight-through one-hot in training (each row runs
        its chosen option only, `Bitwidths.blend`); in eval the hard one-hot, each option of a
        block run on the rows that chose it (bucketed), exactly. `plan` ((L,) or (B, L) option
        ints) runs that plan instead of the gate's (a static allocation; the gate is unused)."""
        check_images(images, self.spec.in_channels)
        net = self.quantized(weights)
        features = net.stem(images)
        if plan is not None or self.gate_kind == "once":
            chosen = (self._decide(self.option_logits(features)) if plan is None
                      else self._fixed_plan(plan, images.shape[0]))
            executor = (execution.masked(self.options) if self.training
                        else execution.bucketed(math.gcd(images.shape[0], execution.executors.DEFAULT_BUCKETS),
                                               options=self.options))
            x = executor.run_units(net, features, chosen)
        else:
            def decide(embedding, h, state):
                logits, state = self.gate.step(embedding, h, state)
                return self._decide(logits), state

            x, chosen, _ = block_by_block(net, features, self.gate.embeddings, decide,
                                          self.options,
                                          state=self.gate.initial_state(images.shape[0]))
            chosen = jnp.moveaxis(chosen, 0, 1)
        if not self.training or plan is not None:
            chosen = jax.nn.one_hot(chosen, self.options.num_options)
        return net.classify(x), chosen

    def start_gate_at_plan(self, plan, strength: float = 2.0) -> None:
        """Set the gate so that every image runs `plan` ((L,) option ints: a static allocation)
        and per-image deviations are learned from there: the plan's option gets a logit
        `strength` above the others at each block, and the layer that reads the input (the
        recurrent gate's shared output layer, the once-for-all head's last layer) starts at
        zero. A small strength keeps the softmax the straight-through gradient flows through
        unsaturated (2.0: the chosen option holds e^2 / (e^2 + K - 1) of it)."""
        if not strength > 0:
            raise ValueError(f"the plan's logit margin must be positive, got {strength}")
        if np.ndim(plan) != 1:
            raise ValueError(f"the gate starts at one (L,) plan for every image, got shape "
                             f"{np.shape(plan)}")
        plan = self._fixed_plan(np.asarray(plan), 1)[0]
        if self.gate_kind == "recurrent":
            self.gate.start_at_plan(plan, strength)
            return
        last = self.gate.layers[-1]
        last.kernel[...] = jnp.zeros_like(last.kernel[...])
        last.bias[...] = (strength * jax.nn.one_hot(plan, self.options.num_options)).reshape(-1)

    def _fixed_plan(self, plan, batch: int) -> jax.Array:
        """`plan` ((L,) or (B, L) option ints) checked and broadcast to (B, L)."""
        num_units = self.backbone.layout.num_blocks
        dtype = plan.dtype if hasattr(plan, "dtype") else np.asarray(plan).dtype  # (or traced)
        if not np.issubdtype(dtype, np.integer) or np.ndim(plan) not in (1, 2) \
                or np.shape(plan)[-1] != num_units:
            raise ValueError(f"a DFS plan is (L,) or (B, L) option ints with L = {num_units} "
                             f"blocks, got shape {np.shape(plan)} of {dtype}")
        execution.check_plan_values(plan, self.options)
        return jnp.broadcast_to(jnp.asarray(plan, jnp.int32), (batch, num_units))

    def plan(self, images: jax.Array, weights: PreparedWeights | None = None) -> jax.Array:
        """(B, L) int32 options each image runs (eval mode)."""
        return self.forward(images, weights)[1].argmax(-1).astype(jnp.int32)

    def predict(self, image: jax.Array, executor="cond", weights: PreparedWeights | None = None,
                **executor_options):
        """(logits, (1, L) plan) at batch 1 in eval mode, only the chosen option of each block
        computed. Recurrent gate: a `lax.cond` / `lax.switch` per block as the walk decides;
        once-for-all: the plan, then `executor` (an `execution` executor or its name) runs it."""
        check_images(image, self.spec.in_channels)
        if image.shape[0] != 1 or self.training:
            raise ValueError(f"predict runs one image in eval mode (got batch {image.shape[0]}); "
                             "use model.plan(images) / model(images) in eval mode for a batch")
        net = self.quantized(weights)
        features = net.stem(image)
        if self.gate_kind == "once":
            plan = self.option_logits(features)[0].argmax(-1).astype(jnp.int32)
            run = execution.executors.get(executor, options=self.options, **executor_options)
            return net.classify(run.run_units(net, features, plan)), plan[None]

        def decide(embedding, h, state):
            logits, state = self.gate.step(embedding, h, state)
            return logits[0].argmax().astype(jnp.int32), state

        x, plan, _ = block_by_block(net, features, self.gate.embeddings, decide, self.options,
                                    state=self.gate.initial_state(1))
        return net.classify(x), plan[None]

    def costs(self, input_shape: tuple[int, ...] = (1, 32, 32, 3)) -> cost.PlanCosts:
        """MACs and bits of every unit under every option; the gate's MACs as policy MACs (the
        once-for-all head read from its own jaxpr; the recurrent gate's from the MACs of
        `predict` beyond the blocks' dearest options)."""
        if self.gate_kind == "once":
            return cost.unit_costs(self.backbone, self.options, policy=_StemPolicy(self),
                                   input_shape=input_shape)
        costs = cost.unit_costs(self.backbone, self.options, input_shape=input_shape)
        graphdef, state = nnx.split(self)

        def run(state, image):
            model = nnx.merge(graphdef, state)
            model.eval()
            return model.predict(image)[0]

        image = jax.ShapeDtypeStruct((1,) + tuple(input_shape[1:]), jnp.float32)
        gate_macs = cost.function_macs(run, state, image) - costs.full_macs
        return cost.PlanCosts(costs.base_macs, costs.option_macs, gate_macs, costs.options,
                              costs.option_bits)


class _StemPolicy(nnx.Module):
    """The once-for-all head as `cost.unit_costs` prices a policy: a module on the stem's output."""

    def __init__(self, model: DFSNet):
        self.head = model.gate

    def __call__(self, features):
        return self.head(features)
