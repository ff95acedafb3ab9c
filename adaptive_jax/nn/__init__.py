"""Layers and ops shared by the models: `conv` (convolution with per-backend gradient lowering),
`slim` (slimmable conv / BN / dense at a static width, BN recalibration), `stack` (modules
stacked along a leading axis, and the scan / loop that run them) and `quant` (fake quantisation
with straight-through gradients; exact int8 convolution by two lowerings)."""

from adaptive_jax.nn import quant, stack
from adaptive_jax.nn.conv import LOWERINGS, conv2d, conv_general_dilated_fn
from adaptive_jax.nn.slim import (SlimConv, SlimLinear, SwitchableBatchNorm, recalibrate_batch_norm,
                                  slim_channels)

__all__ = ["LOWERINGS", "conv2d", "conv_general_dilated_fn", "SlimConv", "SlimLinear",
           "SwitchableBatchNorm", "quant", "recalibrate_batch_norm", "slim_channels", "stack"]
