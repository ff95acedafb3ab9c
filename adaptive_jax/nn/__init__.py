"""Layers and ops shared by the models: `conv` (convolution with per-backend gradient lowering),
`slim` (slimmable conv / BN / dense at a static width, BN recalibration) and `stack` (modules
stacked along a leading axis, and the scan / loop that run them)."""

from adaptive_jax.nn import stack
from adaptive_jax.nn.conv import LOWERINGS, conv2d, conv_general_dilated_fn
from adaptive_jax.nn.slim import (SlimConv, SlimLinear, SwitchableBatchNorm, recalibrate_batch_norm,
                                  slim_channels)

__all__ = ["LOWERINGS", "conv2d", "conv_general_dilated_fn", "SlimConv", "SlimLinear",
           "SwitchableBatchNorm", "recalibrate_batch_norm", "slim_channels", "stack"]
