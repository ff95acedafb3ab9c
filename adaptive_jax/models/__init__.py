"""Backbones (`resnet`: CifarResNet and the walk over its units; `slimmable`) and the menus of
options a unit can run (`options`)."""

from adaptive_jax.models import options
from adaptive_jax.models.resnet import (DEPTHS, SHORTCUT_KINDS, BasicBlock, CifarResNet, ResNetSpec,
                                        Stage, check_images, resnet)

__all__ = ["options", "DEPTHS", "SHORTCUT_KINDS", "BasicBlock", "CifarResNet", "ResNetSpec", "Stage",
           "check_images", "resnet"]
