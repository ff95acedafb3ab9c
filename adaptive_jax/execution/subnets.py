"""Width sub-nets of a slimmable ResNet served from AOT executables (Yang & Fan, Dynamic-OFA).

Each `WidthSubnet` (a frozen, hashable width per stage) is extracted once into a plain static
ResNet holding only its own, sliced weights (`models.slimmable.extract_subnet`) and compiled ahead
of time to a pure function of those weights and the images. Executables live in the same bounded
LRU cache as the static block-plan executor; a sub-net's weights are dropped with its last
executable. After `warm_up` over the menu, serving any of its points compiles nothing.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from adaptive_jax.execution.static import ExecutableCache
from adaptive_jax.models.slimmable import SlimmableResNet, WidthSubnet, extract_subnet


class SubnetExecutor(ExecutableCache):
    """`executor(images, width)`: logits of the sub-net at `width` (a float, three per-stage
    widths, or a `WidthSubnet`), in inference mode, from its own compiled executable."""

    def __init__(self, model: SlimmableResNet, max_executables: int = 16):
        super().__init__(max_executables)
        self.model = model
        self._weights: dict[WidthSubnet, tuple] = {}

    def weights(self, subnet: WidthSubnet) -> tuple:
        """(graphdef, params, batch_stats) of the sub-net, extracted on first use."""
        if subnet not in self._weights:
            sub = extract_subnet(self.model, subnet)
            self._weights[subnet] = nnx.split(sub, nnx.Param, nnx.BatchStat)
        return self._weights[subnet]

    def _compile(self, subnet: WidthSubnet, images_shape: tuple[int, ...]):
        graphdef, params, stats = self.weights(subnet)

        def predict(params, batch_stats, images):
            model = nnx.merge(graphdef, params, batch_stats)
            model.eval()
            return model(images)

        images = jax.ShapeDtypeStruct(images_shape, np.float32)
        return jax.jit(predict).lower(params, stats, images).compile()

    def _evicted(self, entry) -> None:
        subnet, _ = entry
        if subnet not in self.cached_keys():
            self._weights.pop(subnet, None)

    def executable(self, width, images_shape: tuple[int, ...]):
        return super().executable(WidthSubnet.of(width), images_shape)

    def warm_up(self, widths, batch_sizes=(1,), image_shape=(32, 32, 3)) -> None:
        super().warm_up([WidthSubnet.of(w) for w in widths], batch_sizes, image_shape)

    def __call__(self, images, width) -> jax.Array:
        subnet = WidthSubnet.of(width)
        run = self.executable(subnet, tuple(images.shape))
        _, params, stats = self._weights[subnet]
        return run(params, stats, images)
