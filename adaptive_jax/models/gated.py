"""Per-block gates (SkipNet / ConvNet-AIG style, docs/methods.md 2.2-2.3): the baseline OFAS is compared
with. Every block has its own gate, evaluated on that block's input, so each decision waits for the
block before it: the plan is not known up front. At batch 1 each block is therefore a `lax.cond`
inside the stage's scan (a skipped cond still costs ~10 us, docs/design.md), where OFAS, planning every
block after the stem, loops over the active blocks only.

`GatedResNet(backbone)`: `model(images)` blends each block by its gate (straight-through in
training mode, thresholded in eval mode); `predict(image)` runs batch 1 with skipped blocks not
run and returns (logits, plan).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive_jax.models.resnet import CifarResNet, check_images
from adaptive_jax.plans import BlockLayout
from adaptive_jax.policies import BlockGate, decisions


def _stack(modules: list[nnx.Module]) -> nnx.Module:
    graphdef, _ = nnx.split(modules[0])
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs),
                                            *[nnx.split(m)[1] for m in modules]))


class StageGates(nnx.Module):
    """The gates of one stage: the first block's apart, the others stacked like the blocks."""

    def __init__(self, cin: int, cout: int, num_blocks: int, hidden: int,
                 initial_execute_prob: float, rngs: nnx.Rngs):
        kw = dict(hidden=hidden, initial_execute_prob=initial_execute_prob, rngs=rngs)
        self.first = BlockGate(cin, **kw)
        self.rest = _stack([BlockGate(cout, **kw) for _ in range(num_blocks - 1)]) if num_blocks > 1 else None


class GatedResNet(nnx.Module):
    def __init__(self, backbone: CifarResNet, hidden: int = 16, *,
                 initial_execute_prob: float = 0.9, rngs: nnx.Rngs):
        self.backbone = backbone
        self.spec = backbone.spec
        w, n = backbone.spec.widths, backbone.spec.blocks_per_stage
        self.gates = nnx.List([StageGates(cin, cout, n, hidden, initial_execute_prob, rngs)
                               for cin, cout in zip((w[0], w[0], w[1]), w)])

    @property
    def training(self) -> bool:
        return not self.backbone.stem_bn.use_running_average

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.blend(images)[0]

    def blend(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits, (B, L) gate values): every block runs, blended by its gate (training path)."""
        check_images(images, self.spec.in_channels)
        decide = decisions.straight_through if self.training else (
            lambda p: decisions.threshold(p).astype(p.dtype))
        x = self.backbone.stem(images)
        plan = []
        for stage, gates in zip(self.backbone.stages, self.gates):
            g = decide(jax.nn.sigmoid(gates.first(x)))
            x = stage.first.gated(x, g)
            plan.append(g[:, None])
            if stage.rest is not None:
                block_def, block_state = nnx.split(stage.rest)
                gate_def, gate_state = nnx.split(gates.rest)
                training = self.training

                def step(h, states):
                    block = nnx.merge(block_def, states[0])
                    g = decide(jax.nn.sigmoid(nnx.merge(gate_def, states[1])(h)))
                    h = block.gated(h, g)
                    return h, (g, nnx.state(block, nnx.BatchStat) if training else None)

                x, (gs, stats) = jax.lax.scan(step, x, (block_state, gate_state),
                                              unroll=training and stage.unroll_training)
                if training:
                    nnx.update(stage.rest, stats)
                plan.append(gs.T)
        return self.backbone.classify(x), jnp.concatenate(plan, axis=1)

    def predict(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits, (1, L) plan) at batch 1 in eval mode; a block whose gate is shut does not run."""
        check_images(image, self.spec.in_channels)
        if image.shape[0] != 1 or self.training:
            raise ValueError(f"predict runs one image in eval mode (got batch {image.shape[0]}); "
                             "use model(images) in eval mode for a batch")

        def gated(block, gate, x):
            bit = gate(x)[0] >= 0.0  # sigmoid(logit) >= 0.5
            return jax.lax.cond(bit, block, block.shortcut, x), bit

        x = self.backbone.stem(image)
        plan = []
        for stage, gates in zip(self.backbone.stages, self.gates):
            x, bit = gated(stage.first, gates.first, x)
            plan.append(bit[None])
            if stage.rest is not None:
                block_def, block_state = nnx.split(stage.rest)
                gate_def, gate_state = nnx.split(gates.rest)

                def step(h, states):
                    return gated(nnx.merge(block_def, states[0]), nnx.merge(gate_def, states[1]), h)

                x, bits = jax.lax.scan(step, x, (block_state, gate_state))
                plan.append(bits)
        plan = jnp.concatenate(plan)[None]
        assert plan.shape[1] == BlockLayout.of(self.spec).num_blocks
        return self.backbone.classify(x), plan
