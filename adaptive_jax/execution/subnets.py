"""Width sub-nets of a slimmable ResNet served from AOT executables (Yang & Fan, Dynamic-OFA).

Each `WidthSubnet` (a frozen, hashable width per stage) is extracted once into a plain static
ResNet holding only its own, sliced weights (`models.slimmable.extract_subnet`; on CPU with
channels padded to multiples of 8, the conv shapes XLA:CPU runs fastest) and compiled ahead of
time to a pure function of those weights and the images. Executables live in the same bounded
LRU cache as the static block-plan executor; a sub-net's weights are dropped with its last
executable. After `warm_up` over the menu, serving any of its points compiles nothing
(`latency.subnet_latency_table` measures every sub-net from its executable).
"""

from __future__ import annotations

import jax
from flax import nnx

from adaptive_jax.execution.cache import ExecutableCache
from adaptive_jax.execution.predict import compile_predict
from adaptive_jax.models.resnet import check_finite_images
from adaptive_jax.models.slimmable import (SlimmableResNet, WidthSubnet, check_channel_multiple,
                                          extract_subnet)


class SubnetExecutor(ExecutableCache):
    """`executor(images, width)`: logits of the sub-net at `width` (a float, three per-stage
    widths, or a `WidthSubnet`), in inference mode, from its own compiled executable."""

    def __init__(self, model: SlimmableResNet, max_executables: int = 16,
                 channel_multiple: int | None = None, check_finite: bool = False):
        super().__init__(max_executables, check_finite)
        self.model = model
        # XLA:CPU runs convs with 4 or 12 channels slower than with 8 or 16 (see extract_subnet)
        if channel_multiple is None:
            channel_multiple = 8 if jax.default_backend() == "cpu" else 1
        check_channel_multiple(channel_multiple)
        self.channel_multiple = channel_multiple
        self._weights: dict[WidthSubnet, tuple] = {}

    def weights(self, subnet: WidthSubnet) -> tuple:
        """(graphdef, params, batch_stats) of the sub-net, extracted on first use."""
        if subnet not in self._weights:
            sub = extract_subnet(self.model, subnet, self.channel_multiple)
            self._weights[subnet] = nnx.split(sub, nnx.Param, nnx.BatchStat)
        return self._weights[subnet]

    def _compile(self, subnet: WidthSubnet, images_shape: tuple[int, ...]):
        graphdef, params, stats = self.weights(subnet)
        return compile_predict(graphdef, params, stats, images_shape)

    def _evicted(self, entry) -> None:
        subnet, _ = entry
        if subnet not in self.cached_keys():
            self._weights.pop(subnet, None)

    def executable(self, width, images_shape: tuple[int, ...]):
        return super().executable(WidthSubnet.of(width), images_shape)

    def warm_up(self, widths, batch_sizes=(1,), image_shape=(32, 32, 3)) -> None:
        super().warm_up([WidthSubnet.of(w) for w in widths], batch_sizes, image_shape)

    def __call__(self, images, width) -> jax.Array:
        if self.check_finite:
            check_finite_images(images)
        subnet = WidthSubnet.of(width)
        run = self.executable(subnet, tuple(images.shape))
        _, params, stats = self._weights[subnet]
        return run(params, stats, images)
