"""Layers and ops shared by the models: `conv` (convolution with per-backend gradient lowering)."""

from adaptive_jax.nn.conv import LOWERINGS, conv2d, conv_general_dilated_fn

__all__ = ["LOWERINGS", "conv2d", "conv_general_dilated_fn"]
