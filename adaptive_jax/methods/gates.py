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
from flax import nnx

from adaptive_jax.execution.executors import block_by_block
from adaptive_jax.models.resnet import CifarResNet, check_images
from adaptive_jax.nn.stack import stack_modules
from adaptive_jax.policies import BlockGate, decisions


class StageGates(nnx.Module):
    """The gates of one stage: the first block's apart, the others stacked like the blocks."""

    def __init__(self, cin: int, cout: int, num_blocks: int, hidden: int,
                 initial_execute_prob: float, rngs: nnx.Rngs):
        kw = dict(hidden=hidden, initial_execute_prob=initial_execute_prob, rngs=rngs)
        self.first = BlockGate(cin, **kw)
        self.rest = stack_modules([BlockGate(cout, **kw) for _ in range(num_blocks - 1)]) if num_blocks > 1 else None


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
        x, gates = block_by_block(self.backbone, self.backbone.stem(images), self.gates,
                                  lambda gate, h: decide(jax.nn.sigmoid(gate(h))))
        return self.backbone.classify(x), gates.T

    def predict(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits, (1, L) plan) at batch 1 in eval mode; a block whose gate is shut does not run
        (a `lax.cond` per block: each decision waits for the block before it)."""
        check_images(image, self.spec.in_channels)
        if image.shape[0] != 1 or self.training:
            raise ValueError(f"predict runs one image in eval mode (got batch {image.shape[0]}); "
                             "use model(images) in eval mode for a batch")
        x, plan = block_by_block(self.backbone, self.backbone.stem(image), self.gates,
                                 lambda gate, h: gate(h)[0] >= 0.0)  # sigmoid(logit) >= 0.5
        return self.backbone.classify(x), plan[None]
